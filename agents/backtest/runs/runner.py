"""Runs backtests in the background: loading bars, signals, simulating, saving.

Each stage is committed as it starts (`stage`, `progress`), so `GET /backtest/{id}`
shows where a run is; the results (stats, trades, equity) are written in one
transaction at the end, so a run is either done with all of them or has none.

Restarts: a run left queued or running by a stopped process is run again from the
start when the agent starts (runs are deterministic: the request is stored
normalised, with the model pinned). A run interrupted `MAX_ATTEMPTS` times is marked
failed instead, so a run that brings the process down cannot do so forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from agents.backtest.jobs import JobRunner
from agents.backtest.runs import bars as run_bars
from agents.backtest.runs import equity as curves
from agents.backtest.runs import repository, service
from common.clients import Agents
from common.errors import Unprocessable, VolexError
from common.models.backtest import BacktestEquity
from common.quant.bars import Bars
from common.quant.engine import BacktestResult, run_backtest
from common.quant.strategies import Context, get_strategy

log = logging.getLogger(__name__)

MAX_RUNNING = 2  # two cores: a third run would only slow the other two down
MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Work:
    run_id: str
    request: dict[str, Any]
    source: str


class Runner(JobRunner):
    """Runs backtests as asyncio tasks (the heavy parts in threads), `MAX_RUNNING` at once."""

    kind = "backtest"

    def __init__(self, sessions: sessionmaker[Session], agents: Agents) -> None:
        super().__init__(sessions, agents, MAX_RUNNING)

    def unfinished(self, session: Session) -> Sequence[str]:
        return repository.unfinished_ids(session)

    # --- one run -------------------------------------------------------------------------
    async def run(self, run_id: str) -> None:
        async with self.slots:
            work = await self.db(_start, run_id)
            if work is None:
                return
            try:
                await self._run(work)
            except VolexError as exc:
                await self.db(_fail, run_id, exc.message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("backtest failed", extra={"backtest": run_id})
                message = f"internal error ({exc.__class__.__name__}); see the backtest log"
                await self.db(_fail, run_id, message)

    async def _run(self, work: Work) -> None:
        request, run_id = work.request, work.run_id
        series = service.series_of(request)
        since, until = request["since"], request["until"]
        bars = await self.db(run_bars.load, series, work.source, since, until)
        if len(bars) == 0:
            raise Unprocessable(
                f"no complete {series.timeframe} bar could be built in the range from the"
                f" stored {work.source} candles; fetch the missing ones (POST /data/fetch)"
            )
        if not await self.db(repository.set_stage, run_id, "signals", 0.3):
            return
        context = Context()
        strategy = get_strategy(request["strategy"])
        if strategy.needs_model:
            context = Context(await service.predictions(self.agents, request, bars.ts))
        signals = await asyncio.to_thread(strategy.generate, bars, request["params"], context)
        if not await self.db(repository.set_stage, run_id, "simulating", 0.5):
            return
        config = service.engine_config(request)
        result = await asyncio.to_thread(run_backtest, bars, signals, config)
        if not await self.db(repository.set_stage, run_id, "saving", 0.8):
            return
        encoded = await asyncio.to_thread(curves.encode, bars.ts, result.equity)
        await self.db(_save, run_id, bars, result, encoded)


def _start(session: Session, run_id: str) -> Work | None:
    run = repository.get_run(session, run_id, lock=True)
    if run is None or run.status not in ("queued", "running"):
        return None
    if run.attempts >= MAX_ATTEMPTS:
        message = f"interrupted {run.attempts} times (the service stopped during the run)"
        repository.finish(session, run, "failed", message)
        return None
    run.status, run.stage, run.progress, run.error = "running", "loading_bars", 0.05, None
    run.attempts += 1
    run.started_at, run.finished_at, run.duration_ms = repository.db_now(session), None, None
    return Work(run.id, dict(run.request), run.resampled_from or run.timeframe)


def _save(
    session: Session,
    run_id: str,
    bars: Bars,
    result: BacktestResult,
    encoded: tuple[int, bytes, bytes],
) -> None:
    """Stats, trades and equity with status done, in one transaction; nothing if the
    run was cancelled or deleted meanwhile."""
    run = repository.get_run(session, run_id, lock=True)
    if run is None or run.status != "running":
        return
    repository.add_trades(session, run_id, result.trade_records)
    first_ts, ts_deltas, equity = encoded
    repository.add_equity(
        session,
        BacktestEquity(
            backtest_id=run_id,
            count=len(bars),
            first_ts=first_ts,
            ts_deltas=ts_deltas,
            equity=equity,
        ),
    )
    run.stats, run.bars = service.finite(dict(result.stats)), len(bars)
    repository.finish(session, run, "done")


def _fail(session: Session, run_id: str, message: str) -> None:
    run = repository.get_run(session, run_id, lock=True)
    if run is not None and run.status == "running":
        repository.finish(session, run, "failed", message)
