"""The compliance service process: `volex serve compliance` runs this app under uvicorn."""

from agents.compliance.endpoints import router
from common.service import create_service

app = create_service(
    "compliance",
    [router],
    description="Hash-chained audit trail and the policies checked before every order.",
)
