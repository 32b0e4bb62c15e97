"""The backtest service process: `volex serve backtest` runs this app under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

from common.settings import Settings

# numba picks a compiled kernel's cache directory when the kernel module is imported:
# point it under VOLEX_HOME first, so the cache works even from a read-only source tree.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Settings().home_dir / "cache" / "numba"))

from fastapi import FastAPI

from agents.backtest.endpoints import router
from agents.backtest.fetcher import Fetcher
from agents.backtest.runs.endpoints import router as runs_router
from agents.backtest.runs.runner import Runner
from common.quant.engine import warm_up
from common.service import Kit, create_service

log = logging.getLogger(__name__)


async def _warm_up() -> None:
    """Compile (or load from the cache) the engine's kernels without blocking start-up."""
    try:
        await asyncio.to_thread(warm_up)
    except Exception:  # a run would compile on first use instead: slower, not broken
        log.exception("engine warm-up failed")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    kit: Kit = app.state.kit
    assert kit.session_factory is not None and kit.agents is not None
    fetcher = Fetcher(kit.session_factory, kit.agents, kit.events)
    runner = Runner(kit.session_factory, kit.agents)
    app.state.fetcher, app.state.runner = fetcher, runner
    tasks = [
        asyncio.create_task(_warm_up()),
        asyncio.create_task(fetcher.resume_unfinished()),
        asyncio.create_task(runner.resume_unfinished()),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await fetcher.close()
        await runner.close()


app = create_service(
    "backtest",
    [router, runs_router],
    lifespan=lifespan,
    description="Market data (OHLCV): fetch, import, stored series; backtests over HTTP.",
)
