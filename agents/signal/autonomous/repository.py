"""All SQL of the autonomous loop. Functions take the caller's session and never commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from common.models.autonomous import AutonomousDecision, AutonomousRun

RUNNING = "running"
STOPPED = "stopped"


def running(session: Session, *, lock: bool = False) -> AutonomousRun | None:
    query = select(AutonomousRun).where(AutonomousRun.status == RUNNING)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def latest(session: Session) -> AutonomousRun | None:
    query = select(AutonomousRun).order_by(AutonomousRun.id.desc()).limit(1)
    return session.execute(query).scalar_one_or_none()


def add_run(session: Session, run: AutonomousRun) -> AutonomousRun:
    session.add(run)
    session.flush()  # the partial unique index refuses a second running loop here
    return run


def stop(session: Session, run: AutonomousRun, by: str, reason: str) -> None:
    run.status, run.stopped_by, run.stop_reason = STOPPED, by, reason[:1000]
    run.stopped_at = session.execute(select(func.now())).scalar_one()


def ticked(session: Session, run_id: int) -> bool:
    """Count a finished tick; False when the run is no longer running."""
    result = session.execute(
        update(AutonomousRun)
        .where(AutonomousRun.id == run_id, AutonomousRun.status == RUNNING)
        .values(ticks=AutonomousRun.ticks + 1, last_tick_at=func.now())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def add_decision(session: Session, **values: Any) -> AutonomousDecision:
    decision = AutonomousDecision(**values)
    session.add(decision)
    session.flush()
    return decision


def decisions(
    session: Session,
    *,
    symbol: str | None = None,
    run_id: int | None = None,
    outcome: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> Sequence[AutonomousDecision]:
    query = select(AutonomousDecision)
    if symbol is not None:
        query = query.where(AutonomousDecision.symbol == symbol)
    if run_id is not None:
        query = query.where(AutonomousDecision.run_id == run_id)
    if outcome is not None:
        query = query.where(AutonomousDecision.outcome == outcome)
    if before_id is not None:
        query = query.where(AutonomousDecision.id < before_id)
    query = query.order_by(AutonomousDecision.id.desc()).limit(limit)
    return session.execute(query).scalars().all()


def saw_state(session: Session, run_id: int, changed_at: datetime) -> None:
    session.execute(
        update(AutonomousRun).where(AutonomousRun.id == run_id).values(state_seen_at=changed_at)
    )
