"""The signal service process: `volex serve signal` runs this app under uvicorn."""

from agents.signal.autonomous.endpoints import router as autonomous_router
from agents.signal.autonomous.lifecycle import lifespan
from common.service import create_service

app = create_service(
    "signal",
    [autonomous_router],
    lifespan=lifespan,
    description="Indicators, strategy signals, ML models and the autonomous decide loop.",
)
