"""Compliance logic: appending to and verifying the audit chain, checking and changing
policies, building trade reports.

Appends, policy checks and policy changes each run in one transaction on the event loop
(`LoopDatabase.transaction`, asyncpg), committed when its block ends, so a policy change
and its audit row (or a decision and its audit row) land together or not at all. The block
opens here, after the input is checked: an invalid event is a 422, a service changing
policies a 403, even while the database is away. Reads use the ORM session, which the
session dependency commits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

import asyncpg
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session

from agents.compliance import policy as rules
from agents.compliance import reports
from agents.compliance import repository as repo
from agents.compliance.chain import GENESIS_HASH, canonical_content, canonical_json, link_hash
from agents.compliance.schemas import (
    AuditEventOut,
    AuditPage,
    ChainVerification,
    PolicySet,
    PolicyView,
    TradeReport,
)
from common.auth import Caller
from common.contracts import (
    AuditEventIn,
    CheckDecision,
    FillEvent,
    OrderType,
    PolicyRequest,
    RestingOrder,
)
from common.db import LoopDatabase
from common.errors import Forbidden, VolexError

MAX_DATA_BYTES = 256 * 1024
MAX_KIND = 64  # the column's width; the contract's pattern sets no length
RESERVED_KINDS = ("policy.checked", "policy.changed")  # written by compliance itself
FILL_KIND = "order.filled"


def invalid(field: tuple[str | int, ...], message: str) -> RequestValidationError:
    """A 422 naming `field`, in the same shape as FastAPI's own validation errors."""
    return RequestValidationError([{"loc": field, "msg": message, "type": "value_error"}])


# --- audit -----------------------------------------------------------------------------------


def _check_text(field: str, value: str | None) -> None:
    if value is not None and any(ord(ch) < 0x20 for ch in value):
        raise invalid(("body", field), "control characters are not allowed")


def _check_data(data: dict[str, Any]) -> None:
    try:
        size = len(canonical_json(data))
        # Lone surrogates survive ASCII escaping but are not text; refuse them here.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise invalid(("body", "data"), f"not storable as JSON: {exc}") from exc
    if size > MAX_DATA_BYTES:
        raise invalid(("body", "data"), f"{size} bytes is over the {MAX_DATA_BYTES} byte limit")


def _check_fill(data: dict[str, Any]) -> None:
    try:
        FillEvent.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("body", "data", *err["loc"])} for err in exc.errors()]
        ) from exc


@dataclass(frozen=True)
class NewEvent:
    kind: str
    actor: str
    data: dict[str, Any]
    subject: str | None = None
    on_behalf_of: str | None = None
    event_id: str | None = None  # the sender's id: appended once per (actor, event_id)


async def append(
    conn: asyncpg.Connection,
    *,
    kind: str,
    actor: str,
    data: dict[str, Any],
    subject: str | None = None,
    on_behalf_of: str | None = None,
) -> AuditEventOut:
    """Add one row to the chain."""
    _check_data(data)
    [event] = await append_all(conn, [NewEvent(kind, actor, data, subject, on_behalf_of)])
    return event


async def append_all(conn: asyncpg.Connection, new: list[NewEvent]) -> list[AuditEventOut]:
    """Add rows to the chain in the given order (their data already checked). Appends are
    serialized by a transaction-scoped lock, so the first row links to the one committed
    before it; the rows of one call share the lock, the time and one INSERT. An event whose
    sender's `event_id` was seen before (from the same actor) is not appended again: its
    place in the answer holds the row it became the first time."""
    if not new:
        return []
    row_ids, at = await repo.lock_chain_and_next_ids(conn, len(new))
    # Under the chain lock: no other append can record the same receipt meanwhile.
    keys = [(item.actor, item.event_id) for item in new if item.event_id]
    prev_hash, seen = await repo.head_and_receipts(conn, keys)
    at = at.astimezone(UTC)
    answer: list[AuditEventOut] = []
    events: list[AuditEventOut] = []
    receipts: list[tuple[str, str, int]] = []
    free_ids = iter(row_ids)  # ids a resent event does not use are left as gaps
    for item in new:
        key = (item.actor, item.event_id) if item.event_id else None
        if key is not None and key in seen:
            answer.append(seen[key])
            continue
        fields: dict[str, Any] = {
            "id": next(free_ids),
            "at": at,
            "kind": item.kind,
            "actor": item.actor,
            "on_behalf_of": item.on_behalf_of,
            "subject": item.subject,
            "data": item.data,
        }
        row_hash = link_hash(prev_hash, canonical_content(**fields))
        event = AuditEventOut(**fields, prev_hash=prev_hash, hash=row_hash)
        events.append(event)
        answer.append(event)
        prev_hash = row_hash
        if key is not None:
            seen[key] = event
            receipts.append((*key, event.id))
    if events:
        await repo.append_audit_events(conn, events, receipts)
    return answer


