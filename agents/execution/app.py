"""The execution service process: `volex serve execution` runs this app under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from prometheus_client import Histogram

from agents.execution.brackets import Brackets
from agents.execution.endpoints import router
from agents.execution.exchanges import ExchangeRegistry
from agents.execution.service import SERVICE, OrderService
from agents.execution.settings import ExecutionSettings
from agents.execution.sync import Reconciler
from common.contracts import TRADING_STATE_CHANNEL, ApplyTradingState
from common.metrics import LATENCY_BUCKETS
from common.outbox import OutboxRelay
from common.service import Kit, create_service

log = logging.getLogger(__name__)
settings = ExecutionSettings()


async def _follow_trading_state(kit: Kit, reconciler: Reconciler) -> None:
    """Apply every state broadcast, even if risk's direct call did not reach us."""
    assert kit.events is not None
    while True:
        try:
            async for event in kit.events.subscribe(TRADING_STATE_CHANNEL):
                await reconciler.apply(ApplyTradingState.model_validate(event))
        except Exception as exc:  # Redis down: retry; risk's HTTP call still reaches us
            log.warning("trading-state subscription lost", extra={"reason": str(exc)})
            await asyncio.sleep(1.0)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    kit: Kit = app.state.kit
    assert kit.session_factory is not None and kit.agents is not None
    exchanges = ExchangeRegistry(settings, kit.vault)
    assert kit.loop_db is not None
    orders = OrderService(kit.session_factory, kit.loop_db, kit.agents, exchanges)
    orders.stage_seconds = Histogram(
        "volex_order_stage_seconds",
        "Time spent in each stage of POST /orders",
        ["stage"],
        buckets=LATENCY_BUCKETS,
        registry=kit.metrics.registry,
    )
    orders.batch_sizes = Histogram(
        "volex_order_approval_batch_size",
        "Orders judged together in one approval (one call to risk and one to compliance)",
        buckets=(1, 2, 4, 8, 16, 32, 64),
        registry=kit.metrics.registry,
    )
    relay = OutboxRelay(SERVICE, kit.session_factory, kit.agents)
    orders.wake_relay = relay.wake.set
    brackets = Brackets(orders)
    orders.after_fill, orders.make_way = brackets.after_fill, brackets.make_way
    reconciler = Reconciler(orders, brackets, settings.unknown_grace)
    app.state.orders, app.state.reconciler = orders, reconciler
    kit.checks["reconciliation"] = reconciler.health
    tasks = [
        asyncio.create_task(relay.run()),
        asyncio.create_task(reconciler.run(settings.sync_interval, settings.snapshot_interval)),
        asyncio.create_task(_follow_trading_state(kit, reconciler)),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await exchanges.close()


app = create_service(
    "execution",
    [router],
    lifespan=lifespan,
    settings=settings,
    description="Orders, fills, positions and balances; the only service talking to exchanges.",
)
