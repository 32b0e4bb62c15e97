"""Engine and session factories, the session dependency, the TimescaleDB helper, and
`LoopDatabase` for transactions and inserts on the event loop.

Handlers get a session from `SessionDep`; it commits when the handler returns and
rolls back when it raises. Services and repositories never commit themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import Connection, Engine, Table, create_engine, event, make_url, text
from sqlalchemy.exc import (
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from common.errors import Conflict, ServiceUnavailable, VolexError

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


# Connections are opened as needed up to DB_POOL_SIZE and then kept: one per worker
# thread (common.service sizes the pool of threads the same). Overflow connections, closed
# again on return, cost a PostgreSQL backend start each: under load they were a tenth of
# execution's time (and PostgreSQL's forks on top).
DB_POOL_SIZE = 30
DB_MAX_OVERFLOW = 0
# A pooled connection idle for longer than this is pinged before use. One in steady use
# is not: a ping per transaction was a tenth of an order's time on the order path.
PING_AFTER_IDLE_S = 1.0


def make_engine(
    url: str,
    *,
    connect_timeout: int = 3,
    pool_size: int = DB_POOL_SIZE,
    synchronous_commit: bool = True,
) -> Engine:
    """An engine that notices a restarted server and never hangs on connect.

    Connections idle for PING_AFTER_IDLE_S are pinged at checkout (a dead one is replaced
    at once). A server that restarts between two uses less than that apart fails one
    statement; SQLAlchemy then discards the whole pool, so the next transaction reconnects.

    `synchronous_commit=False` is for derived, append-only history only (never orders,
    fills, audit or decisions): a commit returns before its WAL reaches the disk, so a
    crash of the database server can lose the last fraction of a second of such rows.
    """
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=DB_MAX_OVERFLOW,
        pool_recycle=1800,
        pool_timeout=5,
        connect_args={
            "connect_timeout": connect_timeout,
            "application_name": "volexswarm",
            # A silent network drop must fail a query, not hang it forever.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
            "tcp_user_timeout": 10_000,
            **({} if synchronous_commit else {"options": "-c synchronous_commit=off"}),
        },
    )
    event.listen(engine, "checkin", _idle_since)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


def _idle_since(dbapi_connection: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
        return
    try:
        dbapi_connection.autocommit = True  # the ping must not open a transaction
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
            dbapi_connection.autocommit = False
    except Exception as exc:
        # The pool drops this connection and checks out (or opens) another.
        raise DisconnectionError("pooled connection is dead") from exc


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def check_database(engine: Engine) -> None:
    """Raise if the database cannot answer a trivial query right now."""
    with engine.connect() as conn:
        conn.execute(text("SET LOCAL statement_timeout = 2000"))
        conn.execute(text("SELECT 1"))


def get_session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] | None = request.app.state.kit.session_factory
    if factory is None:
        raise ServiceUnavailable("this service has no database configured")
    session = factory()
    try:
        yield session
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        raise database_error(exc) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


async def in_transaction(
    request: Request, work: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run `work(session, ...)` and commit, all in one worker thread, for hot endpoints.

    `SessionDep` costs three thread hops (open, the handler, commit) and holds a thread
    while waiting for the next one: under load, requests that wait on a row or advisory
    lock can hold every thread while the lock's owner waits for one to commit in. Here
    the owner commits in the thread it already has. Errors map as with `SessionDep`.
    """
    factory: sessionmaker[Session] | None = request.app.state.kit.session_factory
    if factory is None:
        raise ServiceUnavailable("this service has no database configured")

    def unit() -> T:
        with factory.begin() as session:
            return work(session, *args, **kwargs)

    try:
        return await asyncio.to_thread(unit)
    except SQLAlchemyError as exc:
        raise database_error(exc) from exc


# scope="function": the commit happens before the response is sent, so a failed commit
# becomes an error response, never a 2xx for data that was not saved.
def is_outage(exc: BaseException | None) -> bool:
    """The database could not be reached (as opposed to refusing a statement)."""
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError)


def database_error(exc: SQLAlchemyError) -> VolexError:
    """What a caller should hear: an outage is a 503, a conflict a 409, a bug a 500."""
    if is_outage(exc):
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return ServiceUnavailable(f"database unavailable ({exc.__class__.__name__})")
    if isinstance(exc, IntegrityError):
        return Conflict(f"conflicts with stored data: {str(exc.orig).splitlines()[0][:200]}")
    log.error("database error", exc_info=exc)
    return VolexError("internal database error; see the service log")


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def timescaledb_available(conn: Connection) -> bool:
    """Try to enable TimescaleDB; False (and no harm done) when the server lacks it."""
    with conn.begin_nested() as savepoint:
        try:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
        except SQLAlchemyError:
            savepoint.rollback()
            return False
    return True


