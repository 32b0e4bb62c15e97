"""The signal service process: `volex serve signal` runs this app under uvicorn."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from agents.signal import runtime
from agents.signal.autonomous import lifecycle as autonomous
from agents.signal.autonomous.endpoints import router as autonomous_router
from agents.signal.endpoints import router
from common.service import create_service


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with runtime.lifespan(app), autonomous.lifespan(app):
        yield


app = create_service(
    "signal",
    [router, autonomous_router],
    lifespan=lifespan,
    description="Indicators, strategy signals, ML models, insights and the autonomous loop.",
)
