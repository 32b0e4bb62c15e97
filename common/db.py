"""Engine and session factories, the session dependency and the TimescaleDB helper.

Handlers get a session from `SessionDep`; it commits when the handler returns and
rolls back when it raises. Services and repositories never commit themselves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Connection, Engine, create_engine, event, text
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


DB_POOL_SIZE = 10
DB_MAX_OVERFLOW = 20
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


# scope="function": the commit happens before the response is sent, so a failed commit
# becomes an error response, never a 2xx for data that was not saved.
def database_error(exc: SQLAlchemyError) -> VolexError:
    """What a caller should hear: an outage is a 503, a conflict a 409, a bug a 500."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError):
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
