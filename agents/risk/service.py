"""Risk's logic around the pure rules: limits, pre-trade decisions, snapshots, analytics.

Everything here runs inside the request's session (SessionDep commits it before the
response). A pre-trade check or a snapshot that finds the drawdown limit breached
halts trading in that same transaction and returns the new state, which the
endpoint broadcasts and sends to execution once the response has gone out:
execution is usually the caller, waiting for our answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

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
    CheckDecision,
    CheckResult,
    PortfolioView,
    PreTradeOrder,
    PreTradeRequest,
    TradingState,
)
from common.contracts import TradingStateView as StateView
from common.errors import Conflict, Forbidden, NotFound, Unprocessable
from common.models.risk import RiskEquitySnapshot
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


def _record_equity(session: Session, portfolio: PortfolioView) -> tuple[Decimal, datetime]:
    """Remember the portfolio's equity against its account's peak (or the single peak of a
    caller that names no account); the peak before and the database's clock."""
    if portfolio.account is None:
        return repo.record_equity(session, portfolio.equity)
    return repo.record_account_equity(session, portfolio.account, portfolio.equity)


def _halt_on_drawdown(
    session: Session,
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
    view, _ = kill_switch.persist_change(session, TradingState.HALTED, reason, actor, auto=True)
    return view


# --- limits --------------------------------------------------------------------------------
def current_limits(session: Session) -> LimitsView:
    row = repo.load_limits(session)
    if row is None:
        return LimitsView()
    return LimitsView.model_validate(row, from_attributes=True)


def _limits_only(view: LimitsView) -> Limits:
    return Limits.model_validate(view.model_dump(include=set(Limits.model_fields)))


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


def pre_trade(session: Session, req: PreTradeRequest, actor: str, service: str) -> CheckOutcome:
    """Decide on one order: a batch of one."""
    return pre_trade_batch(session, req.portfolio, [req], actor, service)


def pre_trade_batch(
    session: Session,
    portfolio: PortfolioView,
    orders: Sequence[PreTradeOrder],
    actor: str,
    service: str,
) -> CheckOutcome:
    """Decide on `orders` in turn and store each decision; HALTs first if the drawdown is
    breached. Each order is judged with those approved before it counted as our resting
    orders: approved together, they cannot pass a limit that each passes alone."""
    state_row = repo.lock_state(session)  # one check at a time; a halt waits for it
    limits = _limits_only(current_limits(session))
    # The clock is read after the lock is held (in the same statement as the equity).
    peak_before, now = _record_equity(session, portfolio)
    state = TradingState(state_row.state)
    halted = _halt_on_drawdown(session, portfolio, peak_before, limits, state, service)
    if halted is not None:
        state = halted.state
    # The rate rule's count, read once: other orders approved in the window, and those of
    # this batch approved there before (a re-check), then the batch's own approvals.
    others, approved_ids = repo.approved_since(
        session, now, rules.RATE_WINDOW_S, [o.client_order_id for o in orders]
    )
    decisions = []
    for order in orders:
        req = book.request(order, portfolio)
        context = rules.CheckContext(
            state=state,
            peak_equity=peak_before,
            # Only look-alikes for the duplicate rule (it sees the batch's earlier orders:
            # their decisions are stored by then).
            recent_approved=repo.recent_approved(session, now, limits.duplicate_window_s, like=req)
            if limits.duplicate_window_s
            else [],
            approved_last_minute=others + len(approved_ids - {req.client_order_id}),
        )
        results = rules.evaluate(req, limits, context)
        approved = all(result.passed for result in results)
        repo.insert_check(
            session,
            req,
            checked_at=now,
            approved=approved,
            state=state.value,
            checks=results,
            requested_by=actor,
        )
        repo.enqueue_audit(
            session,
            "risk.checked",
            actor,
            req.client_order_id,
            _check_audit(req, approved, state, results),
        )
        decisions.append(CheckDecision(approved=approved, checks=results, state=state))
        if approved:
            portfolio = book.with_resting(portfolio, req)
            approved_ids.add(req.client_order_id)
    return CheckOutcome(decisions, halted)


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
def _peak_of(session: Session, account: str | None, unseen: Decimal) -> Decimal:
    """The account's peak (the single peak for no account); `unseen` for a new account."""
    if account is None:
        return repo.get_peak(session).peak_equity
    row = repo.account_peak(session, account)
    return row.peak_equity if row is not None else unseen


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


def record_snapshot(
    session: Session, snapshot: SnapshotIn, service: str
) -> tuple[SnapshotOut, StateView | None]:
    """Store a snapshot. A current one (not older than the newest stored) also feeds the
    drawdown breaker; a backfilled one is history only."""
    state_row = repo.lock_state(session)
    latest = repo.latest_snapshot(session)
    now = repo.db_now(session)
    taken_at = snapshot.taken_at or now
    if taken_at > now + MAX_CLOCK_SKEW:
        # A future snapshot would make every real one look like backfill to the breaker.
        raise Unprocessable(
            f"taken_at {taken_at.isoformat()} is in the future (now {now.isoformat()})"
        )
    positions = [p.model_dump(mode="json") for p in snapshot.positions]
    gross, net = analytics.gross_and_net(positions)
    repo.insert_snapshot(
        session,
        RiskEquitySnapshot(
            taken_at=taken_at,
            equity=snapshot.equity,
            cash=snapshot.cash,
            realized_pnl_today=snapshot.realized_pnl_today,
            gross_exposure=gross,
            net_exposure=net,
            positions=positions,
        ),
    )
    state, halted = TradingState(state_row.state), None
    if latest is None or taken_at >= latest.taken_at:
        limits = _limits_only(current_limits(session))
        peak_before, _ = _record_equity(session, snapshot)
        halted = _halt_on_drawdown(session, snapshot, peak_before, limits, state, service)
        state = halted.state if halted is not None else state
    peak = _peak_of(session, snapshot.account, snapshot.equity)
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
