"""The signal service process: `volex serve signal` runs this app under uvicorn."""

from agents.signal.autonomous.endpoints import router as autonomous_router
from agents.signal.endpoints import router
from agents.signal.runtime import lifespan
from common.service import create_service

app = create_service(
    "signal",
    [router, autonomous_router],
    lifespan=lifespan,
    description="Indicators, strategy signals, ML models, insights and the autonomous loop.",
)
