"""The optimize service process: `volex serve optimize` runs this app under uvicorn."""

from common.service import create_service

app = create_service(
    "optimize", description="Parameter search over backtests and walk-forward validation."
)
