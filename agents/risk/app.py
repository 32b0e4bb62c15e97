"""The risk service process: `volex serve risk` runs this app under uvicorn."""

from common.service import create_service

app = create_service(
    "risk", description="Risk limits, pre-trade checks and the trading state (kill switch)."
)
