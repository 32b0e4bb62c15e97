"""The execution service process: `volex serve execution` runs this app under uvicorn."""

from common.service import create_service

app = create_service(
    "execution",
    description="Orders, fills, positions and balances; the only service talking to exchanges.",
)
