"""All SQL for compliance's tables: audit_events, audit_chain_head, audit_receipts,
compliance_policies, policy_decisions. Nothing here commits.

Writes (appends, policy checks and changes) are asyncpg statements on a connection inside
`LoopDatabase.transaction()`, which commits when its block ends. They run on the event loop:
through the ORM in a worker thread they were ~70% of compliance's busy time (~4-5 ms of CPU
for a one-order check, ~1.9 ms now, where PostgreSQL spends ~1 ms). Reads (GET /audit,
/audit/verify, reports, GET /policies) go through the ORM session.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

import asyncpg
from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from agents.compliance.schemas import AuditEventOut
from common.contracts import CheckDecision, PolicyRequest
from common.models.compliance import AuditChainHead, AuditEvent, CompliancePolicy

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
EVENT_FIELDS = tuple(column.key for column in CHAIN_COLUMNS)
POLICY_FIELDS = ("restricted_symbols", "allowed_exchanges", "trading_windows", "max_orders_per_day")


@dataclass(frozen=True)
class AuditFilter:
    kind: str | None = None
    actor: str | None = None
    subject: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def lock(conn: asyncpg.Connection, key: int) -> None:
    """Wait for the lock; it is released when the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", key)


async def lock_at(conn: asyncpg.Connection, key: int) -> datetime:
    """`lock`, then the transaction's start time (`now()`), in one round trip."""
    value: datetime = (await conn.fetchrow("SELECT pg_advisory_xact_lock($1), now()", key))[1]
    return value


# --- audit -----------------------------------------------------------------------------------

# Every row takes the lock before its id: the first waits for it, the others find it held
# (a transaction-scoped lock taken again is only counted), so no id is drawn without it.
NEXT_IDS = (
    "SELECT pg_advisory_xact_lock($1), clock_timestamp(), nextval('audit_events_id_seq')"
    " FROM generate_series(1, $2)"
)


async def lock_chain_and_next_ids(
    conn: asyncpg.Connection, count: int
) -> tuple[list[int], datetime]:
    """Take the chain lock, then `count` ids and the time, in one round trip. The ids are
    drawn after the lock is held, so they follow the chain's order. (The chain head must
    be read by a later statement: this one's snapshot predates the lock.)"""
    rows = await conn.fetch(NEXT_IDS, AUDIT_CHAIN_LOCK, count)
    return sorted(int(row[2]) for row in rows), rows[0][1]


# The head, and beside it each receipt found (one row of NULLs beside it when none is).
HEAD_AND_RECEIPTS = """
SELECT h.last_hash, r.source, r.event_id, e.id, e.at, e.kind, e.actor, e.on_behalf_of,
    e.subject, e.data, e.prev_hash, e.hash
FROM audit_chain_head h
LEFT JOIN (audit_receipts r JOIN audit_events e ON e.id = r.audit_id)
    ON (r.source, r.event_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
WHERE h.id = 1
"""


async def head_and_receipts(
    conn: asyncpg.Connection, keys: list[tuple[str, str]]
) -> tuple[str, dict[tuple[str, str], AuditEventOut]]:
    """The hash of the chain's newest row (the genesis hash while it is empty), and the
    audit rows that (actor, event id) pairs became when first sent, in one round trip."""
    rows = await conn.fetch(HEAD_AND_RECEIPTS, [s for s, _ in keys], [e for _, e in keys])
    if not rows:
        raise RuntimeError("audit_chain_head has no row: run the compliance migration")
    seen = {
        (row["source"], row["event_id"]): AuditEventOut(
            **{name: row[name] for name in EVENT_FIELDS}
        )
        for row in rows
        if row["source"] is not None
    }
    return rows[0]["last_hash"], seen


# One statement: the rows, the head moved to the last of them, and which row each
# (actor, event id) became. Data-modifying CTEs run to completion whatever the INSERT reads.
APPEND = """
WITH head AS (
    UPDATE audit_chain_head SET last_id = $10, last_hash = $11 WHERE id = 1
), receipts AS (
    INSERT INTO audit_receipts (source, event_id, audit_id)
    SELECT * FROM unnest($12::text[], $13::text[], $14::bigint[])
)
INSERT INTO audit_events (id, at, kind, actor, on_behalf_of, subject, data, prev_hash, hash)
SELECT * FROM unnest(
    $1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::json[], $8::text[], $9::text[]
)
"""


async def append_audit_events(
    conn: asyncpg.Connection,
    events: Sequence[AuditEventOut],
    receipts: Sequence[tuple[str, str, int]],
) -> None:
    """Insert the rows (in order), move the head to the last of them and remember which
    row each (actor, event id) became, in one round trip."""
    columns = [[getattr(event, name) for event in events] for name in EVENT_FIELDS]
    await conn.execute(
        APPEND,
        *columns,
        events[-1].id,
        events[-1].hash,
        [source for source, _, _ in receipts],
        [event_id for _, event_id, _ in receipts],
        [audit_id for _, _, audit_id in receipts],
    )


def chain_head(session: Session) -> AuditChainHead:
    head = session.get(AuditChainHead, 1, populate_existing=True)
    if head is None:
        raise RuntimeError("audit_chain_head has no row: run the compliance migration")
    return head


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


