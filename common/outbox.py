"""Audit events through a transactional outbox, delivered to compliance in the background,
in order and, thanks to each event's `event_id`, appended there once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from common.clients import Agents
from common.contracts import AuditEventIn
from common.errors import VolexError
from common.models.outbox import OutboxEvent

log = logging.getLogger(__name__)
BATCH = 200
GATHER_S = 0.2
REFUSED = frozenset({400, 409, 422})  # compliance found the event invalid: not an outage
REFUSED_RETRY_S = 300.0
_QUEUE = insert(cast(Table, OutboxEvent.__table__))


def queued(event: AuditEventIn) -> dict[str, Any]:
    """The payload to queue for `event`. It gets an `event_id`, so that sending it again
    (an answer lost to a timeout or a crash) does not append it twice at compliance, and
    its data the time it happened, `occurred_at` (compliance stamps when it arrives, which
    an outage delays)."""
    update: dict[str, Any] = {"data": {"occurred_at": datetime.now(UTC).isoformat(), **event.data}}
    if event.event_id is None:
        update["event_id"] = uuid.uuid4().hex
    return event.model_copy(update=update).model_dump(mode="json")


def record(session: Session, service: str, event: AuditEventIn) -> None:
    """Queue `event` in the caller's transaction: it exists exactly when the change does."""
    # A plain INSERT, run now (queued events keep the order they were recorded in);
    # through the ORM's unit of work it cost three times as much, three times an order.
    session.execute(_QUEUE, {"service": service, "payload": queued(event), "attempts": 0})


_QUEUE_ON_LOOP = "INSERT INTO event_outbox (service, payload, attempts) VALUES ($1, $2, 0)"
# The columns a statement of its own fills to queue an event with the row it writes (as
# execution's claim does: one statement, one implicit transaction, no BEGIN and COMMIT).
QUEUE_COLUMNS = "event_outbox (service, payload, attempts)"


async def record_on(
    connection: asyncpg.Connection, service: str, events: Sequence[AuditEventIn]
) -> None:
    """`record` for a transaction on the event loop (`LoopDatabase.transaction`): the
    events are queued in the given order."""
    if len(events) == 1:
        await connection.execute(_QUEUE_ON_LOOP, service, queued(events[0]))
    elif events:
        await connection.executemany(_QUEUE_ON_LOOP, [(service, queued(e)) for e in events])


class OutboxRelay:
    """Sends queued events to compliance `POST /audit/events`, oldest first, once each."""

    def __init__(self, service: str, sessions: sessionmaker[Session], agents: Agents) -> None:
        self.service = service
        self.sessions = sessions
        self.agents = agents
        self.wake = asyncio.Event()

    async def deliver_once(self) -> int:
        """Deliver what is queued and due, oldest first, as one batch (one call, one
        transaction at compliance); on failure nothing is removed, so order is kept and
        retried. If compliance refuses the batch as invalid, the events go one at a time
        and only the refused one is set aside (for REFUSED_RETRY_S), so it cannot hold
        back the rest of the trail."""
        rows = await asyncio.to_thread(self._pending)
        if not rows:
            return 0
        try:
            await self.agents.compliance.post(
                "/audit/events/batch", json=[payload for _, payload in rows]
            )
        except VolexError as exc:
            if exc.status_code in REFUSED:
                return await self._one_by_one(rows)
            await asyncio.to_thread(self._failed, rows[0][0], exc.message, 0.0)
            return 0
        await asyncio.to_thread(self._done, [row_id for row_id, _ in rows])
        return len(rows)

    async def _one_by_one(self, rows: list[tuple[int, dict[str, object]]]) -> int:
        delivered = 0
        for row_id, payload in rows:
            try:
                await self.agents.compliance.post("/audit/events", json=payload)
            except VolexError as exc:
                refused = exc.status_code in REFUSED
                await asyncio.to_thread(
                    self._failed, row_id, exc.message, REFUSED_RETRY_S if refused else 0.0
                )
                if not refused:
                    break
                log.error(
                    "compliance refused an audit event; set aside",
                    extra={"event": row_id, "reason": exc.message[:300]},
                )
                continue
            await asyncio.to_thread(self._done, [row_id])
            delivered += 1
        return delivered

    async def run(self, interval: float = 1.0) -> None:
        while True:
            try:
                await self.deliver_once()
            except Exception:  # the relay must outlive database hiccups
                log.exception("outbox relay failed; retrying")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), interval)
            # Let a burst gather into one batch rather than chase every single event.
            await asyncio.sleep(GATHER_S)

    def _pending(self) -> list[tuple[int, dict[str, object]]]:
        with self.sessions() as session:
            rows = session.execute(
                select(OutboxEvent.id, OutboxEvent.payload)
                .where(
                    OutboxEvent.service == self.service, OutboxEvent.next_attempt_at <= func.now()
                )
                .order_by(OutboxEvent.id)
                .limit(BATCH)
            ).all()
        return [(row.id, row.payload) for row in rows]

    def _done(self, row_ids: list[int]) -> None:
        with self.sessions.begin() as session:
            session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(row_ids)))

    def _failed(self, row_id: int, error: str, retry_after_s: float) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id == row_id)
                .values(
                    attempts=OutboxEvent.attempts + 1,
                    last_error=error[:500],
                    next_attempt_at=func.now() + timedelta(seconds=retry_after_s),
                )
            )