def _incoming(body: AuditEventIn, caller: Caller) -> NewEvent:
    """An event posted by another agent or the operator, checked; `actor` is who called."""
    if body.kind in RESERVED_KINDS:
        raise Forbidden(f"kind {body.kind} is written by compliance itself, not posted")
    if len(body.kind) > MAX_KIND:
        raise invalid(("body", "kind"), f"at most {MAX_KIND} characters")
    _check_text("actor", body.actor)
    _check_text("subject", body.subject)
    if body.kind == FILL_KIND:
        _check_fill(body.data)
    _check_data(body.data)
    return NewEvent(
        kind=body.kind,
        actor=caller.name,
        data=body.data,
        subject=body.subject,
        on_behalf_of=body.actor if body.actor != caller.name else None,
        event_id=body.event_id,
    )


async def record_event(db: LoopDatabase, body: AuditEventIn, caller: Caller) -> AuditEventOut:
    """Store an event posted by another agent or the operator."""
    new = _incoming(body, caller)
    async with db.transaction() as conn:
        [event] = await append_all(conn, [new])
    return event


async def record_events(
    db: LoopDatabase, bodies: list[AuditEventIn], caller: Caller
) -> list[AuditEventOut]:
    """Store several events in one transaction, in order: all of them or none."""
    new = []
    for index, body in enumerate(bodies):
        try:
            new.append(_incoming(body, caller))
        except RequestValidationError as exc:
            raise RequestValidationError(
                [{**err, "loc": ("body", index, *err["loc"][1:])} for err in exc.errors()]
            ) from exc
    async with db.transaction() as conn:
        return await append_all(conn, new)


def list_events(
    session: Session,
    where: repo.AuditFilter,
    *,
    order: Literal["asc", "desc"],
    cursor: int | None,
    offset: int,
    limit: int,
) -> AuditPage:
    if cursor is not None and offset:
        raise invalid(("query", "offset"), "use either cursor or offset, not both")
    if where.since and where.until and where.since > where.until:
        raise invalid(("query", "since"), f"since {where.since} is after until {where.until}")
    rows = repo.list_audit_events(
        session, where, order=order, cursor=cursor, offset=offset, limit=limit + 1
    )
    items = [AuditEventOut.model_validate(r, from_attributes=True) for r in rows[:limit]]
    next_cursor = items[-1].id if len(rows) > limit else None
    return AuditPage(items=items, next_cursor=next_cursor, order=order, limit=limit)


def _broken(checked: int, row_id: int | None, detail: str) -> ChainVerification:
    return ChainVerification(ok=False, checked=checked, first_broken_id=row_id, detail=detail)


def _link_problem(row: Any, expected_prev: str, last_id: int | None, head_id: int | None) -> str:
    """Why `row` does not continue the chain, or "" when it does."""
    if head_id is None or row.id > head_id:
        return (
            f"row {row.id} is past the chain head (row {head_id}): it was added outside compliance"
        )
    if row.prev_hash != expected_prev:
        return (
            f"row {row.id} does not link to the row before it (id {last_id}): "
            "a row between them was deleted, or edited along with its hash"
        )
    content = canonical_content(
        id=row.id,
        at=row.at,
        kind=row.kind,
        actor=row.actor,
        on_behalf_of=row.on_behalf_of,
        subject=row.subject,
        data=row.data,
    )
    if link_hash(row.prev_hash, content) != row.hash:
        return f"row {row.id} was edited: its content no longer matches its hash"
    return ""


def verify_chain(session: Session) -> ChainVerification:
    """Recompute every link from the first row; report the first row that does not fit."""
    repo.use_snapshot(session)  # the head and the rows as of one instant
    head = repo.chain_head(session)
    expected_prev, checked, last_id = GENESIS_HASH, 0, None
    for row in repo.chain_rows(session):
        checked += 1
        problem = _link_problem(row, expected_prev, last_id, head.last_id)
        if problem:
            return _broken(checked, row.id, problem)
        expected_prev, last_id = row.hash, row.id
    if last_id != head.last_id or expected_prev != head.last_hash:
        return _broken(
            checked,
            head.last_id,
            f"the chain ends at row {last_id} but its head records row {head.last_id}: "
            "the newest rows were deleted or replaced",
        )
    return ChainVerification(
        ok=True, checked=checked, first_broken_id=None, detail=f"{checked} rows, chain intact"
    )


# --- policies --------------------------------------------------------------------------------


def _policy_set(values: dict[str, Any]) -> PolicySet:
    return PolicySet.model_validate(values)


def get_policies(session: Session) -> PolicyView:
    return PolicyView.model_validate(repo.get_policy(session), from_attributes=True)


async def put_policies(db: LoopDatabase, new: PolicySet, caller: Caller) -> PolicyView:
    """Replace the policy set (operator only) and audit the change with old and new."""
    if caller.kind != "operator":
        raise Forbidden(f"only the operator may change policies, not service {caller.name}")
    values = new.model_dump(mode="json")
    async with db.transaction() as conn:
        await repo.lock(conn, repo.POLICY_LOCK)
        old = _policy_set(await repo.policy_values(conn)).model_dump(mode="json")
        saved = PolicyView.model_validate(await repo.save_policy(conn, values, caller.name))
        await append(
            conn,
            kind="policy.changed",
            actor=caller.name,
            subject=f"policies v{saved.version}",
            data={"old": old, "new": values, "version": saved.version},
        )
    return saved