@dataclass(frozen=True)
class PolicyState:
    """What a policy check reads: the policy set as stored, and today's approvals."""

    policy: dict[str, Any]  # POLICY_FIELDS
    version: int
    approved_today: int  # distinct orders approved on the day
    counted: frozenset[str]  # those of the asked client order ids among them


POLICY_STATE = """
SELECT p.restricted_symbols, p.allowed_exchanges, p.trading_windows, p.max_orders_per_day,
    p.version,
    coalesce((SELECT c.approved FROM policy_day_counts c WHERE c.day = $1), 0) AS approved,
    ARRAY(
        SELECT o.client_order_id FROM policy_day_orders o
        WHERE o.day = $1 AND o.client_order_id = ANY($2::text[])
    ) AS counted
FROM compliance_policies p WHERE p.id = 1
"""


async def policy_state(
    conn: asyncpg.Connection, day: date, client_order_ids: list[str]
) -> PolicyState:
    """The policy set, the orders approved on `day` and which of `client_order_ids` are
    among them, in one round trip. Read after the policy lock, by a statement of its own:
    the lock's statement sees the database as it was before it waited."""
    row = await conn.fetchrow(POLICY_STATE, day, client_order_ids)
    if row is None:
        raise RuntimeError("compliance_policies has no row: run the compliance migration")
    return PolicyState(
        policy={name: row[name] for name in POLICY_FIELDS},
        version=row["version"],
        approved_today=row["approved"],
        counted=frozenset(row["counted"]),
    )


async def policy_values(conn: asyncpg.Connection) -> dict[str, Any]:
    """The policy set as stored (POLICY_FIELDS)."""
    row = await conn.fetchrow(
        "SELECT restricted_symbols, allowed_exchanges, trading_windows, max_orders_per_day"
        " FROM compliance_policies WHERE id = 1"
    )
    if row is None:
        raise RuntimeError("compliance_policies has no row: run the compliance migration")
    return dict(row)


SAVE_POLICY = """
UPDATE compliance_policies SET restricted_symbols = $1, allowed_exchanges = $2,
    trading_windows = $3, max_orders_per_day = $4, version = version + 1, updated_by = $5,
    updated_at = now()
WHERE id = 1
RETURNING restricted_symbols, allowed_exchanges, trading_windows, max_orders_per_day, version,
    updated_at, updated_by
"""


async def save_policy(conn: asyncpg.Connection, values: dict[str, Any], by: str) -> dict[str, Any]:
    """Replace the policy set (the caller holds the policy lock); the row as saved."""
    row = await conn.fetchrow(SAVE_POLICY, *(values[name] for name in POLICY_FIELDS), by)
    return dict(row)


# One statement: the orders approved for the first time on the day are counted (each once,
# however often it is approved), and every decision is recorded.
RECORD_DECISIONS = """
WITH first AS (
    INSERT INTO policy_day_orders (day, client_order_id)
    SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING day
), counted AS (
    INSERT INTO policy_day_counts (day, approved)
    SELECT $1, count(*) FROM first HAVING count(*) > 0
    ON CONFLICT (day) DO UPDATE SET approved = policy_day_counts.approved + excluded.approved
)
INSERT INTO policy_decisions (at, caller, client_order_id, exchange, symbol, side, type, amount,
    price, approved, checks, requested_by, audit_id)
SELECT $3, $4, d.client_order_id, d.exchange, d.symbol, d.side, d.type, d.amount, d.price,
    d.approved, d.checks::json, d.requested_by, d.audit_id
FROM unnest(
    $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::numeric[], $11::numeric[],
    $12::boolean[], $13::text[], $14::text[], $15::bigint[]
) AS d(client_order_id, exchange, symbol, side, type, amount, price, approved, checks,
    requested_by, audit_id)
"""


async def record_decisions(
    conn: asyncpg.Connection,
    at: datetime,
    caller: str,
    decisions: Sequence[tuple[PolicyRequest, CheckDecision, int]],
    newly_approved: list[str],
) -> None:
    """Record each (order, decision, audit row id) and count `newly_approved` (client
    order ids) on `at`'s day (`at` in UTC); the caller holds the policy lock."""
    # The checks go as JSON text: asyncpg reads a list inside an array as one more dimension.
    checks = [
        json.dumps([c.model_dump(mode="json") for c in decision.checks])
        for _, decision, _ in decisions
    ]
    await conn.execute(
        RECORD_DECISIONS,
        at.date(),
        newly_approved,
        at,
        caller,
        [order.client_order_id for order, _, _ in decisions],
        [order.exchange for order, _, _ in decisions],
        [order.symbol for order, _, _ in decisions],
        [order.side.value for order, _, _ in decisions],
        [order.type.value for order, _, _ in decisions],
        [order.amount for order, _, _ in decisions],
        [order.price for order, _, _ in decisions],
        [decision.approved for _, decision, _ in decisions],
        checks,
        [order.requested_by for order, _, _ in decisions],
        [audit_id for _, _, audit_id in decisions],
    )
