"""What the signal agent keeps for its lifetime: the bar source, the loaded models and the
training slot. Built in the lifespan, reachable as `request.app.state.signal`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from agents.signal.artifacts import ModelCache
from agents.signal.market import BarSource
from common.errors import ServiceUnavailable
from common.service import Kit


@dataclass
class Runtime:
    bars: BarSource
    models: ModelCache = field(default_factory=ModelCache)
    # One training at a time: it is CPU-bound and must not starve signal requests.
    training: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    kit: Kit = app.state.kit
    if kit.agents is None:
        raise RuntimeError("the kit opens the agent clients before the signal lifespan runs")
    app.state.signal = Runtime(bars=BarSource(kit.agents))
    yield


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "signal", None)
    if runtime is None:
        raise ServiceUnavailable("the signal service is still starting")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
