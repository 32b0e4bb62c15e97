"""All of risk's SQL. Functions take the caller's session and never commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from agents.risk.rules import RecentOrder
from common import outbox
from common.contracts import AuditEventIn, CheckResult, PreTradeRequest
from common.models.risk import (
    RiskAccountPeak,
    RiskCheck,
    RiskEquityPeak,
    RiskEquitySnapshot,
    RiskLimits,
    RiskTradingState,
    RiskTradingStateChange,
)

SINGLETON = 1


def db_now(session: Session) -> datetime:
    """The database's clock, so every time risk compares comes from one source."""
    now: datetime = session.execute(select(func.clock_timestamp())).scalar_one()
    return now


# --- trading state -----------------------------------------------------------------------
def lock_state(session: Session) -> RiskTradingState:
    """The current state, locked until commit: checks and state changes go one at a time."""
    query = select(RiskTradingState).where(RiskTradingState.id == SINGLETON).with_for_update()
    return session.execute(query).scalar_one()


def get_state(session: Session) -> RiskTradingState:
    return session.execute(
        select(RiskTradingState).where(RiskTradingState.id == SINGLETON)
    ).scalar_one()


def set_state(
    session: Session,
    row: RiskTradingState,
    *,
    state: str,
    reason: str,
    changed_by: str,
    flatten: bool,
) -> RiskTradingStateChange:
    now = db_now(session)
    change = RiskTradingStateChange(
        changed_at=now,
        previous_state=row.state,
        state=state,
        reason=reason,
        changed_by=changed_by,
        flatten=flatten,
    )
    row.state, row.reason, row.changed_by = state, reason, changed_by
    row.changed_at, row.flatten = now, flatten
    session.add(change)
    session.flush()
    return change


def state_history(session: Session, limit: int) -> Sequence[RiskTradingStateChange]:
    query = select(RiskTradingStateChange).order_by(RiskTradingStateChange.id.desc()).limit(limit)
    return session.execute(query).scalars().all()


# --- limits --------------------------------------------------------------------------------
def load_limits(session: Session) -> RiskLimits | None:
    return session.get(RiskLimits, SINGLETON)


def save_limits(session: Session, values: dict[str, Any], updated_by: str) -> RiskLimits:
    now = db_now(session)  # before adding a row: the query would flush it half-filled
    row = session.get(RiskLimits, SINGLETON, with_for_update=True)
    if row is None:
        row = RiskLimits(id=SINGLETON)
        session.add(row)
    for name, value in values.items():
        setattr(row, name, value)
    row.updated_by, row.updated_at = updated_by, now
    session.flush()
    return row


# --- equity peak ---------------------------------------------------------------------------
def get_peak(session: Session) -> RiskEquityPeak:
    return session.execute(
        select(RiskEquityPeak).where(RiskEquityPeak.id == SINGLETON)
    ).scalar_one()


_RECORD_EQUITY = text(
    """
    WITH before AS (SELECT peak_equity FROM risk_equity_peak WHERE id = :id FOR UPDATE),
         clock AS (SELECT clock_timestamp() AS at)
    UPDATE risk_equity_peak AS p SET
        peak_equity = GREATEST(p.peak_equity, :equity),
        peak_at = CASE WHEN :equity > p.peak_equity THEN clock.at ELSE p.peak_at END,
        last_equity = :equity,
        updated_at = clock.at
    FROM before, clock WHERE p.id = :id
    RETURNING before.peak_equity, clock.at
    """
)


def record_equity(session: Session, equity: Decimal) -> tuple[Decimal, datetime]:
    """Remember `equity` as the last seen and raise the peak to it; returns the peak before
    and the database's clock. One statement: this runs inside every pre-trade check."""
    row = session.execute(_RECORD_EQUITY, {"id": SINGLETON, "equity": equity}).one_or_none()
    assert row is not None, "risk_equity_peak is seeded by the risk_0001 migration"
    return Decimal(row[0]), row[1]


_RECORD_ACCOUNT_EQUITY = text(
    """
    WITH before AS (
             SELECT peak_equity FROM risk_account_peaks WHERE account = :account FOR UPDATE
         ),
         clock AS (SELECT clock_timestamp() AS at),
         up AS (
             INSERT INTO risk_account_peaks AS p
                 (account, peak_equity, peak_at, last_equity, updated_at)
             SELECT :account, :equity, clock.at, :equity, clock.at FROM clock
             ON CONFLICT (account) DO UPDATE SET
                 peak_equity = GREATEST(p.peak_equity, EXCLUDED.last_equity),
                 peak_at = CASE WHEN EXCLUDED.last_equity > p.peak_equity
                                THEN EXCLUDED.updated_at ELSE p.peak_at END,
                 last_equity = EXCLUDED.last_equity,
                 updated_at = EXCLUDED.updated_at
             RETURNING 1
         )
    SELECT coalesce((SELECT peak_equity FROM before), :equity), (SELECT at FROM clock),
           (SELECT count(*) FROM up)
    """
)


def record_account_equity(
    session: Session, account: str, equity: Decimal
) -> tuple[Decimal, datetime]:
    """`record_equity` for one account's own peak (an account seen for the first time
    starts at its equity); one statement."""
    row = session.execute(_RECORD_ACCOUNT_EQUITY, {"account": account, "equity": equity}).one()
    return Decimal(row[0]), row[1]


def account_peaks(session: Session) -> Sequence[RiskAccountPeak]:
    return (
        session.execute(select(RiskAccountPeak).order_by(RiskAccountPeak.account)).scalars().all()
    )


