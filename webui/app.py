"""The web UI service process: `volex serve webui` runs this app under uvicorn."""

from common.service import create_service

app = create_service("webui", description="Dashboard, charts, command box and the kill switch.")
