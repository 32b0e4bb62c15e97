"""Risk's routes: validate, call the service, return a schema."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Body, Path, Query, Request

from agents.risk import kill_switch, service
from agents.risk.schemas import (
    Drawdown,
    Exposure,
    HaltRequest,
    Limits,
    LimitsView,
    PeakResetRequest,
    PositionSize,
    ReasonRequest,
    SizingRequest,
    SnapshotIn,
    SnapshotOut,
    StateChange,
    StateHistoryEntry,
    StoredCheck,
    ValueAtRisk,
    VarMethod,
)
from common.auth import CallerDep
from common.contracts import (
    CheckDecision,
    CheckDecisions,
    PreTradeBatch,
    PreTradeRequest,
    TradingState,
    TradingStateView,
)
from common.db import SessionDep, in_transaction
from common.errors import Problem
from common.service import CheckListingQuery, KitDep, LoopDbDep

router = APIRouter()
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": Problem, "description": "the operator token is required"}
}
TOO_FEW: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "not enough snapshots"}
}
Since = Annotated[datetime | None, Query(description="only snapshots taken at or after")]
Until = Annotated[datetime | None, Query(description="only snapshots taken at or before")]


# --- trading state -------------------------------------------------------------------------
@router.get("/state", tags=["trading state"])
def get_state(session: SessionDep) -> TradingStateView:
    """The current trading state: ACTIVE, REDUCING or HALTED."""
    return service.current_state(session)


@router.get("/state/history", tags=["trading state"])
def get_state_history(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[StateHistoryEntry]:
    """Past trading-state changes, newest first."""
    return service.state_history(session, limit)


@router.post("/halt", tags=["trading state"])
async def halt(body: HaltRequest, caller: CallerDep, kit: KitDep) -> StateChange:
    """Stop trading: execution cancels open orders (and with flatten closes positions)."""
    return await kill_switch.change_state(
        kit, TradingState.HALTED, body.reason, caller.name, flatten=body.flatten
    )


@router.post("/reduce", tags=["trading state"])
async def reduce(body: ReasonRequest, caller: CallerDep, kit: KitDep) -> StateChange:
    """Allow only orders that shrink a position."""
    return await kill_switch.change_state(kit, TradingState.REDUCING, body.reason, caller.name)


@router.post("/resume", tags=["trading state"], responses=FORBIDDEN)
async def resume(body: ReasonRequest, caller: CallerDep, kit: KitDep) -> StateChange:
    """Trade again (operator only)."""
    service.require_operator(caller, "resume trading")
    return await kill_switch.change_state(kit, TradingState.ACTIVE, body.reason, caller.name)


# --- pre-trade checks ----------------------------------------------------------------------
@router.post("/checks/pre-trade", tags=["checks"])
async def pre_trade(
    body: PreTradeRequest,
    db: LoopDbDep,
    caller: CallerDep,
    kit: KitDep,
    background: BackgroundTasks,
) -> CheckDecision:
    """Approve or reject one order; every rule's result is in `checks`."""
    async with db.transaction() as conn:
        outcome = await service.pre_trade(conn, body, caller.name, kit.name)
    if outcome.halted is not None:
        background.add_task(kill_switch.propagate, kit, outcome.halted)
    return outcome.decisions[0]


@router.post("/checks/pre-trade/batch", tags=["checks"])
async def pre_trade_batch(
    body: PreTradeBatch,
    db: LoopDbDep,
    caller: CallerDep,
    kit: KitDep,
    background: BackgroundTasks,
    checks: CheckListingQuery = "all",
) -> CheckDecisions:
    """Approve or reject orders in turn, each judged with the ones approved before it
    counted as resting orders (execution sends the orders that arrived together).
    `checks=failed` lists only the rules that failed (every result is stored either way:
    `GET /checks/{client_order_id}`)."""
    async with db.transaction() as conn:
        outcome = await service.pre_trade_batch(
            conn, body.portfolio, body.orders, caller.name, kit.name
        )
    if outcome.halted is not None:
        background.add_task(kill_switch.propagate, kit, outcome.halted)
    return CheckDecisions.listing(outcome.decisions, checks)


@router.get("/checks/{client_order_id}", tags=["checks"])
def get_checks(
    session: SessionDep, client_order_id: Annotated[str, Path(max_length=64)]
) -> list[StoredCheck]:
    """The decisions taken for one client order id, newest first."""
    return service.stored_checks(session, client_order_id)


# --- limits and sizing ---------------------------------------------------------------------
@router.get("/limits", tags=["limits"])
def get_limits(session: SessionDep) -> LimitsView:
    """The risk limits in force."""
    return service.current_limits(session)


@router.put("/limits", tags=["limits"], responses=FORBIDDEN)
async def put_limits(body: Limits, request: Request, caller: CallerDep) -> LimitsView:
    """Change the limits you send; the others keep their values (operator only)."""
    return await in_transaction(request, service.change_limits, body, caller)


@router.post("/position-size", tags=["limits"])
def position_size(body: Annotated[SizingRequest, Body()], session: SessionDep) -> PositionSize:
    """How much to trade: fixed_fractional, kelly or atr sizing, capped by the limits."""
    return service.position_size(session, body)


# --- portfolio -----------------------------------------------------------------------------
@router.post("/portfolio/snapshots", tags=["portfolio"], status_code=201)
async def post_snapshot(
    body: SnapshotIn, db: LoopDbDep, kit: KitDep, background: BackgroundTasks
) -> SnapshotOut:
    """Record execution's portfolio; a drawdown past the limit HALTs trading."""
    async with db.transaction() as conn:
        out, halted = await service.record_snapshot(conn, body, kit.name)
    if halted is not None:
        background.add_task(kill_switch.propagate, kit, halted)
    return out


@router.get("/exposure", tags=["portfolio"])
def get_exposure(session: SessionDep) -> Exposure:
    """Per-symbol, gross and net exposure from the latest snapshot."""
    return service.exposure(session)


@router.get("/drawdown", tags=["portfolio"])
def get_drawdown(session: SessionDep, since: Since = None, until: Until = None) -> Drawdown:
    """Current drawdown from the peak, and the worst drawdown in the snapshots."""
    return service.drawdown(session, since, until)


@router.post("/drawdown/reset", tags=["portfolio"], responses=FORBIDDEN)
async def reset_drawdown(body: PeakResetRequest, request: Request, caller: CallerDep) -> Drawdown:
    """Re-base the drawdown breaker's peak (operator only)."""
    return await in_transaction(request, service.reset_peak, body, caller)


@router.get("/var", tags=["portfolio"], responses=TOO_FEW)
def get_var(
    session: SessionDep,
    confidence: Annotated[float, Query(gt=0.5, lt=1)] = 0.95,
    method: VarMethod = VarMethod.historical,
    horizon_days: Annotated[float, Query(gt=0, le=365)] = 1.0,
    since: Since = None,
    until: Until = None,
    simulations: Annotated[int, Query(ge=100, le=100_000)] = 10_000,
    seed: Annotated[int | None, Query(ge=0)] = None,
) -> ValueAtRisk:
    """Value at Risk and CVaR of equity from snapshot returns."""
    return service.value_at_risk(
        session,
        method=method,
        confidence=confidence,
        horizon_days=horizon_days,
        since=since,
        until=until,
        simulations=simulations,
        seed=seed,
    )
