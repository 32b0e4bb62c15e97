"""The risk service process: `volex serve risk` runs this app under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from agents.risk.endpoints import router
from common.outbox import OutboxRelay
from common.service import Kit, create_service


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Risk's background work: its audit events go to compliance through the kit's relay."""
    kit: Kit = app.state.kit
    assert kit.session_factory is not None and kit.agents is not None
    relay = OutboxRelay("risk", kit.session_factory, kit.agents)
    kit.background.append(asyncio.create_task(relay.run(), name="risk-audit-outbox"))
    yield


app = create_service(
    "risk",
    [router],
    lifespan=lifespan,
    description="Risk limits, pre-trade checks and the trading state (kill switch).",
)
