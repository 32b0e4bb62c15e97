"""Fetch jobs: page candles from an exchange (through execution) into the ohlcv table.

A job's `plan` lists the [from, to) ranges to fetch; its `cursor` is the next candle
to ask for. Each page of up to 1000 candles is written in one transaction with the
job's new cursor, progress and gaps, so a job picked up again (after a crash, a
restart or a failure) continues where the last committed page ended. On start-up
the agent resumes every job left queued or running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from agents.backtest import repository
from agents.backtest.events import announce
from agents.backtest.jobs import JobRunner
from agents.backtest.repository import Series
from agents.backtest.timegrid import step_ms
from common.clients import Agents
from common.errors import ServiceUnavailable, UpstreamError, VolexError
from common.events import EventBus
from common.quant.bars import Bars, Ints

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000  # candles per request: the most Binance and most CCXT exchanges give
MAX_RUNNING_JOBS = 2
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # for execution or the exchange being unavailable


def plan_ranges(stored: Ints, since: int, until: int, step: int) -> list[list[int]]:
    """The [from, to) ranges of grid-aligned [since, until) to fetch, given the stored
    open times: the part before the first stored candle, every hole between stored
    candles, and the tail from the last stored candle on (inclusive: it may have been
    stored while still forming)."""
    if len(stored) == 0:
        return [[since, until]]
    ranges = [[since, int(stored[0])]] if stored[0] > since else []
    holes = np.flatnonzero(np.diff(stored) > step)
    ranges += [[int(stored[i]) + step, int(stored[i + 1])] for i in holes]
    ranges.append([int(stored[-1]), until])
    return ranges


def page_gaps(ts: Ints, start: int, end: int, step: int) -> list[list[int]]:
    """[from, to) ranges of [start, end) with no candle, given a page's times there."""
    if len(ts) == 0:
        return [[start, end]]
    edges = np.r_[start - step, ts, end]
    holes = np.flatnonzero(np.diff(edges) > step)
    return [[int(edges[i]) + step, int(edges[i + 1])] for i in holes]


def add_gaps(known: list[list[int]], found: list[list[int]], step: int) -> list[list[int]]:
    """Append [from, to) gaps as inclusive [first, last] missing open times, merging
    one that continues the previous gap (a gap spanning two pages)."""
    merged = [list(g) for g in known]
    for start, end in found:
        if merged and merged[-1][1] + step == start:
            merged[-1][1] = end - step
        else:
            merged.append([start, end - step])
    return merged


@dataclass(frozen=True, slots=True)
class Work:
    """What a runner needs of a job, read once when it starts."""

    series: Series
    plan: list[list[int]]
    cursor: int


class Fetcher(JobRunner):
    """Runs fetch jobs as asyncio tasks, at most `MAX_RUNNING_JOBS` at a time; jobs a
    stopped process left `running` resume from their cursor at the next start."""

    kind = "fetch"

    def __init__(
        self, sessions: sessionmaker[Session], agents: Agents, events: EventBus | None = None
    ) -> None:
        super().__init__(sessions, agents, MAX_RUNNING_JOBS)
        self.events = events

    def unfinished(self, session: Session) -> Sequence[str]:
        return repository.unfinished_job_ids(session)

    # --- one job -------------------------------------------------------------------------
    async def run(self, job_id: str) -> None:
        async with self.slots:
            work = await self.db(_start, job_id)
            if work is None:
                return
            try:
                await self._fetch(job_id, work)
            except VolexError as exc:
                await self.db(repository.set_status, job_id, "failed", exc.message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("fetch job failed", extra={"job": job_id})
                message = f"internal error ({exc.__class__.__name__}); see the backtest log"
                await self.db(repository.set_status, job_id, "failed", message)

    async def _fetch(self, job_id: str, work: Work) -> None:
        cursor: int | None = work.cursor
        for start, end in work.plan:
            position = max(start, cursor or start)
            while position < end:
                bars = await self._page(work.series, position)
                cursor = await self.db(_commit_page, job_id, work.series, position, end, bars)
                if cursor is None:
                    return  # cancelled meanwhile
                await announce(self.events, work.series)
                position = cursor
        await self.db(_finish, job_id)

    async def _page(self, series: Series, since: int) -> Bars:
        path = f"/ohlcv/{series.exchange}/{series.symbol.replace('/', '-')}"
        params = {"timeframe": series.timeframe, "since": since, "limit": PAGE_LIMIT}
        for delay in (*RETRY_DELAYS, None):
            try:
                body = await self.agents.execution.get(path, params=params, timeout=60)
                return Bars.from_rows(body["bars"])
            except (ServiceUnavailable, UpstreamError) as exc:
                if delay is None:
                    raise
                log.info("candle page failed; retrying", extra={"reason": exc.message})
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _start(session: Session, job_id: str) -> Work | None:
    job = repository.get_job(session, job_id, lock=True)
    if job is None or job.status not in ("queued", "running"):
        return None
    job.status, job.attempts, job.error = "running", job.attempts + 1, None
    job.updated_at = repository.db_now(session)
    series = Series(job.exchange, job.symbol, job.timeframe)
    return Work(series, [list(r) for r in job.plan], job.cursor or job.plan[0][0])


def _commit_page(
    session: Session, job_id: str, series: Series, position: int, end: int, bars: Bars
) -> int | None:
    """Write one page and the job's progress; the next cursor, or None if the job was
    cancelled (nothing is written then)."""
    job = repository.get_job(session, job_id, lock=True)
    if job is None or job.status != "running":
        return None
    step = step_ms(series.timeframe)
    page = repository.pick(bars, (bars.ts >= position) & (bars.ts < end))
    following = int(page.ts.max()) + step if len(page) else end
    written = repository.upsert_bars(session, series, page)
    gaps = page_gaps(page.ts, position, following, step)
    job.gaps = add_gaps(job.gaps, gaps, step)
    job.cursor = following
    job.done += (following - position) // step
    job.fetched += len(page)
    job.rows_written += written
    job.updated_at = repository.db_now(session)
    return following


def _finish(session: Session, job_id: str) -> None:
    job = repository.get_job(session, job_id, lock=True)
    if job is not None and job.status == "running":
        job.status, job.updated_at = "done", repository.db_now(session)
