"""The backtest service process: `volex serve backtest` runs this app under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from agents.backtest.endpoints import router
from agents.backtest.fetcher import Fetcher
from common.service import Kit, create_service


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    kit: Kit = app.state.kit
    assert kit.session_factory is not None and kit.agents is not None
    fetcher = Fetcher(kit.session_factory, kit.agents, kit.events)
    app.state.fetcher = fetcher
    resuming = asyncio.create_task(fetcher.resume_unfinished())
    try:
        yield
    finally:
        resuming.cancel()
        await asyncio.gather(resuming, return_exceptions=True)
        await fetcher.close()


app = create_service(
    "backtest",
    [router],
    lifespan=lifespan,
    description="Market data (OHLCV): fetch, import, stored series; backtests.",
)
