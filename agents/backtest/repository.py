"""All of the backtest agent's SQL: candles in and out, stored series, fetch jobs.

Candles move through binary COPY (see `pgcopy`): in through a temporary table and
one INSERT … ON CONFLICT, out straight into numpy arrays. Functions take the
caller's Session (and never commit) or, for reads, an Engine.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.orm import Session

from agents.backtest import pgcopy
from agents.backtest.timegrid import from_ms
from common.models.market_data import OhlcvFetchJob
from common.quant.bars import TIMEFRAME_MS, Bars, Ints

INCOMING = "ohlcv_incoming"
_CREATE_INCOMING = (
    f"CREATE TEMP TABLE IF NOT EXISTS {INCOMING} (time timestamptz, open float8,"
    " high float8, low float8, close float8, volume float8) ON COMMIT DELETE ROWS"
)
# A re-fetched candle replaces the stored one (the still-forming last candle must
# update), but an identical one is left alone: no dead row, no WAL, not counted.
# MERGE joins the batch against the series once and inserts plainly; measured 1.6-2.6x
# faster here than INSERT … ON CONFLICT, whose speculative insertion costs per row.
# MERGE has no conflict clause, so writers of one series take turns (advisory lock).
_MERGE = """
MERGE INTO ohlcv o
USING ohlcv_incoming i
ON o.exchange = %(exchange)s AND o.symbol = %(symbol)s AND o.timeframe = %(timeframe)s
    AND o.time BETWEEN %(first)s AND %(last)s AND o.time = i.time
WHEN MATCHED AND (o.open, o.high, o.low, o.close, o.volume)
    IS DISTINCT FROM (i.open, i.high, i.low, i.close, i.volume) THEN
    UPDATE SET open = i.open, high = i.high, low = i.low, close = i.close, volume = i.volume
WHEN NOT MATCHED THEN
    INSERT (exchange, symbol, timeframe, time, open, high, low, close, volume)
    VALUES (%(exchange)s, %(symbol)s, %(timeframe)s, i.time, i.open, i.high, i.low, i.close,
        i.volume)
