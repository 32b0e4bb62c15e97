"""The trading state (kill switch): persist first, then broadcast, then tell execution.

A change is committed together with its history row and its audit event before
anyone hears of it, so HALTED survives a restart and is never announced without
being recorded. Broadcasting on Redis and calling execution are best effort: an
agent being down never makes a halt fail, the response says what reached whom.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import asyncpg
from pydantic import ValidationError

from agents.risk import repository as repo
from agents.risk.schemas import BroadcastOutcome, ExecutionOutcome, StateChange
from common.clients import Agents
from common.contracts import (
    TRADING_STATE_CHANNEL,
    ApplyTradingState,
    ApplyTradingStateResult,
    AuditEventIn,
    TradingState,
    TradingStateView,
)
from common.errors import ServiceUnavailable, VolexError
from common.events import EventBus
from common.models.risk import RiskTradingState
from common.service import Kit

log = logging.getLogger(__name__)

EXECUTION_APPLY_PATH = "/trading-state/apply"
EXECUTION_TIMEOUT_S = 10.0
PUBLISH_TIMEOUT_S = 3.0
AUDIT_KINDS = {
    TradingState.HALTED: "risk.halted",
    TradingState.REDUCING: "risk.reducing",
    TradingState.ACTIVE: "risk.resumed",
}


def view_of(row: RiskTradingState) -> TradingStateView:
    return TradingStateView(
        state=TradingState(row.state),
        reason=row.reason,
        changed_by=row.changed_by,
        changed_at=row.changed_at,
        flatten=row.flatten,
    )


async def persist_change(
    conn: asyncpg.Connection,
    target: TradingState,
    reason: str,
    actor: str,
    *,
    flatten: bool = False,
    auto: bool = False,
) -> tuple[TradingStateView, TradingState]:
    """Set the state in the caller's transaction, with history and audit; (new view, previous)."""
    previous = await repo.lock_state(conn)
    flatten = flatten and target is TradingState.HALTED
    changed_at = await repo.set_state(
        conn, previous, target, reason=reason, changed_by=actor, flatten=flatten
    )
    event = AuditEventIn(
        kind=AUDIT_KINDS[target],
        actor=actor,
        subject="trading-state",
        data={
            "previous_state": previous.value,
            "state": target.value,
            "reason": reason,
            "flatten": flatten,
            "automatic": auto,
        },
    )
    await repo.enqueue_audit_on(conn, [event])
    view = TradingStateView(
        state=target, reason=reason, changed_by=actor, changed_at=changed_at, flatten=flatten
    )
    return view, previous


async def broadcast(events: EventBus | None, view: TradingStateView) -> BroadcastOutcome:
    """Publish the state on Redis; report, never raise."""
    if events is None:
        return BroadcastOutcome(published=False, detail="no Redis connection")
    try:
        receivers = await asyncio.wait_for(
            events.publish(TRADING_STATE_CHANNEL, view.model_dump(mode="json")), PUBLISH_TIMEOUT_S
        )
    except Exception as exc:  # Redis down or slow: the state is already durable
        detail = f"not published: {exc.__class__.__name__}: {str(exc)[:160]}"
        log.warning("trading state broadcast failed", extra={"reason": detail})
        return BroadcastOutcome(published=False, detail=detail)
    return BroadcastOutcome(
        published=True, receivers=receivers, detail=f"published to {receivers} subscriber(s)"
    )


async def apply_to_execution(agents: Agents | None, view: TradingStateView) -> ExecutionOutcome:
    """Ask execution to act on the state (cancel, flatten); report, never raise."""
    if agents is None:
        return ExecutionOutcome(applied=False, detail="agent clients are not ready")
    body = ApplyTradingState(state=view.state, reason=view.reason, flatten=view.flatten)
    try:
        answer = await agents.execution.post(
            EXECUTION_APPLY_PATH, json=body.model_dump(mode="json"), timeout=EXECUTION_TIMEOUT_S
        )
        result = ApplyTradingStateResult.model_validate(answer)
    except VolexError as exc:
        log.warning("execution did not apply the trading state", extra={"reason": exc.message})
        return ExecutionOutcome(applied=False, detail=exc.message)
    except ValidationError as exc:
        detail = f"execution answered {EXECUTION_APPLY_PATH} with an unexpected body: {exc}"
        return ExecutionOutcome(applied=False, detail=detail[:500])
    detail = (
        f"cancelled {result.cancelled_orders} order(s), closed {result.closed_positions} "
        f"position(s), {len(result.errors)} error(s)"
    )
    return ExecutionOutcome(applied=True, detail=detail, result=result)


async def propagate(kit: Kit, view: TradingStateView) -> tuple[BroadcastOutcome, ExecutionOutcome]:
    """Broadcast and apply a state that is already persisted (also run after an automatic halt)."""
    sent = await broadcast(kit.events, view)
    applied = await apply_to_execution(kit.agents, view)
    log.info(
        "trading state propagated",
        extra={"state": view.state.value, "broadcast": sent.detail, "execution": applied.detail},
    )
    return sent, applied


async def change_state(
    kit: Kit, target: TradingState, reason: str, actor: str, *, flatten: bool = False
) -> StateChange:
    """Persist, broadcast, apply. Repeating a state is allowed: it updates the reason."""
    if kit.loop_db is None:
        raise ServiceUnavailable("risk has no database configured")
    try:
        async with kit.loop_db.transaction() as conn:
            view, previous = await persist_change(conn, target, reason, actor, flatten=flatten)
    except VolexError as exc:  # a database error as the transaction maps it (none other here)
        raise await _unpersisted(kit, target, reason, actor, flatten, exc) from exc
    sent, applied = await propagate(kit, view)
    return StateChange(state=view, previous_state=previous, broadcast=sent, execution=applied)


async def _unpersisted(
    kit: Kit, target: TradingState, reason: str, actor: str, flatten: bool, exc: Exception
) -> ServiceUnavailable:
    """The database is down. A halt or reduce still reaches execution (stopping must not wait
    for the database); resuming does not. Either way the caller gets a 503 and must retry."""
    cause = f"database unavailable ({(exc.__cause__ or exc).__class__.__name__})"
    if target is TradingState.ACTIVE:
        return ServiceUnavailable(f"{target.value} not recorded: {cause}; nothing was changed")
    view = TradingStateView(
        state=target,
        reason=reason,
        changed_by=actor,
        changed_at=datetime.now(UTC),
        flatten=flatten and target is TradingState.HALTED,
    )
    sent, applied = await propagate(kit, view)
    return ServiceUnavailable(
        f"{target.value} NOT recorded: {cause}. It was still broadcast ({sent.detail}) and sent "
        f"to execution ({applied.detail}), but GET /state does not show it: retry once the "
        "database is back"
    )
