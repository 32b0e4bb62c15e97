from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response

from agents.compliance import service
from agents.compliance.schemas import (
    AuditEventOut,
    AuditPage,
    ChainVerification,
    PolicySet,
    PolicyView,
    TradeReport,
)
from common.auth import CallerDep
from common.contracts import (
    AuditEventIn,
    CheckDecision,
    CheckDecisions,
    PolicyBatch,
    PolicyRequest,
)
from common.db import SessionDep
from common.errors import Problem
from common.service import CheckListingQuery, LoopDbDep

router = APIRouter()
MAX_BATCH = 500
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": Problem, "description": "Not allowed for this caller"}
}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": Problem, "description": "Invalid input; `errors` names each field"}
}


@router.post(
    "/audit/events",
    response_model=AuditEventOut,
    status_code=201,
    tags=["audit"],
    responses={**FORBIDDEN, **INVALID},
)
async def post_audit_event(body: AuditEventIn, caller: CallerDep, db: LoopDbDep) -> AuditEventOut:
    """Append one event to the hash-chained audit log; the actor is the authenticated caller."""
    return await service.record_event(db, body, caller)


@router.post(
    "/audit/events/batch",
    response_model=list[AuditEventOut],
    status_code=201,
    tags=["audit"],
    responses={**FORBIDDEN, **INVALID},
)
async def post_audit_events(
    bodies: Annotated[list[AuditEventIn], Body(min_length=1, max_length=MAX_BATCH)],
    caller: CallerDep,
    db: LoopDbDep,
) -> list[AuditEventOut]:
    """Append several events in order, in one transaction: all of them or none."""
    return await service.record_events(db, bodies, caller)


@router.get("/audit", response_model=AuditPage, tags=["audit"], responses=INVALID)
def get_audit(
    session: SessionDep,
    kind: str | None = None,
    actor: str | None = None,
    subject: str | None = None,
    since: Annotated[datetime | None, Query(description="at >= since (no zone = UTC)")] = None,
    until: Annotated[datetime | None, Query(description="at < until (no zone = UTC)")] = None,
    order: Literal["desc", "asc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[int | None, Query(ge=1, description="next_cursor of the page before")] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> AuditPage:
    """Audit events, newest first by default, filtered and paged (cursor or offset)."""
    where = service.audit_filter(kind, actor, subject, since, until)
    return service.list_events(
        session, where, order=order, cursor=cursor, offset=offset, limit=limit
    )


@router.get("/audit/verify", response_model=ChainVerification, tags=["audit"])
def verify_audit(session: SessionDep) -> ChainVerification:
    """Recompute the whole hash chain; name the first row that was edited or deleted."""
    return service.verify_chain(session)


@router.post("/checks/policy", response_model=CheckDecision, tags=["policies"], responses=INVALID)
async def check_policy(body: PolicyRequest, caller: CallerDep, db: LoopDbDep) -> CheckDecision:
    """Check one order against every policy rule; the decision is recorded and audited."""
    return await service.check_policy(db, body, caller)


@router.post(
    "/checks/policy/batch", response_model=CheckDecisions, tags=["policies"], responses=INVALID
)
async def check_policies(
    body: PolicyBatch, caller: CallerDep, db: LoopDbDep, checks: CheckListingQuery = "all"
) -> CheckDecisions:
    """Check orders in turn, each seeing the limit orders approved before it as resting
    (execution sends the orders that arrived together); each decision recorded and audited
    with every rule's result. `checks=failed` lists only the rules that failed."""
    decisions = await service.check_policies(db, body.orders, caller)
    return CheckDecisions.listing(decisions, checks)


@router.get("/policies", response_model=PolicyView, tags=["policies"])
def get_policies(session: SessionDep) -> PolicyView:
    """The policy set in force, with its version and who changed it last."""
    return service.get_policies(session)


@router.put(
    "/policies",
    response_model=PolicyView,
    tags=["policies"],
    responses={**FORBIDDEN, **INVALID},
)
async def put_policies(body: PolicySet, caller: CallerDep, db: LoopDbDep) -> PolicyView:
    """Replace the policy set (operator only); the change is audited with old and new."""
    return await service.put_policies(db, body, caller)


@router.get(
    "/reports/trades",
    response_model=TradeReport,
    tags=["reports"],
    responses={**INVALID, 200: {"content": {"text/csv": {}}}},
)
def trades_report(
    session: SessionDep,
    from_: Annotated[str, Query(alias="from", description="YYYY-MM-DD or ISO 8601 time")],
    to: Annotated[str, Query(description="YYYY-MM-DD (whole day included) or ISO 8601 time")],
    format: Literal["json", "csv"] = "json",
) -> TradeReport | Response:
    """Fills in the period with fees and FIFO realized PnL, as JSON or CSV."""
    start, end = service.report_window(from_, to)
    report = service.trade_report(session, start, end)
    if format == "json":
        return report
    name = f"trades_{start:%Y%m%dT%H%M%SZ}_{end:%Y%m%dT%H%M%SZ}.csv"
    return Response(
        service.reports.to_csv(report.fills),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