def account_peak(session: Session, account: str) -> RiskAccountPeak | None:
    return session.get(RiskAccountPeak, account)


def reset_account_peak(
    session: Session, account: str, peak: Decimal | None
) -> tuple[Decimal, Decimal] | None:
    """Set `account`'s peak to `peak` (default: its last equity); (old, new), or None for an
    account never seen."""
    row = session.get(RiskAccountPeak, account, with_for_update=True)
    if row is None:
        return None
    old, new = row.peak_equity, peak if peak is not None else row.last_equity
    now = db_now(session)
    row.peak_equity, row.peak_at, row.updated_at = new, now, now
    return old, new


def reset_peak(session: Session, peak: Decimal) -> tuple[Decimal, Decimal]:
    """Set the peak to `peak`; returns (old peak, new peak)."""
    row = session.get(RiskEquityPeak, SINGLETON, with_for_update=True)
    assert row is not None, "risk_equity_peak is seeded by the risk_0001 migration"
    old = row.peak_equity
    now = db_now(session)
    row.peak_equity, row.peak_at, row.updated_at = peak, now, now
    return old, peak


# --- check decisions -----------------------------------------------------------------------
def approved_since(
    session: Session, now: datetime, seconds: int, among: Sequence[str]
) -> tuple[int, set[str]]:
    """Orders approved in the last `seconds`: how many others than `among`, and which of
    `among` were (counted in SQL, once for a whole batch of checks)."""
    recent = (
        RiskCheck.approved.is_(True),
        RiskCheck.checked_at > now - timedelta(seconds=seconds),
    )
    cid = RiskCheck.client_order_id
    others, seen = session.execute(
        select(
            func.count(func.distinct(cid)).filter(cid.not_in(among)),
            func.array_agg(func.distinct(cid)).filter(cid.in_(among)),
        ).where(*recent)
    ).one()
    return int(others), set(seen or ())


def recent_approved(
    session: Session, now: datetime, seconds: int, like: PreTradeRequest | None = None
) -> list[RecentOrder]:
    """Approved decisions of the last `seconds`; with `like`, only look-alikes of it."""
    query = select(RiskCheck).where(
        RiskCheck.approved.is_(True), RiskCheck.checked_at > now - timedelta(seconds=seconds)
    )
    if like is not None:
        query = query.where(
            RiskCheck.exchange == like.exchange,
            RiskCheck.symbol == like.symbol,
            RiskCheck.side == like.side.value,
            RiskCheck.amount == like.amount,
        )
    return [
        RecentOrder(
            client_order_id=row.client_order_id,
            exchange=row.exchange,
            symbol=row.symbol,
            side=row.side,
            amount=row.amount,
            price=row.price,
            age_s=max(0.0, (now - row.checked_at).total_seconds()),
        )
        for row in session.execute(query).scalars()
    ]


def insert_check(
    session: Session,
    req: PreTradeRequest,
    *,
    checked_at: datetime,
    approved: bool,
    state: str,
    checks: list[CheckResult],
    requested_by: str,
) -> None:
    session.add(
        RiskCheck(
            checked_at=checked_at,
            client_order_id=req.client_order_id,
            exchange=req.exchange,
            symbol=req.symbol,
            side=req.side.value,
            type=req.type.value,
            amount=req.amount,
            price=req.price,
            reduce_only=req.reduce_only,
            approved=approved,
            state=state,
            checks=[c.model_dump() for c in checks],
            requested_by=requested_by,
        )
    )


def checks_for(session: Session, client_order_id: str) -> Sequence[RiskCheck]:
    query = (
        select(RiskCheck)
        .where(RiskCheck.client_order_id == client_order_id)
        .order_by(RiskCheck.id.desc())
        .limit(100)
    )
    return session.execute(query).scalars().all()


# --- equity snapshots ----------------------------------------------------------------------
def latest_snapshot(session: Session) -> RiskEquitySnapshot | None:
    query = select(RiskEquitySnapshot).order_by(RiskEquitySnapshot.taken_at.desc()).limit(1)
    return session.execute(query).scalars().first()


def insert_snapshot(session: Session, snapshot: RiskEquitySnapshot) -> None:
    session.add(snapshot)
    session.flush()


@dataclass(frozen=True)
class EquityPoint:
    taken_at: datetime
    equity: Decimal


def equity_series(
    session: Session, since: datetime | None, until: datetime | None, limit: int
) -> list[EquityPoint]:
    """The newest `limit` equity values in [since, until], oldest first."""
    query = select(RiskEquitySnapshot.taken_at, RiskEquitySnapshot.equity)
    if since is not None:
        query = query.where(RiskEquitySnapshot.taken_at >= since)
    if until is not None:
        query = query.where(RiskEquitySnapshot.taken_at <= until)
    query = query.order_by(RiskEquitySnapshot.taken_at.desc()).limit(limit)
    points = [EquityPoint(taken_at, equity) for taken_at, equity in session.execute(query)]
    points.reverse()
    return points


# --- audit events ---------------------------------------------------------------------------
def enqueue_audit(
    session: Session, kind: str, actor: str, subject: str | None, data: dict[str, Any]
) -> None:
    """Queue an audit event in the transaction of the change it describes (the kit's
    outbox: its relay delivers it to compliance)."""
    outbox.record(session, "risk", AuditEventIn(kind=kind, actor=actor, subject=subject, data=data))
