"""Engine and session factories, the session dependency and the TimescaleDB helper.

Handlers get a session from `SessionDep`; it commits when the handler returns and
rolls back when it raises. Services and repositories never commit themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from common.errors import ServiceUnavailable

log = logging.getLogger(__name__)


def make_engine(url: str, *, connect_timeout: int = 3, pool_size: int = 5) -> Engine:
    """An engine that notices a restarted server (pre-ping) and never hangs on connect."""
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=10,
        pool_recycle=1800,
        connect_args={"connect_timeout": connect_timeout, "application_name": "volexswarm"},
    )


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
        log.warning("database error: %s", exc.__class__.__name__)
        raise ServiceUnavailable(f"database unavailable: {exc.__class__.__name__}") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# scope="function": the commit happens before the response is sent, so a failed commit
# becomes an error response, never a 2xx for data that was not saved.
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
    conn: Connection, table: str, time_column: str, *, key_columns: tuple[str, ...] = ()
) -> bool:
    """Make `table` a TimescaleDB hypertable when the extension exists.

    Without the extension the table stays a plain table with a btree index on
    (key_columns..., time_column DESC), which serves the same range queries.
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
    columns = ", ".join([*key_columns, f"{time_column} DESC"])
    index = f"ix_{table}_{'_'.join([*key_columns, time_column])}"
    conn.execute(text(f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({columns})"))
    return False
