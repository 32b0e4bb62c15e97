"""All of execution's SQL: orders, fills, positions."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.models import Fill, Order, Position

FINAL = frozenset({"filled", "cancelled", "rejected", "expired"})
LIVE = frozenset({"open", "partially_filled"})
UNSETTLED = frozenset({"pending", "unknown"})
# Every status that is not final, listed rather than "not in FINAL", so the status index
# serves the reconciler's query (run every half second) instead of a scan of all orders.
NOT_FINAL = UNSETTLED | LIVE


# The order path's inserts are built once and run with parameters: building one per call
# (`.values(**row)`) was a third of a claim's CPU time.
_CLAIM = insert(Order).on_conflict_do_nothing(index_elements=["client_order_id"]).returning(Order)
_ADD_FILL = (
    insert(Fill).on_conflict_do_nothing(index_elements=["exchange", "trade_id"]).returning(Fill.id)
)


def claim(session: Session, values: dict[str, Any]) -> Order | None:
    """Insert a pending order; None if its client order id is already taken. One
    statement: the row comes back with the insert."""
    row = {**values, "status": "pending", "filled": Decimal(0), "fee": Decimal(0)}
    return session.scalars(_CLAIM, row).one_or_none()


def lock_orders(session: Session, order_ids: Sequence[int]) -> None:
    """Lock these order rows, in id order."""
    session.execute(
        select(Order.id).where(Order.id.in_(order_ids)).order_by(Order.id).with_for_update()
    ).all()


def by_client_id(session: Session, client_order_id: str) -> Order | None:
    return session.scalars(select(Order).where(Order.client_order_id == client_order_id)).first()


def get(session: Session, order_id: int, *, lock: bool = False) -> Order | None:
    query = select(Order).where(Order.id == order_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def list_orders(
    session: Session, exchange: str, symbol: str | None, status: str | None, limit: int
) -> Sequence[Order]:
    query = select(Order).where(Order.exchange == exchange)
    if symbol:
        query = query.where(Order.symbol == symbol)
    if status:
        query = query.where(Order.status == status)
    return session.scalars(query.order_by(Order.id.desc()).limit(limit)).all()


def unsettled(session: Session, exchange: str | None = None) -> Sequence[Order]:
    """Orders not in a final state, oldest first: the reconciliation worklist."""
    query = select(Order).where(Order.status.in_(NOT_FINAL))
    if exchange:
        query = query.where(Order.exchange == exchange)
    return session.scalars(query.order_by(Order.id)).all()


def live(
    session: Session, exchange: str | None = None, *, with_unknown: bool = False
) -> Sequence[Order]:
    """Orders resting on an exchange; `with_unknown`, also those whose fate we are still
    finding out (sent, no answer: they may be filled)."""
    statuses = LIVE | {"unknown"} if with_unknown else LIVE
    query = select(Order).where(Order.status.in_(statuses))
    if exchange:
        query = query.where(Order.exchange == exchange)
    return session.scalars(query.order_by(Order.id)).all()


def brackets(
    session: Session, exchange: str, roles: Sequence[str], symbol: str | None = None
) -> Sequence[Order]:
    """Protective legs (orders with one of `roles`) not yet final, oldest first."""
    query = select(Order).where(
        Order.exchange == exchange, Order.role.in_(roles), Order.status.in_(NOT_FINAL)
    )
    if symbol:
        query = query.where(Order.symbol == symbol)
    return session.scalars(query.order_by(Order.id)).all()


def add_fill(session: Session, values: dict[str, Any]) -> bool:
    """Record a trade once; False when it was already recorded."""
    inserted = session.execute(_ADD_FILL, values).scalar_one_or_none()
    return inserted is not None


def position(session: Session, exchange: str, symbol: str) -> Position:
    """The position row, locked for update (created flat if new)."""
    locked = (
        select(Position)
        .where(Position.exchange == exchange, Position.symbol == symbol)
        .with_for_update()
    )
    found = session.scalars(locked).one_or_none()
    if found is not None:
        return found
    session.execute(
        insert(Position)
        .values(
            exchange=exchange,
            symbol=symbol,
            amount=Decimal(0),
            entry_price=Decimal(0),
            realized_pnl=Decimal(0),
        )
        .on_conflict_do_nothing()
    )
    return session.scalars(locked).one()


def held(session: Session, exchange: str, symbol: str) -> Decimal:
    """The position's amount now (0 when there is none); no lock."""
    amount = session.scalar(
        select(Position.amount).where(Position.exchange == exchange, Position.symbol == symbol)
    )
    return Decimal(amount or 0)


def positions(session: Session, exchange: str | None = None) -> Sequence[Position]:
    query = select(Position).where(Position.amount != 0)
    if exchange:
        query = query.where(Position.exchange == exchange)
    return session.scalars(query.order_by(Position.exchange, Position.symbol)).all()


def realized_since(session: Session, since: Any) -> Decimal:
    from sqlalchemy import func

    total = session.scalar(
        select(func.coalesce(func.sum(Fill.realized_pnl), 0)).where(Fill.filled_at >= since)
    )
    return Decimal(total or 0)
