from fastapi import APIRouter

from common.service import AgentsDep, KitDep
from meta.schemas import FleetHealth
from meta.service import fleet_health

router = APIRouter(tags=["fleet"])


@router.get("/agents/health", response_model=FleetHealth)
async def agents_health(agents: AgentsDep, kit: KitDep) -> FleetHealth:
    """Health of every agent in the fleet, with each one's dependencies."""
    return await fleet_health(agents, kit.settings.health_timeout * 2)
