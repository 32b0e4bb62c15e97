"""The backtest agent's market-data logic: fetch jobs, CSV import, reading candles."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg2
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from agents.backtest import repository
from agents.backtest.csv_import import read_csv
from agents.backtest.fetcher import plan_ranges
from agents.backtest.repository import Db, Series
from agents.backtest.resample import resample
from agents.backtest.schemas import Coverage, FetchRequest, ImportResult, JobView, StoredSeries
from agents.backtest.timegrid import ceil_ms, floor_ms, from_ms, iso, step_ms
from common.clients import Agents
from common.db import database_error
from common.errors import NotFound, ServiceUnavailable, Unprocessable
from common.models.market_data import OhlcvFetchJob
from common.quant.bars import TIMEFRAME_MS, Bars
from common.service import Kit

MAX_BARS_OUT = 100_000  # one answer of GET /data/ohlcv


def path_symbol(symbol: str) -> str:
    return symbol.replace("/", "-")


# --- fetch jobs ------------------------------------------------------------------------------
async def create_job(
    session: Session, agents: Agents, body: FetchRequest, caller: str
) -> OhlcvFetchJob:
    """Check the request with execution, plan what is not stored yet, queue the job."""
    step = step_ms(body.timeframe)
    forming_end = floor_ms(int(time.time() * 1000), body.timeframe) + step
    since, until = ceil_ms(body.since, body.timeframe), ceil_ms(body.until, body.timeframe)
    until = min(until, forming_end)  # nothing exists past the still-forming candle
    if until <= since:
        raise Unprocessable(
            f"since: no {body.timeframe} candle opens in [{iso(body.since)}, {iso(body.until)})"
            f" before now ({iso(forming_end - step)} is the newest)",
            errors=[{"field": "body.since", "message": "no candle opens in the range"}],
        )
    # Unknown exchange, unlisted symbol, unsupported timeframe: execution's 4xx says which.
    await agents.execution.get(
        f"/ohlcv/{body.exchange}/{path_symbol(body.symbol)}",
        params={"timeframe": body.timeframe, "limit": 1},
    )
    series = Series(body.exchange, body.symbol, body.timeframe)
    stored = await asyncio.to_thread(repository.stored_times, session, series, since, until)
    plan = plan_ranges(stored, since, until, step)
    total = (until - since) // step
    job = OhlcvFetchJob(
        id=uuid.uuid4().hex,
        exchange=body.exchange,
        symbol=body.symbol,
        timeframe=body.timeframe,
        since=from_ms(since),
        until=from_ms(until),
        status="queued",
        total=total,
        done=total - sum((end - start) // step for start, end in plan),
        fetched=0,
        rows_written=0,
        plan=plan,
        cursor=plan[0][0],
        gaps=[],
        attempts=0,
        requested_by=caller,
    )
    return await asyncio.to_thread(repository.add_job, session, job)


def job_view(job: OhlcvFetchJob) -> JobView:
    return JobView(
        id=job.id,
        status=job.status,
        exchange=job.exchange,
        symbol=job.symbol,
        timeframe=job.timeframe,
        since=job.since,
        until=job.until,
        total=job.total,
        done=job.done,
        fetched=job.fetched,
        rows_written=job.rows_written,
        gaps=[(iso(first), iso(last)) for first, last in job.gaps],
        cursor=None if job.cursor is None else iso(job.cursor),
        attempts=job.attempts,
        error=job.error,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


def list_jobs(session: Session, limit: int) -> list[OhlcvFetchJob]:
    return list(repository.list_jobs(session, limit))


def get_job(session: Session, job_id: str) -> OhlcvFetchJob:
    job = repository.get_job(session, job_id)
    if job is None:
        raise NotFound(f"no fetch job {job_id}; GET /data/jobs lists them")
    return job


def cancel_job(session: Session, job_id: str) -> OhlcvFetchJob:
    """Mark a queued or running job cancelled (its stored pages stay); others as they are."""
    job = repository.get_job(session, job_id, lock=True)
    if job is None:
        raise NotFound(f"no fetch job {job_id}; GET /data/jobs lists them")
    if job.status in ("queued", "running"):
        job.status, job.updated_at = "cancelled", repository.db_now(session)
    return job


# --- import ----------------------------------------------------------------------------------
def import_csv(session: Session, series: Series, data: bytes) -> ImportResult:
    """Store every candle of the file, or none (one transaction: the caller's)."""
    bars = read_csv(data, series.timeframe)
    written = repository.upsert_bars(session, series, bars)
    return ImportResult(
        exchange=series.exchange,
        symbol=series.symbol,
        timeframe=series.timeframe,
        rows=len(bars),
        rows_written=written,
        first=from_ms(int(bars.ts[0])),
        last=from_ms(int(bars.ts[-1])),
    )


# --- reading ---------------------------------------------------------------------------------
@contextmanager
def read_connection(kit: Kit) -> Iterator[Connection]:
    """A pooled connection for reads; a database error becomes the usual 503/500."""
    if kit.engine is None:
        raise ServiceUnavailable("this service has no database configured")
    try:
        with kit.engine.connect() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise database_error(exc) from exc
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:  # from the raw cursor
        raise ServiceUnavailable(f"database unavailable ({exc.__class__.__name__})") from exc


def ohlcv_json(
    db: Db,
    series: Series,
    since: int | None,
    until: int | None,
    limit: int,
) -> bytes:
    """Candles as columns (`ts`, `open`, … ), built from a shorter stored timeframe when
    this one is not stored; JSON bytes, ready to send."""
    head: dict[str, Any] = {
        "exchange": series.exchange,
        "symbol": series.symbol,
        "timeframe": series.timeframe,
    }
    bars = _stored(db, series, since, until, limit)
    if len(bars) or repository.bounds(db, series) is not None:
        head |= {"resampled_from": None, "excluded_partial": []}
    else:
        bars, head["resampled_from"], head["excluded_partial"] = _built(
            db, series, since, until, limit
        )
    columns = {
        "ts": bars.ts,
        "open": bars.open,
        "high": bars.high,
        "low": bars.low,
        "close": bars.close,
        "volume": bars.volume,
    }
    # orjson writes numpy arrays directly, ~10x faster than json with lists of floats.
    return orjson.dumps(head | {"count": len(bars)} | columns, option=orjson.OPT_SERIALIZE_NUMPY)


def _stored(db: Db, series: Series, since: int | None, until: int | None, limit: int) -> Bars:
    if since is None:
        return repository.load_bars(db, *_key(series), None, until, last=limit)
    # `limit` candles at most open in the next `limit` grid slots.
    end = ceil_ms(since, series.timeframe) + limit * step_ms(series.timeframe)
    end = end if until is None else min(until, end)
    return repository.load_bars(db, *_key(series), since, end)


def _key(series: Series) -> tuple[str, str, str]:
    return series.exchange, series.symbol, series.timeframe


def _built(
    db: Db, series: Series, since: int | None, until: int | None, limit: int
) -> tuple[Bars, str, list[int]]:
    target = step_ms(series.timeframe)
    source, span = _source(db, series)
    step = step_ms(source.timeframe)
    if since is not None:
        start = floor_ms(since, series.timeframe)
        end = start + limit * target
        if until is not None:
            end = min(end, ceil_ms(until, series.timeframe))
    else:
        end = ceil_ms(until if until is not None else span[1] + step, series.timeframe)
        start = end - (limit + 1) * target  # one more: the last may be partial
    bars = repository.load_bars(db, *_key(source), start, end)
    built, partial = resample(bars, step, target, span)
    built = built.slice(0, limit) if since is not None else built.tail(limit)
    return built, source.timeframe, partial


def _source(db: Db, series: Series) -> tuple[Series, tuple[int, int]]:
    """The longest stored timeframe that divides the one asked for, and its span."""
    target = step_ms(series.timeframe)
    shorter = [tf for tf, ms in TIMEFRAME_MS.items() if ms < target and target % ms == 0]
    for timeframe in sorted(shorter, key=TIMEFRAME_MS.__getitem__, reverse=True):
        source = Series(series.exchange, series.symbol, timeframe)
        bounds = repository.bounds(db, source)
        if bounds is not None:
            return source, bounds
    raise NotFound(
        f"no {series.timeframe} candles stored for {series.symbol} on {series.exchange}, and"
        " none of a shorter timeframe to build them from: POST /data/fetch or /data/import"
    )


def stored_series(session: Session, exchange: str) -> list[StoredSeries]:
    return [
        StoredSeries.model_validate(row._mapping) for row in repository.symbols(session, exchange)
    ]


def coverage(session: Session, exchange: str | None, symbol: str | None) -> list[Coverage]:
    out = []
    for row in repository.coverage(session, exchange, symbol):
        step = TIMEFRAME_MS[row.timeframe]
        span = int((row.last - row.first).total_seconds() * 1000)
        out.append(Coverage(**row._mapping, expected=span // step + 1))
    return out
