"""What the signal agent keeps for its lifetime: the bar source, the loaded models and the
training slot. Built in the lifespan, reachable as `request.app.state.signal`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from agents.signal.artifacts import ModelCache
from agents.signal.market import BarSource
from agents.signal.repository import ModelRef
from common.contracts import MARKET_DATA_CHANNEL
from common.db import LoopDatabase
from common.errors import ServiceUnavailable
from common.events import EventBus
from common.service import Kit

log = logging.getLogger(__name__)
HISTORY_POOL = 4


MarketKey = tuple[str, str, str]  # exchange, symbol, timeframe


class ActiveModels:
    """Which model is active per market, remembered for TTL_S: a signal need not ask the
    database on every call. Activation here forgets the market at once; one in another
    signal process is seen within TTL_S."""

    TTL_S = 2.0

    def __init__(self) -> None:
        self._items: dict[MarketKey, tuple[ModelRef | None, float]] = {}

    def get(self, key: MarketKey) -> tuple[bool, ModelRef | None]:
        """(known, ref): known is False when the database must be asked."""
        item = self._items.get(key)
        if item is None or time.monotonic() >= item[1]:
            return False, None
        return True, item[0]

    def put(self, key: MarketKey, ref: ModelRef | None) -> None:
        if len(self._items) > 1024:
            self._items.clear()
        self._items[key] = (ref, time.monotonic() + self.TTL_S)

    def forget(self, key: MarketKey) -> None:
        self._items.pop(key, None)


@dataclass
class Runtime:
    bars: BarSource
    # Signal history is written on the event loop (asyncpg) with synchronous_commit off:
    # a generate call's one INSERT needs no worker thread and does not wait for the disk
    # (rows are derived; see common.db).
    history: LoopDatabase | None = None
    models: ModelCache = field(default_factory=ModelCache)
    active: ActiveModels = field(default_factory=ActiveModels)
    # One training at a time: it is CPU-bound and must not starve signal requests.
    training: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))


async def _follow_market_data(events: EventBus, bars: BarSource) -> None:
    """Drop cached bars of a market whose stored candles changed; cache nothing while
    the subscription is down (a change could go unheard)."""
    while True:
        try:
            listening = events.subscribe(MARKET_DATA_CHANNEL, lambda: bars.set_listening(True))
            async for event in listening:
                bars.changed(str(event.get("exchange")), str(event.get("symbol")))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: no cache until we hear again
            log.info("market-data subscription lost", extra={"reason": str(exc)[:200]})
        bars.set_listening(False)
        await asyncio.sleep(1.0)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    kit: Kit = app.state.kit
    if kit.agents is None:
        raise RuntimeError("the kit opens the agent clients before the signal lifespan runs")
    history = None
    if kit.engine is not None:
        history = LoopDatabase(
            kit.settings.resolved_database_url(), size=HISTORY_POOL, synchronous_commit=False
        )
        await history.open()
    runtime = Runtime(bars=BarSource(kit.agents), history=history)
    app.state.signal = runtime
    follower = None
    if kit.events is not None:
        follower = asyncio.create_task(_follow_market_data(kit.events, runtime.bars))
    try:
        yield
    finally:
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        if history is not None:
            await history.close()


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "signal", None)
    if runtime is None:
        raise ServiceUnavailable("the signal service is still starting")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
