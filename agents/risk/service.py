"""Risk's logic around the pure rules: limits, pre-trade decisions, snapshots, analytics.

Everything here runs inside the request's transaction, which the endpoint commits
before the response: a session (SessionDep, in_transaction) or, for what takes the
trading-state lock (pre-trade checks, snapshots), a connection on the event loop
(`kit.loop_db`). A check or a snapshot that finds the drawdown limit breached halts
trading in that same transaction and returns the new state, which the endpoint
broadcasts and sends to execution once the response has gone out: execution is
usually the caller, waiting for our answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy.orm import Session

from agents.risk import analytics, book, kill_switch, rules, sizing
from agents.risk import repository as repo
from agents.risk.schemas import (
    AccountDrawdown,
    Drawdown,
    Exposure,
    Limits,
    LimitsView,
    PeakResetRequest,
    PositionSize,
    SizingRequest,
    SnapshotIn,
    SnapshotOut,
    StateHistoryEntry,
    StoredCheck,
    ValueAtRisk,
    VarMethod,
)
from common.auth import Caller
from common.contracts import (
    AuditEventIn,
    CheckDecision,
    CheckResult,
    PortfolioView,
    PreTradeOrder,
    PreTradeRequest,
    TradingState,
)
from common.contracts import TradingStateView as StateView
from common.errors import Conflict, Forbidden, NotFound, Unprocessable
from common.money import quantize

MAX_SERIES = 100_000
MAX_CLOCK_SKEW = timedelta(minutes=5)


def require_operator(caller: Caller, action: str) -> None:
    if caller.kind != "operator":
        raise Forbidden(f"only the operator may {action}; the {caller.name} service may not")


# --- trading state -------------------------------------------------------------------------
def current_state(session: Session) -> StateView:
    return kill_switch.view_of(repo.get_state(session))


def state_history(session: Session, limit: int) -> list[StateHistoryEntry]:
    return [
        StateHistoryEntry.model_validate(row, from_attributes=True)
        for row in repo.state_history(session, limit)
    ]


async def _halt_on_drawdown(
    conn: asyncpg.Connection,
    portfolio: PortfolioView,
    peak_before: Decimal,
    limits: Limits,
    state: TradingState,
    actor: str,
) -> StateView | None:
    """HALT (in this transaction) when equity is too far below the peak; the new state or None."""
    reason = rules.drawdown_breach(portfolio.equity, peak_before, limits)
    if reason is None or state is TradingState.HALTED:
        return None
    if portfolio.account is not None:
        reason = f"account {portfolio.account}: {reason}"
    view, _ = await kill_switch.persist_change(conn, TradingState.HALTED, reason, actor, auto=True)
    return view


# --- limits --------------------------------------------------------------------------------
def current_limits(session: Session) -> LimitsView:
    row = repo.load_limits(session)
    if row is None:
        return LimitsView()
    return LimitsView.model_validate(row, from_attributes=True)


def _limits_only(view: LimitsView) -> Limits:
    return Limits.model_validate(view.model_dump(include=set(Limits.model_fields)))


def _limits_in(row: Mapping[str, Any] | None) -> Limits:
    """`current_limits` for the loop path: the limits of a risk_limits row read with the
    equity (repo.record_equity), the defaults when there is none."""
    if row is None:
        return Limits()
    return Limits.model_validate({name: row[name] for name in Limits.model_fields})


def change_limits(session: Session, body: Limits, caller: Caller) -> LimitsView:
    """Replace the limits the body names; the others keep their values. Audited old and new."""
    require_operator(caller, "change risk limits")
    sent = body.model_fields_set
    if not sent:
        raise Unprocessable("send at least one limit to change (GET /limits lists them)")
    old = _limits_only(current_limits(session))
    new = old.model_copy(update={name: getattr(body, name) for name in sent})
    row = repo.save_limits(session, new.model_dump(), caller.name)
    changed = sorted(n for n in sent if getattr(old, n) != getattr(new, n))
    repo.enqueue_audit(
        session,
        "risk.limits_changed",
        caller.name,
        "limits",
        {
            "old": old.model_dump(mode="json"),
            "new": new.model_dump(mode="json"),
            "changed": changed,
        },
    )
    return LimitsView.model_validate(row, from_attributes=True)


# --- pre-trade checks ----------------------------------------------------------------------
@dataclass(frozen=True)
class CheckOutcome:
    decisions: list[CheckDecision]  # one per order, in order
    halted: StateView | None  # set when this check tripped the drawdown breaker


async def pre_trade(
    conn: asyncpg.Connection, req: PreTradeRequest, actor: str, service: str
) -> CheckOutcome:
    """Decide on one order: a batch of one."""
    return await pre_trade_batch(conn, req.portfolio, [req], actor, service)


async def pre_trade_batch(
    conn: asyncpg.Connection,
    portfolio: PortfolioView,
    orders: Sequence[PreTradeOrder],
    actor: str,
    service: str,
) -> CheckOutcome:
    """Decide on `orders` in turn and store each decision; HALTs first if the drawdown is
    breached. Each order is judged with those approved before it counted as our resting
    orders: approved together, they cannot pass a limit that each passes alone."""
    state = await repo.lock_state(conn)  # one check at a time; a halt waits for it
    # The limits and the clock are read after the lock is held (with the equity).
    seen = await repo.record_equity(conn, portfolio.account, portfolio.equity)
    limits, now = _limits_in(seen.limits), seen.now
    halted = await _halt_on_drawdown(conn, portfolio, seen.peak_before, limits, state, service)
    if halted is not None:
        state = halted.state
    # The rate rule's count, read once: other orders approved in the window, and those of
    # this batch approved there before (a re-check), then the batch's own approvals.
    others, approved_ids = await repo.approved_since(
        conn, now, rules.RATE_WINDOW_S, [o.client_order_id for o in orders]
    )
    # The duplicate rule's look-alikes, read once too; the batch's approvals join them.
    recent = (
        await repo.recent_approved(conn, now, limits.duplicate_window_s, like=orders)
        if limits.duplicate_window_s
        else []
    )
    decided: list[tuple[PreTradeRequest, bool, list[CheckResult]]] = []
    for order in orders:
        req = book.request(order, portfolio)
        context = rules.CheckContext(
            state=state,
            peak_equity=seen.peak_before,
            recent_approved=list(recent),
            approved_last_minute=others + len(approved_ids - {req.client_order_id}),
        )
        results = rules.evaluate(req, limits, context)
        approved = all(result.passed for result in results)
        decided.append((req, approved, results))
        if approved:
            portfolio = book.with_resting(portfolio, req)
            approved_ids.add(req.client_order_id)
            if limits.duplicate_window_s:
                recent.append(_just_approved(req))
    await repo.insert_checks(conn, decided, checked_at=now, state=state, requested_by=actor)
    await repo.enqueue_audit_on(
        conn,
        [
            AuditEventIn(
                kind="risk.checked",
                actor=actor,
                subject=req.client_order_id,
                data=_check_audit(req, approved, state, results),
            )
            for req, approved, results in decided
        ],
    )
    decisions = [CheckDecision(approved=a, checks=r, state=state) for _, a, r in decided]
    return CheckOutcome(decisions, halted)


def _just_approved(req: PreTradeRequest) -> rules.RecentOrder:
    """An order of this batch, approved, as the duplicate rule sees it for the next ones
    (as it would see its stored decision: checked now)."""
    return rules.RecentOrder(
        client_order_id=req.client_order_id,
        exchange=req.exchange,
        symbol=req.symbol,
        side=req.side.value,
        amount=req.amount,
        price=req.price,
        age_s=0.0,
    )


def _check_audit(
    req: PreTradeRequest, approved: bool, state: TradingState, results: list[CheckResult]
) -> dict[str, object]:
    return {
        "approved": approved,
        "state": state.value,
        "exchange": req.exchange,
        "symbol": req.symbol,
        "side": req.side.value,
        "type": req.type.value,
        "amount": str(req.amount),
        "price": str(req.price) if req.price is not None else None,
        "reduce_only": req.reduce_only,
        "equity": str(req.portfolio.equity),
        "rejections": [r.model_dump() for r in results if not r.passed],
    }


def stored_checks(session: Session, client_order_id: str) -> list[StoredCheck]:
    rows = repo.checks_for(session, client_order_id)
    if not rows:
        raise NotFound(f"no pre-trade check for client_order_id {client_order_id!r}")
    return [StoredCheck.model_validate(row, from_attributes=True) for row in rows]


# --- sizing --------------------------------------------------------------------------------
def position_size(session: Session, request: SizingRequest) -> PositionSize:
    return sizing.size(request, _limits_only(current_limits(session)))


# --- equity peak and snapshots -------------------------------------------------------------
def reset_peak(session: Session, body: PeakResetRequest, caller: Caller) -> Drawdown:
    require_operator(caller, "reset the equity peak")
    if body.account is not None:
        changed = repo.reset_account_peak(session, body.account, body.equity)
        if changed is None:
            raise NotFound(f"no equity seen for account {body.account!r}: nothing to re-base")
        repo.enqueue_audit(
            session,
            "risk.peak_reset",
            caller.name,
            f"equity-peak:{body.account}",
            {"old_peak": str(changed[0]), "new_peak": str(changed[1]), "reason": body.reason},
        )
        return drawdown(session, None, None)
    peak_row = repo.get_peak(session)
    new = body.equity if body.equity is not None else peak_row.last_equity
    if new is None:
        raise Conflict("no equity seen yet: give the new peak as `equity`")
    old, _ = repo.reset_peak(session, new)
    repo.enqueue_audit(
        session,
        "risk.peak_reset",
        caller.name,
        "equity-peak",
        {"old_peak": str(old), "new_peak": str(new), "reason": body.reason},
    )
    return drawdown(session, None, None)


async def record_snapshot(
    conn: asyncpg.Connection, snapshot: SnapshotIn, service: str
) -> tuple[SnapshotOut, StateView | None]:
    """Store a snapshot. A current one (not older than the newest stored) also feeds the
    drawdown breaker; a backfilled one is history only."""
    state = await repo.lock_state(conn)
    latest, now = await repo.latest_snapshot_at(conn)
    taken_at = snapshot.taken_at or now
    if taken_at > now + MAX_CLOCK_SKEW:
        # A future snapshot would make every real one look like backfill to the breaker.
        raise Unprocessable(
            f"taken_at {taken_at.isoformat()} is in the future (now {now.isoformat()})"
        )
    positions = [p.model_dump(mode="json") for p in snapshot.positions]
    gross, net = analytics.gross_and_net(positions)
    await repo.insert_snapshot(
        conn,
        taken_at=taken_at,
        equity=snapshot.equity,
        cash=snapshot.cash,
        realized_pnl_today=snapshot.realized_pnl_today,
        gross_exposure=gross,
        net_exposure=net,
        positions=positions,
    )
    halted = None
    if latest is None or taken_at >= latest:
        seen = await repo.record_equity(conn, snapshot.account, snapshot.equity)
        limits = _limits_in(seen.limits)
        halted = await _halt_on_drawdown(conn, snapshot, seen.peak_before, limits, state, service)
        state = halted.state if halted is not None else state
    # The account's peak (a new account's: this equity), raised to this equity if current.
    peak = await repo.peak_of(conn, snapshot.account)
    peak = peak if peak is not None else snapshot.equity
    _, fraction = book.drawdown(snapshot.equity, peak)
    out = SnapshotOut(
        taken_at=taken_at,
        equity=snapshot.equity,
        peak_equity=peak,
        drawdown_pct=quantize(fraction, 6),
        state=state,
    )
    return out, halted


# --- analytics -----------------------------------------------------------------------------
def exposure(session: Session) -> Exposure:
    row = repo.latest_snapshot(session)
    if row is None:
        raise NotFound(
            "no portfolio snapshot yet: execution posts them to POST /portfolio/snapshots"
        )
    gross, net = row.gross_exposure, row.net_exposure
    equity = row.equity
    return Exposure(
        taken_at=row.taken_at,
        equity=equity,
        gross=quantize(gross),
        net=quantize(net),
        gross_pct_of_equity=quantize(gross / equity, 6) if equity > 0 else None,
        net_pct_of_equity=quantize(net / equity, 6) if equity > 0 else None,
        positions=analytics.exposure_lines(row.positions, equity),
    )


def drawdown(session: Session, since: datetime | None, until: datetime | None) -> Drawdown:
    peak_row = repo.get_peak(session)
    limits = _limits_only(current_limits(session))
    last = peak_row.last_equity
    _, current = book.drawdown(last if last is not None else Decimal(0), peak_row.peak_equity)
    series = repo.equity_series(session, since, until, MAX_SERIES)
    stats = (
        analytics.drawdown_stats([p.taken_at for p in series], [float(p.equity) for p in series])
        if series
        else None
    )
    accounts = [
        AccountDrawdown(
            account=row.account,
            peak_equity=row.peak_equity,
            peak_at=row.peak_at,
            equity=row.last_equity,
            updated_at=row.updated_at,
            current_drawdown_pct=quantize(book.drawdown(row.last_equity, row.peak_equity)[1], 6),
        )
        for row in repo.account_peaks(session)
    ]
    return Drawdown(
        accounts=accounts,
        peak_equity=peak_row.peak_equity,
        equity=last,
        current_drawdown_pct=quantize(current, 6),
        max_drawdown_limit_pct=limits.max_drawdown_pct,
        snapshots=len(series),
        max_drawdown_pct=stats.max_drawdown if stats else None,
        max_drawdown_peak_at=stats.peak_at if stats else None,
        max_drawdown_trough_at=stats.trough_at if stats else None,
        max_drawdown_duration_s=stats.duration_s if stats else None,
        recovered=stats.recovered if stats else None,
    )


def value_at_risk(
    session: Session,
    *,
    method: VarMethod,
    confidence: float,
    horizon_days: float,
    since: datetime | None,
    until: datetime | None,
    simulations: int,
    seed: int | None,
) -> ValueAtRisk:
    series = repo.equity_series(session, since, until, MAX_SERIES)
    result = analytics.value_at_risk(
        [p.taken_at for p in series],
        [float(p.equity) for p in series],
        method=method,
        confidence=confidence,
        horizon_days=horizon_days,
        simulations=simulations,
        seed=seed,
    )
    equity = series[-1].equity
    return ValueAtRisk(
        method=method,
        confidence=confidence,
        horizon_days=horizon_days,
        returns=result.returns,
        interval_days=result.interval_days,
        var_pct=result.var,
        cvar_pct=result.cvar,
        equity=equity,
        var_amount=quantize(equity * Decimal(repr(result.var)), 2),
        cvar_amount=quantize(equity * Decimal(repr(result.cvar)), 2),
    )
