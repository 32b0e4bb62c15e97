"""Delivers the audit outbox to compliance (`POST /audit/events/batch`) in the background.

Events are sent oldest first, everything pending in one call. While compliance is down,
answers 404 (not deployed yet) or refuses our token, the flusher stops at the first
failure and retries the same events with a growing pause (up to MAX_BACKOFF_S), so the
log keeps its order and nothing is lost. Each event carries its `event_id` (compliance
appends a redelivered one once) and, in its data, `occurred_at` (it may arrive late).
An event compliance rejects as invalid (400/409/422) makes the batch go one event at a
time (`POST /audit/events`), and that event is set aside for REJECTED_RETRY_S so it
cannot block the ones behind it; it is retried too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from agents.risk import repository as repo
from common.contracts import AuditEventIn
from common.errors import VolexError
from common.service import Kit

log = logging.getLogger(__name__)

AUDIT_PATH = "/audit/events"
BATCH_PATH = "/audit/events/batch"
IDLE_S = 1.0
MAX_BACKOFF_S = 15.0
REJECTED_RETRY_S = 300.0
BATCH = 100
SEND_TIMEOUT_S = 5.0
REJECTED = frozenset({400, 409, 422})


@dataclass(frozen=True)
class _Pending:
    id: int
    body: dict[str, Any]


def _load_pending(kit: Kit) -> list[_Pending]:
    assert kit.session_factory is not None
    with kit.session_factory.begin() as session:
        return [
            _Pending(
                row.id,
                AuditEventIn(
                    kind=row.kind,
                    actor=row.actor,
                    subject=row.subject,
                    data={**row.data, "occurred_at": row.created_at.isoformat()},
                    event_id=row.event_id,
                ).model_dump(mode="json"),
            )
            for row in repo.pending_audit(session, BATCH)
        ]


def _delivered(kit: Kit, event_ids: list[int]) -> None:
    assert kit.session_factory is not None
    with kit.session_factory.begin() as session:
        repo.mark_delivered(session, event_ids)


def _failed(kit: Kit, event_id: int, error: str, retry_after_s: float) -> None:
    assert kit.session_factory is not None
    with kit.session_factory.begin() as session:
        repo.mark_failed(session, event_id, error, retry_after_s)


async def flush(kit: Kit) -> bool:
    """Send what is pending; False when compliance could not take it and we should back off.

    Everything pending goes in one call (`/audit/events/batch`: one transaction at
    compliance, all or none). If compliance refuses the batch as invalid, the events go
    one at a time instead, so only the refused one is set aside.
    """
    if kit.agents is None or kit.session_factory is None:
        return False
    pending = await asyncio.to_thread(_load_pending, kit)
    if not pending:
        return True
    try:
        await kit.agents.compliance.post(
            BATCH_PATH, json=[event.body for event in pending], timeout=SEND_TIMEOUT_S
        )
    except VolexError as exc:
        if exc.status_code not in REJECTED:
            await asyncio.to_thread(_failed, kit, pending[0].id, exc.message, 0.0)
            return False
        return await _one_by_one(kit, pending)
    await asyncio.to_thread(_delivered, kit, [event.id for event in pending])
    return True


async def _one_by_one(kit: Kit, pending: list[_Pending]) -> bool:
    assert kit.agents is not None
    for event in pending:
        try:
            await kit.agents.compliance.post(AUDIT_PATH, json=event.body, timeout=SEND_TIMEOUT_S)
        except VolexError as exc:
            rejected = exc.status_code in REJECTED
            await asyncio.to_thread(
                _failed, kit, event.id, exc.message, REJECTED_RETRY_S if rejected else 0.0
            )
            if not rejected:
                return False
            log.warning("compliance rejected an audit event", extra={"reason": exc.message})
            continue
        await asyncio.to_thread(_delivered, kit, [event.id])
    return True


async def run(kit: Kit) -> None:
    """Flush forever: every IDLE_S when all is well, backing off while compliance is away."""
    failures = 0
    while True:
        await asyncio.sleep(min(MAX_BACKOFF_S, IDLE_S * 2 ** min(failures, 8)))
        try:
            ok = await flush(kit)
        except SQLAlchemyError as exc:
            log.warning("audit outbox: database unavailable", extra={"reason": repr(exc)[:200]})
            ok = False
        except Exception:  # keep delivering whatever went wrong with one round
            log.exception("audit outbox: flush failed")
            ok = False
        failures = 0 if ok else failures + 1


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Risk's own background work, started after the kit has opened the database and clients."""
    kit: Kit = app.state.kit
    kit.background.append(asyncio.create_task(run(kit), name="risk-audit-outbox"))
    yield