def make_time_series(
    conn: Connection,
    table: str,
    time_column: str,
    *,
    key_columns: tuple[str, ...] = (),
    plain_index: bool = True,
) -> bool:
    """Make `table` a TimescaleDB hypertable when the extension exists.

    Without the extension the table stays a plain table with a btree index on
    (key_columns..., time_column DESC), which serves the same range queries;
    `plain_index=False` skips it when the primary key already is that index.
    Returns True when a hypertable was made. Identifiers come from our own
    migrations, never from users.
    """
    if timescaledb_available(conn):
        conn.execute(
            text(
                "SELECT create_hypertable(CAST(:table AS regclass), CAST(:column AS name),"
                " if_not_exists => TRUE, migrate_data => TRUE)"
            ),
            {"table": table, "column": time_column},
        )
        return True
    if not plain_index:
        return False
    columns = ", ".join([*key_columns, f"{time_column} DESC"])
    index = f"ix_{table}_{'_'.join([*key_columns, time_column])}"
    conn.execute(text(f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({columns})"))
    return False


# Connection lost or refused, server shutting down or starting, pool closed: an outage.
_OUTAGES = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)


class LoopDatabase:
    """PostgreSQL on the event loop itself (asyncpg), for the hot paths where a worker-thread
    hop and SQLAlchemy's statement handling were most of a request's time (measured on
    `POST /signals/generate` and on the order path: bench/README.md).

    `transaction()` runs a block of statements in one transaction on one connection;
    `insert` is one pipelined `executemany` ending in one Sync (one implicit transaction,
    all rows or none). Connections open on first use (a database that is down at start-up
    does not stop the service) and a broken one fails its statement with a 503 and is
    replaced, as the SQLAlchemy engines above do. Errors map as `database_error` maps
    SQLAlchemy's: an outage is a 503, a conflict a 409, anything else a 500.
    """

    def __init__(self, url: str, *, size: int = 4, synchronous_commit: bool = True) -> None:
        self.url = make_url(url).set(drivername="postgresql").render_as_string(False)
        self.size = size
        self.settings = {"application_name": "volexswarm"}
        if not synchronous_commit:  # see make_engine: derived history only
            self.settings["synchronous_commit"] = "off"
        self._pool: asyncpg.Pool | None = None
        self._sql: dict[tuple[str, tuple[str, ...]], str] = {}

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=0,
            max_size=self.size,
            timeout=3,  # connect
            command_timeout=5,
            server_settings=self.settings,
            init=_json_codecs,
            reset=_nothing_to_reset,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection, each statement its own transaction; a database error inside the
        block is mapped."""
        if self._pool is None:
            raise ServiceUnavailable("database unavailable (the loop pool is not open)")
        try:
            async with self._pool.acquire() as connection:
                yield connection
        except (*_OUTAGES, asyncpg.PostgresError) as exc:
            raise loop_database_error(exc) from exc

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside one transaction: committed when the block ends, rolled back
        when it raises. A database error inside the block (or at commit) is mapped."""
        async with self.connection() as connection, connection.transaction():
            yield connection

    async def insert(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert `rows` (dicts with the same keys, named after `table`'s columns)."""
        if not rows:
            return
        names = tuple(rows[0])
        sql = self._sql.get((table.name, names))
        if sql is None:
            columns = ", ".join(f'"{table.c[name].name}"' for name in names)  # KeyError: a bug
            values = ", ".join(f"${i}" for i in range(1, len(names) + 1))
            sql = f'INSERT INTO "{table.name}" ({columns}) VALUES ({values})'  # noqa: S608
            self._sql[(table.name, names)] = sql
        async with self.connection() as connection:
            await connection.executemany(sql, [tuple(r[n] for n in names) for r in rows])


def loop_database_error(exc: BaseException) -> VolexError:
    """`database_error` for asyncpg's errors."""
    if isinstance(exc, _OUTAGES):
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return ServiceUnavailable(f"database unavailable ({exc.__class__.__name__})")
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return Conflict(f"conflicts with stored data: {str(exc).splitlines()[0][:200]}")
    log.error("database error", exc_info=exc)
    return VolexError("internal database error; see the service log")


async def _nothing_to_reset(connection: asyncpg.Connection) -> None:
    """Our connections keep no session state (advisory locks are transaction-scoped; no
    LISTEN, SET or cursors outside a transaction), so a released one is not reset: asyncpg's
    default costs a round trip per release (`pg_advisory_unlock_all(); CLOSE ALL; ...`),
    three per order on the order path. An open transaction is still rolled back: asyncpg
    does that before calling this."""


async def _json_codecs(connection: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await connection.set_type_codec(
            kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
