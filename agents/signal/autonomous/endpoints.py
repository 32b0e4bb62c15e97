"""The autonomous loop's routes: validate, call the service, return a schema."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from agents.signal.autonomous import repository as repo
from agents.signal.autonomous.schemas import (
    DecideRequest,
    DecisionView,
    RunView,
    StartRequest,
    StatusView,
    StopRequest,
)
from agents.signal.autonomous.service import Autonomy
from common.auth import CallerDep
from common.contracts import SYMBOL_PATTERN
from common.db import SessionDep
from common.errors import ServiceUnavailable

router = APIRouter(prefix="/autonomous", tags=["autonomous"])


async def get_autonomy(request: Request) -> Autonomy:
    autonomy: Autonomy | None = getattr(request.app.state, "autonomy", None)
    if autonomy is None:
        raise ServiceUnavailable("the autonomous loop is not ready")
    return autonomy


AutonomyDep = Annotated[Autonomy, Depends(get_autonomy)]


@router.post("/start", status_code=201)
async def start(body: StartRequest, caller: CallerDep, autonomy: AutonomyDep) -> RunView:
    """Start trading the strategy's signals on these symbols every `interval` seconds."""
    return await autonomy.start(body, caller)


@router.post("/stop")
async def stop(body: StopRequest, caller: CallerDep, autonomy: AutonomyDep) -> RunView:
    """Stop the loop (the tick in progress finishes first)."""
    return await autonomy.stop(body.reason, caller.name)


@router.get("/status")
def status(session: SessionDep, autonomy: AutonomyDep) -> StatusView:
    """Whether a loop runs, its settings and its latest decisions."""
    return autonomy.status(session)


@router.post("/decide")
async def decide(body: DecideRequest, autonomy: AutonomyDep) -> DecisionView:
    """Run one tick for one symbol now and say what it decided and what happened."""
    return await autonomy.decide(body)


@router.get("/decisions")
def decisions(
    session: SessionDep,
    symbol: Annotated[str | None, Query(pattern=SYMBOL_PATTERN)] = None,
    run_id: int | None = None,
    outcome: Annotated[str | None, Query(pattern="^(ordered|skipped|refused|error)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before_id: Annotated[int | None, Query(description="page: ids below this one")] = None,
) -> list[DecisionView]:
    """Past decisions, newest first."""
    rows = repo.decisions(
        session, symbol=symbol, run_id=run_id, outcome=outcome, limit=limit, before_id=before_id
    )
    return [DecisionView.model_validate(row) for row in rows]
