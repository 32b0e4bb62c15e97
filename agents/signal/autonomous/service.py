"""The autonomous loop: start, stop, status, one-off decisions, and the loop itself.

The loop ticks every `interval` seconds over its symbols, one at a time. It stops
itself when a tick finds trading HALTED or when risk's broadcast says so, and it
does not start again on resume: only `POST /autonomous/start` starts a loop. A
running loop survives a restart of the signal agent (its run row says `running`)
unless trading was halted meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from agents.signal.autonomous import repository as repo
from agents.signal.autonomous.decide import Outcome, Predictor, TickConfig, Ticker
from agents.signal.autonomous.schemas import (
    DecideRequest,
    DecisionView,
    RunView,
    StartRequest,
    StatusView,
)
from common import outbox
from common.auth import Caller
from common.clients import Agents
from common.contracts import AuditEventIn
from common.errors import Conflict, Unprocessable
from common.models.autonomous import AutonomousRun
from common.quant.strategies import get_strategy

log = logging.getLogger(__name__)
SERVICE = "signal"
STOP_WAIT_S = 15.0


class Autonomy:
    """Owns the one loop task of this process and everything that starts or stops it."""

    def __init__(
        self, sessions: sessionmaker[Session], agents: Agents, predictor: Predictor | None = None
    ) -> None:
        self.sessions = sessions
        self.agents = agents
        self.predictor = predictor
        self.ticker = Ticker(agents, predictor)
        self.wake_relay: Callable[[], None] = lambda: None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # --- routes ---------------------------------------------------------------------------
    async def start(self, req: StartRequest, caller: Caller) -> RunView:
        strategy = get_strategy(req.strategy)
        params = strategy.validate(req.params)
        await self._check_listed(req.exchange, req.symbols, "symbols")
        if strategy.needs_model:
            await asyncio.to_thread(self._check_models, req)
        state = await self.agents.risk.get("/state")
        if state["state"] == "HALTED":
            raise Conflict(f"trading is HALTED ({state['reason']}); resume trading first")
        async with self._lock:
            run = await asyncio.to_thread(
                self._insert_run, req, params, caller.name, state["changed_at"]
            )
            self._spawn(run.id)
        return run

    async def stop(self, reason: str, by: str) -> RunView:
        async with self._lock:
            run = await asyncio.to_thread(self._mark_stopped, reason, by)
            if run is None:
                raise Conflict("no autonomous loop is running")
            await self._join()
        return run

    def status(self, session: Session) -> StatusView:
        run = repo.running(session) or repo.latest(session)
        recent = repo.decisions(session, run_id=run.id, limit=20) if run else []
        return StatusView(
            running=run is not None and run.status == repo.RUNNING,
            run=RunView.model_validate(run) if run else None,
            recent_decisions=[DecisionView.model_validate(d) for d in recent],
        )

    async def decide(self, req: DecideRequest) -> DecisionView:
        """One tick for one symbol, outside the loop's schedule; recorded like any other."""
        run = await asyncio.to_thread(self._running_view)
        config = self._one_off_config(req, run)
        await self._check_listed(config.exchange, [config.symbol], "symbol")
        outcome = await self.ticker.tick(config)
        return await asyncio.to_thread(self._record, config, outcome, "decide")

    # --- lifecycle --------------------------------------------------------------------------
    async def resume_after_restart(self) -> None:
        """Carry on a loop that was running when this process stopped (unless halted)."""
        run = await asyncio.to_thread(self._running_view)
        if run is None:
            return
        if not await self.still_clear(run):
            return
        async with self._lock:
            self._spawn(run.id)

    async def still_clear(self, run: RunView) -> bool:
        """True if trading has not been halted since the loop last looked; else the loop
        is stopped for good. A halt and a resume while the loop was not looking (this
        process down, a broadcast lost) are found in risk's state history."""
        state = await self.agents.risk.get("/state")
        if state["state"] == "HALTED":
            await self.halted(state["reason"])
            return False
        changed_at = datetime.fromisoformat(state["changed_at"])
        if run.state_seen_at is not None and changed_at <= run.state_seen_at:
            return True
        history = await self.agents.risk.get("/state/history", params={"limit": 1000})
        for entry in history:
            at = datetime.fromisoformat(entry["changed_at"])
            seen = run.state_seen_at is None or at > run.state_seen_at
            if seen and entry["state"] == "HALTED":
                await self.halted(f"{entry['reason']} (at {at:%Y-%m-%d %H:%M:%S}, since resumed)")
                return False
        await asyncio.to_thread(self._saw_state, run.id, changed_at)
        return True

    async def recheck(self) -> None:
        """After (re)subscribing to the trading state: a halt may have been missed."""
        run = await asyncio.to_thread(self._running_view)
        if run is not None:
            await self.still_clear(run)

    def _saw_state(self, run_id: int, changed_at: datetime) -> None:
        with self.sessions.begin() as session:
            repo.saw_state(session, run_id, changed_at)

    async def halted(self, reason: str) -> None:
        """Trading was halted: stop the loop for good (a resume does not restart it)."""
        async with self._lock:
            run = await asyncio.to_thread(self._mark_stopped, f"trading halted: {reason}", "risk")
            if run is not None:
                log.warning("autonomous loop stopped: trading halted", extra={"run": run.id})
                await self._join()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- the loop ---------------------------------------------------------------------------
    def _spawn(self, run_id: int) -> None:
        self._task = asyncio.create_task(self._loop(run_id), name=f"autonomous-{run_id}")

    async def _join(self) -> None:
        """Let the loop finish the tick it is in (an order may be on its way), then end."""
        task, self._task = self._task, None
        if task is None or task is asyncio.current_task():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_WAIT_S)
        except TimeoutError:
            task.cancel()
        except Exception:  # the loop's own failure is logged there
            log.debug("autonomous loop ended with an error", exc_info=True)

    async def _loop(self, run_id: int) -> None:
        interval = 5.0
        while True:
            try:
                run = await asyncio.to_thread(self._run_view, run_id)
                if run is None or run.status != repo.RUNNING:
                    return
                interval = run.interval_s
                if not await self.still_clear(run):
                    return
                for symbol in run.symbols:
                    if self._task is not asyncio.current_task():
                        return  # stopped (or halted) meanwhile: no further symbol trades
                    if not await self._tick_one(run, symbol):
                        return
                if not await asyncio.to_thread(self._count_tick, run_id):
                    return
            except Exception:  # the database went away: keep the loop, try next time
                log.exception("autonomous loop round failed", extra={"run": run_id})
            await asyncio.sleep(interval)

    async def _tick_one(self, run: RunView, symbol: str) -> bool:
        """One symbol's tick; False when the loop must end (halted or stopped)."""
        config = TickConfig(
            exchange=run.exchange,
            symbol=symbol,
            timeframe=run.timeframe,
            strategy=get_strategy(run.strategy),
            params=dict(run.params),
            risk_fraction=run.risk_fraction,
            atr_multiple=run.atr_multiple,
            run_id=run.id,
        )
        try:
            outcome = await self.ticker.tick(config)
            await asyncio.to_thread(self._record, config, outcome, "loop")
        except Exception:  # a bad tick must not kill the loop; the next one tries again
            log.exception("autonomous tick failed", extra={"symbol": symbol})
            return True
        if outcome.halted is not None:
            await asyncio.to_thread(self._mark_stopped, f"trading halted: {outcome.halted}", "risk")
            if self._task is asyncio.current_task():
                self._task = None
            return False
        return True

    # --- helpers ----------------------------------------------------------------------------
    async def _check_listed(self, exchange: str, symbols: list[str], field: str) -> None:
        listed = {
            row["id"]: set(row["symbols"]) for row in await self.agents.execution.get("/exchanges")
        }
        if exchange not in listed:
            raise Unprocessable(
                f"exchange: {exchange!r} is not configured; use one of {', '.join(sorted(listed))}",
                field="exchange",
            )
        for symbol in symbols:
            if symbol not in listed[exchange]:
                raise Unprocessable(f"{field}: {symbol} is not listed on {exchange}", field=field)

    def _check_models(self, req: StartRequest) -> None:
        for symbol in req.symbols:
            if (
                self.predictor is None
                or self.predictor.ref(req.exchange, symbol, req.timeframe) is None
            ):
                raise Unprocessable(
                    f"symbols: ml needs an active model for {symbol} {req.timeframe} on "
                    f"{req.exchange}; train one (POST /models/train) and activate it",
                    field="symbols",
                )

    def _one_off_config(self, req: DecideRequest, run: RunView | None) -> TickConfig:
        base: dict[str, Any] = (
            run.model_dump() if run is not None else StartRequest(symbols=[req.symbol]).model_dump()
        )
        name = req.strategy or base["strategy"]
        strategy = get_strategy(name)
        same = req.strategy is None or name == base["strategy"]
        raw = req.params if req.params is not None else (base["params"] if same else {})
        return TickConfig(
            exchange=req.exchange or base["exchange"],
            symbol=req.symbol,
            timeframe=req.timeframe or base["timeframe"],
            strategy=strategy,
            params=strategy.validate(raw),
            risk_fraction=req.risk_fraction or base["risk_fraction"],
            atr_multiple=req.atr_multiple or base["atr_multiple"],
        )

    def _insert_run(
        self, req: StartRequest, params: dict[str, float], by: str, state_seen_at: str
    ) -> RunView:
        try:
            with self.sessions.begin() as session:
                run = repo.add_run(
                    session,
                    AutonomousRun(
                        status=repo.RUNNING,
                        exchange=req.exchange,
                        symbols=req.symbols,
                        timeframe=req.timeframe,
                        strategy=req.strategy,
                        params=params,
                        interval_s=req.interval,
                        risk_fraction=req.risk_fraction,
                        atr_multiple=req.atr_multiple,
                        started_by=by,
                        state_seen_at=datetime.fromisoformat(state_seen_at),
                        ticks=0,
                    ),
                )
                view = RunView.model_validate(run)
                self._audit(session, "autonomous.started", by, view.model_dump(mode="json"))
        except IntegrityError:
            raise Conflict("an autonomous loop is already running; stop it first") from None
        self.wake_relay()
        return view

    def _mark_stopped(self, reason: str, by: str) -> RunView | None:
        with self.sessions.begin() as session:
            run = repo.running(session, lock=True)
            if run is None:
                return None
            repo.stop(session, run, by, reason)
            view = RunView.model_validate(run)
            self._audit(session, "autonomous.stopped", by, {"run": run.id, "reason": reason})
        self.wake_relay()
        return view

    def _running_view(self) -> RunView | None:
        with self.sessions() as session:
            run = repo.running(session)
            return RunView.model_validate(run) if run else None

    def _run_view(self, run_id: int) -> RunView | None:
        with self.sessions() as session:
            run = session.get(AutonomousRun, run_id)
            return RunView.model_validate(run) if run else None

    def _count_tick(self, run_id: int) -> bool:
        with self.sessions.begin() as session:
            return repo.ticked(session, run_id)

    def _record(self, config: TickConfig, outcome: Outcome, via: str) -> DecisionView:
        """The decision row and its audit event, in one transaction."""
        with self.sessions.begin() as session:
            row = repo.add_decision(
                session,
                run_id=config.run_id,
                exchange=config.exchange,
                symbol=config.symbol,
                timeframe=config.timeframe,
                strategy=config.strategy.name,
                bar_ts=outcome.bar_ts,
                signal=outcome.signal,
                action=outcome.action,
                outcome=outcome.outcome,
                reasons=outcome.reasons,
                client_order_id=outcome.client_order_id,
                order_id=outcome.order_id,
                order_status=outcome.order_status,
                detail=outcome.detail,
            )
            view = DecisionView.model_validate(row)
            self._audit(
                session,
                "autonomous.decided",
                SERVICE,
                {**view.model_dump(mode="json"), "via": via},
                subject=outcome.client_order_id or f"{config.symbol}@{outcome.bar_ts}",
            )
        self.wake_relay()
        return view

    @staticmethod
    def _audit(
        session: Session, kind: str, actor: str, data: dict[str, Any], subject: str | None = None
    ) -> None:
        outbox.record(
            session, SERVICE, AuditEventIn(kind=kind, actor=actor, subject=subject, data=data)
        )
