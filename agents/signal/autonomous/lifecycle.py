"""Starts the autonomous loop's background work with the signal service: the audit
outbox relay, the trading-state follower, and a loop that was running before a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from agents.signal.autonomous.service import SERVICE, Autonomy
from common.contracts import TRADING_STATE_CHANNEL
from common.outbox import OutboxRelay
from common.service import Kit

log = logging.getLogger(__name__)
RESUME_RETRY_S = 2.0


async def _follow_trading_state(kit: Kit, autonomy: Autonomy) -> None:
    """A halt broadcast stops the loop at once, not at its next tick."""
    assert kit.events is not None
    while True:
        try:
            async for event in kit.events.subscribe(TRADING_STATE_CHANNEL):
                if event.get("state") == "HALTED":
                    await autonomy.halted(str(event.get("reason", "")))
        except Exception as exc:  # Redis away: every tick still reads the state from risk
            log.warning("trading-state subscription lost", extra={"reason": str(exc)})
            await asyncio.sleep(1.0)


async def _resume(autonomy: Autonomy) -> None:
    """Pick up a running loop once risk answers (it may start after us)."""
    while True:
        try:
            await autonomy.resume_after_restart()
            return
        except Exception as exc:
            log.info("autonomous loop not resumed yet", extra={"reason": str(exc)[:200]})
            await asyncio.sleep(RESUME_RETRY_S)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    kit: Kit = app.state.kit
    assert kit.session_factory is not None and kit.agents is not None
    autonomy = Autonomy(kit.session_factory, kit.agents)
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
