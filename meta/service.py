"""What the meta-agent knows about the fleet."""

from __future__ import annotations

import asyncio

from common.clients import AgentClient, Agents
from common.errors import ServiceUnavailable
from common.settings import SERVICES
from meta.schemas import AgentHealth, FleetHealth


async def _agent_health(client: AgentClient, timeout: float) -> AgentHealth:
    try:
        response = await client.request("GET", "/health", timeout=timeout)
    except ServiceUnavailable as exc:
        return AgentHealth(
            name=client.name,
            url=client.base_url,
            healthy=False,
            status_code=None,
            detail=exc.message,
            dependencies={},
        )
    try:
        body = response.json()
    except ValueError:
        body = {}
    dependencies = body.get("dependencies", {}) if isinstance(body, dict) else {}
    failing = [name for name, dep in dependencies.items() if not dep.get("ok")]
    healthy = response.status_code == 200
    detail = "ok" if healthy else f"unhealthy: {', '.join(failing) or response.status_code}"
    return AgentHealth(
        name=client.name,
        url=client.base_url,
        healthy=healthy,
        status_code=response.status_code,
        detail=detail,
        dependencies=dependencies,
    )


async def fleet_health(agents: Agents, timeout: float) -> FleetHealth:
    """Ask every agent for its health at once; an unreachable agent is reported, not raised."""
    results = await asyncio.gather(*(_agent_health(agents[name], timeout) for name in SERVICES))
    return FleetHealth(healthy=all(r.healthy for r in results), agents=list(results))
