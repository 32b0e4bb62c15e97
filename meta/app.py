"""The meta service process: `volex serve meta` runs this app under uvicorn."""

from common.service import create_service
from meta.endpoints import router

app = create_service(
    "meta",
    [router],
    description="Plain-English commands turned into calls to the agents; fleet status.",
)
