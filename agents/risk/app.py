"""The risk service process: `volex serve risk` runs this app under uvicorn."""

from agents.risk.endpoints import router
from agents.risk.outbox import lifespan
from common.service import create_service

app = create_service(
    "risk",
    [router],
    lifespan=lifespan,
    description="Risk limits, pre-trade checks and the trading state (kill switch).",
)
