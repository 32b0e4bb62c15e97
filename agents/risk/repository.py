"""All of risk's SQL. Functions take the caller's session, or on the loop path its
connection, and never commit.

The loop path (the last section) is what runs under the trading-state lock: pre-trade
checks, snapshots that feed the drawdown breaker, state changes. It runs on the event
loop (asyncpg), a few statements per check: through the ORM in a worker thread a
one-order check took ~8 ms server-side (p50), ~1.5 ms of it PostgreSQL's; here ~3 ms.
The rest (reads, limits, peak re-bases) is the ORM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from agents.risk.rules import RecentOrder
from common import outbox
from common.contracts import (
    AuditEventIn,
    CheckResult,
    PreTradeOrder,
    PreTradeRequest,
    TradingState,
)
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
def get_state(session: Session) -> RiskTradingState:
    return session.execute(
        select(RiskTradingState).where(RiskTradingState.id == SINGLETON)
    ).scalar_one()


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


def account_peaks(session: Session) -> Sequence[RiskAccountPeak]:
    return (
        session.execute(select(RiskAccountPeak).order_by(RiskAccountPeak.account)).scalars().all()
    )


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


# --- the loop path (asyncpg): what runs under the trading-state lock ---------------------------
# The lock is a statement of its own. A statement reads the database as it was when the
# statement began, so whatever one that waited for the lock read besides would miss what
# the check before it wrote (its approvals, the peak it raised).
_LOCK_STATE = "SELECT state FROM risk_trading_state WHERE id = 1 FOR UPDATE"


async def lock_state(conn: asyncpg.Connection) -> TradingState:
    """The current state, locked until commit: checks and state changes go one at a time."""
    return TradingState(await conn.fetchval(_LOCK_STATE))


_SET_STATE = """
    WITH clock AS (SELECT clock_timestamp() AS at),
         history AS (
             INSERT INTO risk_trading_state_history
                 (changed_at, previous_state, state, reason, changed_by, flatten)
             SELECT clock.at, $1, $2, $3, $4, $5 FROM clock
         )
    UPDATE risk_trading_state SET
        state = $2, reason = $3, changed_by = $4, changed_at = clock.at, flatten = $5
    FROM clock WHERE id = 1
    RETURNING clock.at
"""


async def set_state(
    conn: asyncpg.Connection,
    previous: TradingState,
    state: TradingState,
    *,
    reason: str,
    changed_by: str,
    flatten: bool,
) -> datetime:
    """Set the state the caller has locked and add its history row; when (the database's
    clock)."""
    return await conn.fetchval(_SET_STATE, previous.value, state.value, reason, changed_by, flatten)


@dataclass(frozen=True)
class EquitySeen:
    """What `record_equity` read in the statement that recorded the equity."""

    peak_before: Decimal  # the peak before this equity (a new account's: this equity)
    now: datetime  # the database's clock, read under the state lock
    limits: dict[str, Any] | None  # the risk_limits row; None until the first PUT /limits


# Every check needs the limits too: they come in the same statement (l.*, all NULL while
# there is no limits row).
_RECORD_EQUITY = """
    WITH before AS (SELECT peak_equity FROM risk_equity_peak WHERE id = 1 FOR UPDATE),
         clock AS (SELECT clock_timestamp() AS at),
         up AS (
             UPDATE risk_equity_peak AS p SET
                 peak_equity = GREATEST(p.peak_equity, $1),
                 peak_at = CASE WHEN $1 > p.peak_equity THEN clock.at ELSE p.peak_at END,
                 last_equity = $1,
                 updated_at = clock.at
             FROM before, clock WHERE p.id = 1
             RETURNING before.peak_equity AS peak_before, clock.at AS now
         )
    SELECT up.peak_before, up.now, l.* FROM up LEFT JOIN risk_limits AS l ON l.id = 1
"""
_RECORD_ACCOUNT_EQUITY = """
    WITH before AS (
             SELECT peak_equity FROM risk_account_peaks WHERE account = $1 FOR UPDATE
         ),
         clock AS (SELECT clock_timestamp() AS at),
         up AS (
             INSERT INTO risk_account_peaks AS p
                 (account, peak_equity, peak_at, last_equity, updated_at)
             SELECT $1, $2, clock.at, $2, clock.at FROM clock
             ON CONFLICT (account) DO UPDATE SET
                 peak_equity = GREATEST(p.peak_equity, EXCLUDED.last_equity),
                 peak_at = CASE WHEN EXCLUDED.last_equity > p.peak_equity
                                THEN EXCLUDED.updated_at ELSE p.peak_at END,
                 last_equity = EXCLUDED.last_equity,
                 updated_at = EXCLUDED.updated_at
         )
    SELECT coalesce((SELECT peak_equity FROM before), $2) AS peak_before, clock.at AS now, l.*
    FROM clock LEFT JOIN risk_limits AS l ON l.id = 1
