"""All SQL for compliance's tables: audit_events, audit_chain_head, audit_receipts,
compliance_policies, policy_decisions. Nothing here commits; the session dependency does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import Row, exists, func, insert, select, text, tuple_
from sqlalchemy.orm import Session

from common.models.compliance import (
    AUDIT_ID_SEQUENCE,
    AuditChainHead,
    AuditEvent,
    AuditReceipt,
    CompliancePolicy,
    PolicyDayCount,
    PolicyDayOrder,
    PolicyDecision,
)

# Transaction-scoped advisory locks (the migration lock is 7041990).
AUDIT_CHAIN_LOCK = 7041991  # one append at a time: the chain stays linear
POLICY_LOCK = 7041992  # one policy check or change at a time: daily counts stay exact

CHAIN_COLUMNS = (
    AuditEvent.id,
    AuditEvent.at,
    AuditEvent.kind,
    AuditEvent.actor,
    AuditEvent.on_behalf_of,
    AuditEvent.subject,
    AuditEvent.data,
    AuditEvent.prev_hash,
    AuditEvent.hash,
)


@dataclass(frozen=True)
class AuditFilter:
    kind: str | None = None
    actor: str | None = None
    subject: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def lock(session: Session, key: int) -> None:
    """Wait for the lock; it is released when the transaction ends."""
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def lock_at(session: Session, key: int) -> datetime:
    """`lock`, then the transaction's start time (`now()`), in one round trip."""
    value: datetime = session.execute(
        text("SELECT pg_advisory_xact_lock(:key), now()"), {"key": key}
    ).one()[1]
    return value


def now(session: Session) -> datetime:
    """The database's clock at the start of this transaction."""
    value: datetime = session.execute(select(func.now())).scalar_one()
    return value


# --- audit -----------------------------------------------------------------------------------


def chain_head(session: Session) -> AuditChainHead:
    head = session.get(AuditChainHead, 1, populate_existing=True)
    if head is None:
        raise RuntimeError("audit_chain_head has no row: run the compliance migration")
    return head


def lock_chain_and_next_ids(session: Session, count: int) -> tuple[list[int], datetime]:
    """Take the chain lock, then `count` ids and the time. The ids are drawn after the
    lock is held, so they follow the chain's order; the first with the lock and the clock
    in one round trip, any others in one more. (The chain head must be read by a later
    statement: these statements' snapshots predate the lock.)"""
    row = session.execute(
        select(
            func.pg_advisory_xact_lock(AUDIT_CHAIN_LOCK),
            AUDIT_ID_SEQUENCE.next_value(),
            func.clock_timestamp(),
        )
    ).one()
    first, at = int(row[1]), row[2]
    more: list[int] = []
    if count > 1:
        drawn = session.execute(
            select(AUDIT_ID_SEQUENCE.next_value()).select_from(func.generate_series(1, count - 1))
        ).scalars()
        more = sorted(int(i) for i in drawn)
    return [first, *more], at


def receipts(
    session: Session, keys: list[tuple[str, str | None]]
) -> dict[tuple[str, str], AuditEvent]:
    """The audit rows that (actor, event id) pairs became when first sent."""
    if not keys:
        return {}
    rows = session.execute(
        select(AuditReceipt.source, AuditReceipt.event_id, AuditEvent)
        .join(AuditEvent, AuditEvent.id == AuditReceipt.audit_id)
        .where(tuple_(AuditReceipt.source, AuditReceipt.event_id).in_(keys))
    ).all()
    return {(source, event_id): event for source, event_id, event in rows}


def add_receipts(session: Session, rows: list[tuple[str, str, int]]) -> None:
    """Remember which audit row each (actor, event id) became; after the rows are flushed."""
    session.flush()
    session.execute(
        insert(AuditReceipt),
        [{"source": s, "event_id": e, "audit_id": a} for s, e, a in rows],
    )


def append_audit_events(session: Session, events: list[AuditEvent], head: AuditChainHead) -> None:
    """Insert the rows (one multi-row INSERT) and move the head to the last of them."""
    session.add_all(events)
    head.last_id = events[-1].id
    head.last_hash = events[-1].hash
    session.flush()


def list_audit_events(
    session: Session,
    where: AuditFilter,
    *,
    order: Literal["asc", "desc"],
    cursor: int | None,
    offset: int,
    limit: int,
) -> list[AuditEvent]:
    query = select(AuditEvent)
    if where.kind is not None:
        query = query.where(AuditEvent.kind == where.kind)
    if where.actor is not None:
        query = query.where(AuditEvent.actor == where.actor)
    if where.subject is not None:
        query = query.where(AuditEvent.subject == where.subject)
    if where.since is not None:
        query = query.where(AuditEvent.at >= where.since)
    if where.until is not None:
        query = query.where(AuditEvent.at < where.until)
    if cursor is not None:
        query = query.where(AuditEvent.id < cursor if order == "desc" else AuditEvent.id > cursor)
    ordering = AuditEvent.id.desc() if order == "desc" else AuditEvent.id.asc()
    query = query.order_by(ordering).offset(offset).limit(limit)
    return list(session.scalars(query))


def use_snapshot(session: Session) -> None:
    """Read everything that follows from one snapshot (call first in the transaction)."""
    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def chain_rows(session: Session, batch: int = 1000) -> Iterator[Row[Any]]:
    """Every audit row in id order, streamed from a server-side cursor."""
    query = select(*CHAIN_COLUMNS).order_by(AuditEvent.id).execution_options(yield_per=batch)
    yield from session.execute(query)


def events_of_kind(session: Session, kind: str) -> list[Row[Any]]:
    query = select(AuditEvent.id, AuditEvent.data).where(AuditEvent.kind == kind)
    return list(session.execute(query.order_by(AuditEvent.id)))


# --- policies --------------------------------------------------------------------------------


def get_policy(session: Session) -> CompliancePolicy:
    policy = session.get(CompliancePolicy, 1, populate_existing=True)
    if policy is None:
        raise RuntimeError("compliance_policies has no row: run the compliance migration")
    return policy


def save_policy(
    session: Session, policy: CompliancePolicy, values: dict[str, Any], by: str
) -> None:
    for name, value in values.items():
        setattr(policy, name, value)
    policy.version += 1
    policy.updated_by = by
    policy.updated_at = now(session)
    session.flush()


def approved_today(session: Session, day: date, client_order_id: str) -> tuple[int, bool]:
    """Distinct orders approved on `day`, and whether `client_order_id` is one of them."""
    count = select(PolicyDayCount.approved).where(PolicyDayCount.day == day).scalar_subquery()
    counted = exists().where(
        PolicyDayOrder.day == day, PolicyDayOrder.client_order_id == client_order_id
    )
    approved, seen = session.execute(select(func.coalesce(count, 0), counted)).one()
    return int(approved), bool(seen)


COUNT_APPROVAL = text(
    "WITH first AS ("
    " INSERT INTO policy_day_orders (day, client_order_id) VALUES (:day, :client_order_id)"
    " ON CONFLICT DO NOTHING RETURNING day)"
    " INSERT INTO policy_day_counts (day, approved) SELECT day, 1 FROM first"
    " ON CONFLICT (day) DO UPDATE SET approved = policy_day_counts.approved + 1"
)


def count_approval(session: Session, day: date, client_order_id: str) -> None:
    """Count an approved order on `day`, once however often it is approved (one statement;
    the caller holds the policy lock)."""
    session.execute(COUNT_APPROVAL, {"day": day, "client_order_id": client_order_id})


def add_decision(session: Session, decision: PolicyDecision) -> None:
    session.add(decision)
    session.flush()
