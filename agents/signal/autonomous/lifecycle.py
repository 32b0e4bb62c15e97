"""Starts the autonomous loop's background work with the signal service: the audit
outbox relay, the trading-state follower, and a loop that was running before a restart;
and gives its ticks the active models' predictions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from agents.signal import models_service
from agents.signal import repository as repo
from agents.signal.autonomous.decide import TickConfig
from agents.signal.autonomous.service import SERVICE, Autonomy
from agents.signal.repository import ModelRef
from agents.signal.runtime import Runtime
from common.contracts import TRADING_STATE_CHANNEL
from common.errors import Unprocessable
from common.outbox import OutboxRelay
from common.quant.bars import Bars, Floats
from common.service import Kit

log = logging.getLogger(__name__)
RESUME_RETRY_S = 2.0


async def _follow_trading_state(kit: Kit, autonomy: Autonomy) -> None:
    """A halt broadcast stops the loop at once, not at its next tick."""
    assert kit.events is not None
    checks: set[asyncio.Task[None]] = set()

    def subscribed() -> None:  # a halt may have gone by while we were not listening
        task = asyncio.create_task(_recheck(autonomy))
        checks.add(task)
        task.add_done_callback(checks.discard)

    while True:
        try:
            async for event in kit.events.subscribe(TRADING_STATE_CHANNEL, subscribed):
                if event.get("state") == "HALTED":
                    await autonomy.halted(str(event.get("reason", "")))
        except Exception as exc:  # Redis away: every tick still reads the state from risk
            log.warning("trading-state subscription lost", extra={"reason": str(exc)})
            await asyncio.sleep(1.0)


async def _recheck(autonomy: Autonomy) -> None:
    try:
        await autonomy.recheck()
    except Exception as exc:  # risk away: every round of the loop checks again
        log.info("trading state not rechecked", extra={"reason": str(exc)[:200]})


async def _resume(autonomy: Autonomy) -> None:
    """Pick up a running loop once risk answers (it may start after us)."""
    while True:
        try:
            await autonomy.resume_after_restart()
            return
        except Exception as exc:
            log.info("autonomous loop not resumed yet", extra={"reason": str(exc)[:200]})
            await asyncio.sleep(RESUME_RETRY_S)


class ActiveModel:
    """The `ml` strategy's input for a tick: the market's active model's P(up) per bar,
    from the signal agent's own models (loaded once, digest-checked, cached)."""

    def __init__(self, runtime: Runtime, sessions: sessionmaker[Session]) -> None:
        self.runtime = runtime
        self.sessions = sessions

    def ref(self, exchange: str, symbol: str, timeframe: str) -> ModelRef | None:
        with self.sessions() as session:
            return repo.active_model_ref(session, exchange, symbol, timeframe)

    async def __call__(self, config: TickConfig, bars: Bars) -> Floats:
        ref = await asyncio.to_thread(self.ref, config.exchange, config.symbol, config.timeframe)
        if ref is None:
            raise Unprocessable(
                f"strategy: ml needs an active model for {config.symbol} {config.timeframe} on "
                f"{config.exchange}; train one (POST /models/train) and activate it",
                field="strategy",
            )
        with self.sessions() as session:
            return await models_service.predictions(self.runtime, session, ref, bars)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    kit: Kit = app.state.kit
    assert kit.session_factory is not None and kit.agents is not None
    models = ActiveModel(app.state.signal, kit.session_factory)
    autonomy = Autonomy(kit.session_factory, kit.agents, models)
    relay = OutboxRelay(SERVICE, kit.session_factory, kit.agents)
    autonomy.wake_relay = relay.wake.set
    app.state.autonomy = autonomy
    tasks = [asyncio.create_task(relay.run()), asyncio.create_task(_resume(autonomy))]
    if kit.events is not None:
        tasks.append(asyncio.create_task(_follow_trading_state(kit, autonomy)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await autonomy.close()
