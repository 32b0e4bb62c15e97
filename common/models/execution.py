"""Execution's ledger: orders (with their state machine), fills and positions."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import Base
from common.money import ledger_numeric


def _now() -> datetime:
    return datetime.now(UTC)


class Order(Base):
    """One order, from the moment it is claimed (pending) to its final state.

    The row exists, committed, before the exchange is called; `client_order_id` is
    the idempotency key and the handle used to reconcile an order whose fate is unknown.
    """

    __tablename__ = "orders"
    __table_args__ = (
        # The orders not yet final, per exchange: what the reconciler, the bracket keeper
        # and every approval read (execution_0003).
        Index(
            "ix_orders_unfinished",
            "exchange",
            "id",
            postgresql_where=text("status IN ('pending', 'unknown', 'open', 'partially_filled')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    client_order_id: Mapped[str] = mapped_column(String(64), unique=True)
    exchange: Mapped[str] = mapped_column(String(64), index=True)
    symbol: Mapped[str] = mapped_column(String(41), index=True)
    side: Mapped[str] = mapped_column(String(4))
    type: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(ledger_numeric())
    price: Mapped[Decimal | None] = mapped_column(ledger_numeric())
    stop_price: Mapped[Decimal | None] = mapped_column(ledger_numeric())
    status: Mapped[str] = mapped_column(String(20), index=True)
    exchange_order_id: Mapped[str | None] = mapped_column(String(128))
    filled: Mapped[Decimal] = mapped_column(ledger_numeric(), default=Decimal(0))
    average_price: Mapped[Decimal | None] = mapped_column(ledger_numeric())
    fee: Mapped[Decimal] = mapped_column(ledger_numeric(), default=Decimal(0))
    reduce_only: Mapped[bool] = mapped_column(Boolean, default=False)
    stop_loss: Mapped[Decimal | None] = mapped_column(ledger_numeric())
    take_profit: Mapped[Decimal | None] = mapped_column(ledger_numeric())
    trailing_stop_pct: Mapped[Decimal | None] = mapped_column(ledger_numeric())
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"))
    # What the order is for: entry (a caller's); bracket_sl / bracket_tp (a protective leg
    # resting on the exchange); close, flatten, stop_loss, take_profit, trailing_stop
    # (a market close by execution: asked for, a halt, or a leg execution watched).
    role: Mapped[str] = mapped_column(String(16), default="entry")
    reason: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Set in Python so a committed row needs no reload to be read (sessions expire nothing).
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=_now
    )


class Fill(Base):
    """One trade of an order; unique per exchange trade id, so recording is idempotent."""

    __tablename__ = "fills"
    # (Today's realized PnL is kept per day by triggers: RealizedPnlDay.)
    __table_args__ = (UniqueConstraint("exchange", "trade_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    exchange: Mapped[str] = mapped_column(String(64))
    trade_id: Mapped[str] = mapped_column(String(128))
    symbol: Mapped[str] = mapped_column(String(41))
    side: Mapped[str] = mapped_column(String(4))
    amount: Mapped[Decimal] = mapped_column(ledger_numeric())
    price: Mapped[Decimal] = mapped_column(ledger_numeric())
    fee: Mapped[Decimal] = mapped_column(ledger_numeric())
    fee_currency: Mapped[str] = mapped_column(String(20))
    realized_pnl: Mapped[Decimal] = mapped_column(ledger_numeric(), default=Decimal(0))
    filled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RealizedPnlDay(Base):
    """Realized PnL per UTC day and market: what risk's daily loss limit reads on each
    approval, the day's rows (one per market traded) instead of a sum over its fills.
    Kept by triggers on `fills` (migration execution_0004): every insert, update and
    delete of a fill moves its day's total, so nothing writes this table but the
    database itself."""

    __tablename__ = "realized_pnl_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    exchange: Mapped[str] = mapped_column(String(64), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(41), primary_key=True)
    realized: Mapped[Decimal] = mapped_column(ledger_numeric())


class Position(Base):
    """Net position per exchange and symbol: signed amount, average entry, realized PnL."""

    __tablename__ = "positions"

    exchange: Mapped[str] = mapped_column(String(64), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(41), primary_key=True)
    amount: Mapped[Decimal] = mapped_column(ledger_numeric(), default=Decimal(0))
    entry_price: Mapped[Decimal] = mapped_column(ledger_numeric(), default=Decimal(0))
    realized_pnl: Mapped[Decimal] = mapped_column(ledger_numeric(), default=Decimal(0))
    stop_loss: Mapped[Decimal | None] = mapped_column(ledger_numeric())
    take_profit: Mapped[Decimal | None] = mapped_column(ledger_numeric())
    trailing_stop_pct: Mapped[Decimal | None] = mapped_column(ledger_numeric())
    trail_extreme: Mapped[Decimal | None] = mapped_column(ledger_numeric())
    # Set in Python so a committed row needs no reload to be read (sessions expire nothing).
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=_now
    )