"""
_LOCK_SERIES = (
    "SELECT pg_advisory_xact_lock(7003,"
    " hashtext(%(exchange)s || ' ' || %(symbol)s || ' ' || %(timeframe)s))"
)
ANALYZE_FROM = 5_000  # rows: past this the planner needs the batch's size to pick a join
_SERIES = "exchange = %(exchange)s AND symbol = %(symbol)s AND timeframe = %(timeframe)s"


@dataclass(frozen=True, slots=True)
class Series:
    """One stored candle series."""

    exchange: str
    symbol: str
    timeframe: str

    def params(self) -> dict[str, Any]:
        return {"exchange": self.exchange, "symbol": self.symbol, "timeframe": self.timeframe}


Db = Session | Connection | Engine


@contextmanager
def dbapi(db: Db) -> Iterator[Any]:
    """The psycopg2 connection under a Session or Connection (in its transaction), or
    a pooled one from an Engine for the time of the block."""
    if isinstance(db, Session):
        yield db.connection().connection.dbapi_connection
    elif isinstance(db, Connection):
        yield db.connection.dbapi_connection
    else:
        with db.connect() as conn:
            yield conn.connection.dbapi_connection


# --- candles in ------------------------------------------------------------------------------
def upsert_bars(session: Session, series: Series, bars: Bars) -> int:
    """Insert or update `bars` (sorted, de-duplicated keeping the last) in the caller's
    transaction; returns how many rows were inserted or changed."""
    if len(bars) == 0:
        return 0
    order = np.argsort(bars.ts, kind="stable")
    ts = bars.ts[order]
    keep = order[np.r_[ts[1:] != ts[:-1], True]]  # the last of equal times wins
    if len(keep) != len(bars) or (order != np.arange(len(bars))).any():
        bars = pick(bars, keep)
    with dbapi(session) as conn, conn.cursor() as cur:
        cur.execute(_CREATE_INCOMING)
        stream = io.BytesIO(pgcopy.encode(bars))
        cur.copy_expert(f"COPY {INCOMING} FROM STDIN (FORMAT binary)", stream)
        if len(bars) >= ANALYZE_FROM:
            cur.execute(f"ANALYZE {INCOMING}")
        cur.execute(_LOCK_SERIES, series.params())
        # The batch's own range: the join reads only those candles of the series, not all.
        span = {"first": from_ms(int(bars.ts[0])), "last": from_ms(int(bars.ts[-1]))}
        cur.execute(_MERGE, series.params() | span)
        written: int = cur.rowcount
        cur.execute(f"TRUNCATE {INCOMING}")
    return written


def pick(bars: Bars, which: Any) -> Bars:
    """The candles picked by a boolean mask or an index array."""
    columns = (bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume)
    return Bars(*(column[which] for column in columns))


# --- candles out -----------------------------------------------------------------------------
def load_bars(
    db: Db,
    exchange: str,
    symbol: str,
    timeframe: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    *,
    last: int | None = None,
) -> Bars:
    """Stored candles of one series as numpy columns, oldest first.

    `since_ms` is inclusive, `until_ms` exclusive (candle open times, epoch ms);
    `last=N` keeps only the newest N candles of that range. One binary COPY
    straight into a structured array: ~0.2 s for a year of one-minute candles.
    """
    series = Series(exchange, symbol, timeframe)
    where, params = _range(series, since_ms, until_ms)
    query = f"SELECT time, open, high, low, close, volume FROM ohlcv WHERE {where}"  # noqa: S608
    if last is not None:
        params["last"] = last
        query = f"SELECT * FROM ({query} ORDER BY time DESC LIMIT %(last)s) newest"  # noqa: S608
    return pgcopy.decode(_copy_out(db, query + " ORDER BY time", params))


def stored_times(db: Db, series: Series, since_ms: int, until_ms: int) -> Ints:
    """The open times stored for `series` in [since_ms, until_ms), ascending."""
    where, params = _range(series, since_ms, until_ms)
    query = f"SELECT time FROM ohlcv WHERE {where} ORDER BY time"  # noqa: S608
    return pgcopy.decode_times(_copy_out(db, query, params))


def _range(
    series: Series, since_ms: int | None, until_ms: int | None
) -> tuple[str, dict[str, Any]]:
    """A WHERE clause of constant text for one series and range; the values are bound."""
    where, params = [_SERIES], series.params()
    if since_ms is not None:
        where.append("time >= %(since)s")
        params["since"] = from_ms(since_ms)
    if until_ms is not None:
        where.append("time < %(until)s")
        params["until"] = from_ms(until_ms)
    return " AND ".join(where), params


def _copy_out(db: Db, query: str, params: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with dbapi(db) as conn, conn.cursor() as cur:
        sql = cur.mogrify(f"COPY ({query}) TO STDOUT (FORMAT binary)", params).decode()
        cur.copy_expert(sql, buffer)
    return buffer.getvalue()


def bounds(db: Db, series: Series) -> tuple[int, int] | None:
    """(first, last) stored open times of `series` in epoch ms; None when nothing is stored."""
    query = (
        f"SELECT (SELECT time FROM ohlcv WHERE {_SERIES} ORDER BY time LIMIT 1),"  # noqa: S608
        f" (SELECT time FROM ohlcv WHERE {_SERIES} ORDER BY time DESC LIMIT 1)"
    )
    with dbapi(db) as conn, conn.cursor() as cur:
        cur.execute(query, series.params())
        first, last = cur.fetchone()
    if first is None:
        return None
    return int(first.timestamp() * 1000), int(last.timestamp() * 1000)


# --- what is stored --------------------------------------------------------------------------


def symbols(session: Session, exchange: str) -> Sequence[Any]:
    """Per symbol and timeframe on `exchange`: first, last and count of stored candles."""
    return session.execute(
        text(
            "SELECT symbol, timeframe, min(time) AS first, max(time) AS last, count(*) AS count"
            " FROM ohlcv WHERE exchange = :exchange GROUP BY symbol, timeframe"
            " ORDER BY symbol, timeframe"
        ),
        {"exchange": exchange},
    ).all()


def coverage(session: Session, exchange: str | None, symbol: str | None) -> Sequence[Any]:
    """Per series: first, last, count, and the number of holes between stored candles."""
    return session.execute(
        text(
            """
            WITH steps AS (
                SELECT timeframe, make_interval(secs => seconds) AS step
                FROM unnest(CAST(:timeframes AS text[]), CAST(:seconds AS int[]))
                    AS s(timeframe, seconds)
            ),
            spaced AS (
                SELECT exchange, symbol, timeframe, time,
                    time - lag(time) OVER (PARTITION BY exchange, symbol, timeframe ORDER BY time)
                        AS gap
                FROM ohlcv
                WHERE (CAST(:exchange AS text) IS NULL OR exchange = :exchange)
                  AND (CAST(:symbol AS text) IS NULL OR symbol = :symbol)
            )
            SELECT exchange, symbol, spaced.timeframe, min(time) AS first, max(time) AS last,
                count(*) AS count, count(*) FILTER (WHERE gap > step) AS gaps
            FROM spaced JOIN steps USING (timeframe)
            GROUP BY exchange, symbol, spaced.timeframe
            ORDER BY exchange, symbol, spaced.timeframe
            """
        ),
        {
            "exchange": exchange,
            "symbol": symbol,
            "timeframes": list(TIMEFRAME_MS),
            "seconds": [ms // 1000 for ms in TIMEFRAME_MS.values()],
        },
    ).all()


def has_series(db: Db, series: Series) -> bool:
    return bounds(db, series) is not None


def has_bars(db: Db, series: Series, since_ms: int, until_ms: int) -> bool:
    """Whether any candle of `series` opens in [since_ms, until_ms) (one index probe)."""
    where, params = _range(series, since_ms, until_ms)
    with dbapi(db) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT EXISTS (SELECT 1 FROM ohlcv WHERE {where})", params)  # noqa: S608
        found: bool = cur.fetchone()[0]
    return found


# --- fetch jobs ------------------------------------------------------------------------------
def add_job(session: Session, job: OhlcvFetchJob) -> OhlcvFetchJob:
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str, *, lock: bool = False) -> OhlcvFetchJob | None:
    query = select(OhlcvFetchJob).where(OhlcvFetchJob.id == job_id)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def list_jobs(session: Session, limit: int) -> Sequence[OhlcvFetchJob]:
    query = select(OhlcvFetchJob).order_by(OhlcvFetchJob.created_at.desc()).limit(limit)
    return session.execute(query).scalars().all()


def unfinished_job_ids(session: Session) -> list[str]:
    """Jobs a previous process left queued or running, oldest first."""
    query = (
        select(OhlcvFetchJob.id)
        .where(OhlcvFetchJob.status.in_(("queued", "running")))
        .order_by(OhlcvFetchJob.created_at)
    )
    return list(session.execute(query).scalars())


def set_status(session: Session, job_id: str, status: str, error: str | None = None) -> None:
    session.execute(
        update(OhlcvFetchJob)
        .where(OhlcvFetchJob.id == job_id)
        .values(status=status, error=error, updated_at=db_now(session))
    )


def db_now(session: Session) -> datetime:
    now: datetime = session.execute(text("SELECT clock_timestamp()")).scalar_one()
    return now
