"""The compliance service process: `volex serve compliance` runs this app under uvicorn."""

from common.service import create_service

app = create_service(
    "compliance",
    description="Hash-chained audit trail and the policies checked before every order.",
)
