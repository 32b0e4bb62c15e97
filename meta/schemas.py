from pydantic import BaseModel


class AgentHealth(BaseModel):
    name: str
    url: str
    healthy: bool
    status_code: int | None
    detail: str
    dependencies: dict[str, dict[str, object]]


class FleetHealth(BaseModel):
    healthy: bool
    agents: list[AgentHealth]
