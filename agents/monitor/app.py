"""The monitor service process: `volex serve monitor` runs this app under uvicorn."""

from common.service import create_service

app = create_service("monitor", description="Health history of the fleet, metrics, alerts.")
