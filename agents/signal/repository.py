"""All of the signal agent's SQL. Functions take the caller's session and never commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, func, select, text, update
from sqlalchemy.orm import Session, defer

from common.db import LoopDatabase
from common.models.signal import SignalModel, SignalRecord

# --- signals ---------------------------------------------------------------------------------
SIGNALS: Table = SignalRecord.__table__  # type: ignore[assignment]


async def insert_signals(writer: LoopDatabase, rows: list[dict[str, Any]]) -> None:
    """All rows of one generate call, all or none, on the event loop."""
    await writer.insert(SIGNALS, rows)


@dataclass(frozen=True, slots=True)
class SignalFilter:
    symbol: str | None = None
    exchange: str | None = None
    timeframe: str | None = None
    strategy: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def list_signals(
    session: Session, where: SignalFilter, limit: int, offset: int
) -> Sequence[SignalRecord]:
    """Newest first."""
    query = select(SignalRecord)
    for column, value in (
        (SignalRecord.symbol, where.symbol),
        (SignalRecord.exchange, where.exchange),
        (SignalRecord.timeframe, where.timeframe),
        (SignalRecord.strategy, where.strategy),
    ):
        if value is not None:
            query = query.where(column == value)
    if where.since is not None:
        query = query.where(SignalRecord.generated_at >= where.since)
    if where.until is not None:
        query = query.where(SignalRecord.generated_at <= where.until)
    query = query.order_by(SignalRecord.generated_at.desc(), SignalRecord.id.desc())
    return session.execute(query.limit(limit).offset(offset)).scalars().all()


# --- models ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ModelRef:
    """What a signal needs to know of a model, without its bytes."""

    id: int
    version: int
    kind: str
    horizon: int
    timeframe: str
    features: list[str]
    digest: str
    train_end_ts: int


_REF_COLUMNS = (
    SignalModel.id,
    SignalModel.version,
    SignalModel.kind,
    SignalModel.horizon,
    SignalModel.timeframe,
    SignalModel.features,
    SignalModel.digest,
    SignalModel.train_end_ts,
)


def active_model_ref(
    session: Session, exchange: str, symbol: str, timeframe: str
) -> ModelRef | None:
    query = select(*_REF_COLUMNS).where(
        SignalModel.exchange == exchange,
        SignalModel.symbol == symbol,
        SignalModel.timeframe == timeframe,
        SignalModel.active,
    )
    row = session.execute(query).first()
    return ModelRef(*row) if row is not None else None


def model_ref(session: Session, model_id: int) -> ModelRef | None:
    row = session.execute(select(*_REF_COLUMNS).where(SignalModel.id == model_id)).first()
    return ModelRef(*row) if row is not None else None


def model_bytes(session: Session, model_id: int) -> bytes:
    query = select(SignalModel.model_bytes).where(SignalModel.id == model_id)
    blob: bytes = session.execute(query).scalar_one()
    return blob


def get_model(session: Session, model_id: int, *, lock: bool = False) -> SignalModel | None:
    query = select(SignalModel).options(defer(SignalModel.model_bytes))
    query = query.where(SignalModel.id == model_id)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def list_models(
    session: Session,
    *,
    exchange: str | None,
    symbol: str | None,
    timeframe: str | None,
    active: bool | None,
    limit: int,
) -> Sequence[SignalModel]:
    query = select(SignalModel).options(defer(SignalModel.model_bytes))
    for column, value in (
        (SignalModel.exchange, exchange),
        (SignalModel.symbol, symbol),
        (SignalModel.timeframe, timeframe),
        (SignalModel.active, active),
    ):
        if value is not None:
            query = query.where(column == value)
    query = query.order_by(SignalModel.id.desc()).limit(limit)
    return session.execute(query).scalars().all()


def _lock_market(session: Session, exchange: str, symbol: str, timeframe: str) -> None:
    """Serialise version numbering and activation per market, until commit."""
    key = f"signal_models:{exchange}:{symbol}:{timeframe}"
    session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


def add_model(session: Session, values: dict[str, Any]) -> SignalModel:
    """Store a model as the next version for its (exchange, symbol, timeframe)."""
    _lock_market(session, values["exchange"], values["symbol"], values["timeframe"])
    latest = session.execute(
        select(func.coalesce(func.max(SignalModel.version), 0)).where(
            SignalModel.exchange == values["exchange"],
            SignalModel.symbol == values["symbol"],
            SignalModel.timeframe == values["timeframe"],
        )
    ).scalar_one()
    model = SignalModel(**values, version=latest + 1, active=False)
    session.add(model)
    session.flush()
    return model


def activate(session: Session, model: SignalModel) -> None:
    """Make `model` the one active model of its market (the other, if any, stops being)."""
    _lock_market(session, model.exchange, model.symbol, model.timeframe)
    session.execute(
        update(SignalModel)
        .where(
            SignalModel.exchange == model.exchange,
            SignalModel.symbol == model.symbol,
            SignalModel.timeframe == model.timeframe,
            SignalModel.active,
            SignalModel.id != model.id,
        )
        .values(active=False)
    )
    session.flush()
    if not model.active:
        model.active = True
        model.activated_at = session.execute(select(func.now())).scalar_one()
    session.flush()