async def check_policy(db: LoopDatabase, order: PolicyRequest, caller: Caller) -> CheckDecision:
    """Run every rule on one order, record the decision and audit it with the rules."""
    [decision] = await check_policies(db, [order], caller)
    return decision


async def check_policies(
    db: LoopDatabase, orders: list[PolicyRequest], caller: Caller
) -> list[CheckDecision]:
    """Run every rule on each order in turn (`_judge`); record each decision and audit it
    with the rules."""
    async with db.transaction() as conn:
        now = (await repo.lock_at(conn, repo.POLICY_LOCK)).astimezone(UTC)
        state = await repo.policy_state(conn, now.date(), [o.client_order_id for o in orders])
        judged, newly_approved = _judge(state, orders, now)
        new = []
        for order, decision in judged:
            data = {
                "approved": decision.approved,
                "checks": [c.model_dump(mode="json") for c in decision.checks],
                "order": order.model_dump(mode="json"),
                "policy_version": state.version,
            }
            _check_data(data)
            new.append(NewEvent("policy.checked", caller.name, data, order.client_order_id))
        events = await append_all(conn, new)
        recorded = [(o, d, e.id) for (o, d), e in zip(judged, events, strict=True)]
        await repo.record_decisions(conn, now, caller.name, recorded, newly_approved)
    return [decision for _, decision in judged]


def _judge(
    state: repo.PolicyState, orders: list[PolicyRequest], now: datetime
) -> tuple[list[tuple[PolicyRequest, CheckDecision]], list[str]]:
    """Each order as judged, and the client order ids approved for the first time today.
    A limit order approved earlier in the batch rests among our orders for the ones after
    it (the wash-trade rule), and each approval counts for the daily limit."""
    policy = _policy_set(state.policy)
    judged: list[tuple[PolicyRequest, CheckDecision]] = []
    resting: list[PolicyRequest] = []  # approved limit orders of this batch
    counted = set(state.counted)
    newly_approved: list[str] = []
    for order in orders:
        earlier = [
            RestingOrder(side=o.side, price=o.price, amount=o.amount)
            for o in resting
            if (o.exchange, o.symbol) == (order.exchange, order.symbol) and o.price is not None
        ]
        if earlier:
            order = order.model_copy(update={"resting_orders": [*order.resting_orders, *earlier]})
        count = rules.OrderCount(
            state.approved_today + len(newly_approved), order.client_order_id in counted
        )
        checks = rules.evaluate(policy, order, now, count)
        decision = CheckDecision(approved=all(c.passed for c in checks), checks=checks)
        if decision.approved and not count.this_order_counted:
            counted.add(order.client_order_id)
            newly_approved.append(order.client_order_id)
        if decision.approved and order.type is OrderType.limit:
            resting.append(order)
        judged.append((order, decision))
    return judged, newly_approved


# --- reports ---------------------------------------------------------------------------------


def trade_report(session: Session, start: datetime, end: datetime) -> TradeReport:
    """Fills in [start, end) with fees and FIFO realized PnL; lots come from all earlier fills."""
    fills = []
    for row in repo.events_of_kind(session, FILL_KIND):
        try:
            fill = FillEvent.model_validate(row.data)
        except ValidationError as exc:
            raise VolexError(f"audit row {row.id} is not a valid {FILL_KIND} event: {exc}") from exc
        if fill.filled_at.tzinfo is None:  # the contract allows naive times: they are UTC
            fill = fill.model_copy(update={"filled_at": fill.filled_at.replace(tzinfo=UTC)})
        if fill.filled_at < end:
            fills.append((row.id, fill))
    lines = reports.in_window(reports.fifo_lines(fills), start, end)
    totals, other_fees = reports.totals(lines)
    return TradeReport(from_=start, to=end, fills=lines, totals=totals, other_fees=other_fees)


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def audit_filter(
    kind: str | None,
    actor: str | None,
    subject: str | None,
    since: datetime | None,
    until: datetime | None,
) -> repo.AuditFilter:
    """Filters for GET /audit; times without a zone are UTC."""
    # An empty field (a blank form input) filters nothing.
    return repo.AuditFilter(kind or None, actor or None, subject or None, _utc(since), _utc(until))


def report_window(start: str, end: str) -> tuple[datetime, datetime]:
    """[from, to) from query strings: a date (YYYY-MM-DD, `to` includes that whole day)
    or an ISO 8601 time (`to` exclusive); no zone means UTC."""
    first, _ = _bound("from", start)
    last, whole_day = _bound("to", end)
    if first > last:
        raise invalid(("query", "from"), f"from {start} is after to {end}")
    return first, last + timedelta(days=1) if whole_day else last


def _bound(field: str, value: str) -> tuple[datetime, bool]:
    """The moment `value` names, and whether it named a whole day."""
    text = value.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC), True
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise invalid(
            ("query", field), f"{value!r} is not a date (YYYY-MM-DD) or ISO 8601 time"
        ) from exc
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)), False
