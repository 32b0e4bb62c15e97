"""The signal service process: `volex serve signal` runs this app under uvicorn."""

from agents.signal.endpoints import router
from agents.signal.runtime import lifespan
from common.service import create_service

app = create_service(
    "signal",
    [router],
    lifespan=lifespan,
    description="Indicators, strategy signals, ML models and market insights.",
)
