"""The signal service process: `volex serve signal` runs this app under uvicorn."""

from common.service import create_service

app = create_service(
    "signal", description="Indicators, strategy signals, ML models and the autonomous decide loop."
)