"""
_NOT_LIMITS = frozenset({"peak_before", "now"})


async def record_equity(
    conn: asyncpg.Connection, account: str | None, equity: Decimal
) -> EquitySeen:
    """Remember `equity` as the account's last seen and raise its peak to it (an account
    seen for the first time starts at its equity; no account: the single peak of a caller
    that trades one book), and read the limits and the clock: one statement."""
    if account is None:
        row = await conn.fetchrow(_RECORD_EQUITY, equity)
        assert row is not None, "risk_equity_peak is seeded by the risk_0001 migration"
    else:
        row = await conn.fetchrow(_RECORD_ACCOUNT_EQUITY, account, equity)
    limits = None
    if row["id"] is not None:
        limits = {name: value for name, value in row.items() if name not in _NOT_LIMITS}
    return EquitySeen(peak_before=row["peak_before"], now=row["now"], limits=limits)


async def peak_of(conn: asyncpg.Connection, account: str | None) -> Decimal | None:
    """The account's peak (the single peak for no account); None for an account never seen."""
    if account is None:
        return await conn.fetchval("SELECT peak_equity FROM risk_equity_peak WHERE id = 1")
    return await conn.fetchval(
        "SELECT peak_equity FROM risk_account_peaks WHERE account = $1", account
    )


_APPROVED_SINCE = """
    SELECT count(DISTINCT client_order_id) FILTER (WHERE client_order_id <> ALL($2)),
           array_agg(DISTINCT client_order_id) FILTER (WHERE client_order_id = ANY($2))
    FROM risk_checks WHERE approved AND checked_at > $1
"""


async def approved_since(
    conn: asyncpg.Connection, now: datetime, seconds: int, among: Sequence[str]
) -> tuple[int, set[str]]:
    """Orders approved in the last `seconds`: how many others than `among`, and which of
    `among` were (counted in SQL, once for a whole batch of checks)."""
    others, seen = await conn.fetchrow(_APPROVED_SINCE, now - timedelta(seconds=seconds), among)
    return int(others), set(seen or ())


_LOOK_ALIKES = """
    SELECT client_order_id, exchange, symbol, side, amount, price, checked_at
    FROM risk_checks
    WHERE approved AND checked_at > $1 AND (exchange, symbol, side, amount) IN (
        SELECT * FROM unnest($2::varchar[], $3::varchar[], $4::varchar[], $5::numeric[])
    )
    ORDER BY id
"""


async def recent_approved(
    conn: asyncpg.Connection, now: datetime, seconds: int, like: Sequence[PreTradeOrder]
) -> list[RecentOrder]:
    """Approved decisions of the last `seconds` that look like one of `like` (same
    exchange, symbol, side and amount): all the duplicate rule can match, for a batch."""
    rows = await conn.fetch(
        _LOOK_ALIKES,
        now - timedelta(seconds=seconds),
        [o.exchange for o in like],
        [o.symbol for o in like],
        [o.side.value for o in like],
        [o.amount for o in like],
    )
    return [
        RecentOrder(
            client_order_id=row["client_order_id"],
            exchange=row["exchange"],
            symbol=row["symbol"],
            side=row["side"],
            amount=row["amount"],
            price=row["price"],
            age_s=max(0.0, (now - row["checked_at"]).total_seconds()),
        )
        for row in rows
    ]


_INSERT_CHECK = """
    INSERT INTO risk_checks (checked_at, client_order_id, exchange, symbol, side, type,
                             amount, price, reduce_only, approved, state, checks, requested_by)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
"""


async def insert_checks(
    conn: asyncpg.Connection,
    decided: Sequence[tuple[PreTradeRequest, bool, list[CheckResult]]],
    *,
    checked_at: datetime,
    state: TradingState,
    requested_by: str,
) -> None:
    """Store a batch's decisions, (request, approved, every rule's result) each, in order."""
    await conn.executemany(
        _INSERT_CHECK,
        [
            (
                checked_at,
                req.client_order_id,
                req.exchange,
                req.symbol,
                req.side.value,
                req.type.value,
                req.amount,
                req.price,
                req.reduce_only,
                approved,
                state.value,
                [c.model_dump(mode="json") for c in checks],
                requested_by,
            )
            for req, approved, checks in decided
        ],
    )


_LATEST_SNAPSHOT = (
    "SELECT max(taken_at) AS latest, clock_timestamp() AS now FROM risk_equity_snapshots"
)


async def latest_snapshot_at(conn: asyncpg.Connection) -> tuple[datetime | None, datetime]:
    """When the newest stored snapshot was taken (None: none yet), and the database's clock."""
    row = await conn.fetchrow(_LATEST_SNAPSHOT)
    return row["latest"], row["now"]


_INSERT_SNAPSHOT = """
    INSERT INTO risk_equity_snapshots
        (taken_at, equity, cash, realized_pnl_today, gross_exposure, net_exposure, positions)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


async def insert_snapshot(
    conn: asyncpg.Connection,
    *,
    taken_at: datetime,
    equity: Decimal,
    cash: Decimal,
    realized_pnl_today: Decimal,
    gross_exposure: Decimal,
    net_exposure: Decimal,
    positions: list[dict[str, Any]],
) -> None:
    await conn.execute(
        _INSERT_SNAPSHOT,
        taken_at,
        equity,
        cash,
        realized_pnl_today,
        gross_exposure,
        net_exposure,
        positions,
    )


async def enqueue_audit_on(conn: asyncpg.Connection, events: Sequence[AuditEventIn]) -> None:
    """`enqueue_audit` for the loop path: the events are queued in the given order."""
    await outbox.record_on(conn, "risk", events)
