"""Risk's tables: the trading state (kill switch), limits, check decisions, the equity
peak, equity snapshots and the outbox of audit events still to deliver to compliance.

Owned by the risk agent; other agents ask it over HTTP. Risk keeps no ledger: the
portfolio comes from execution with every check and every snapshot.
"""

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Identity,
    Integer,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import Base
from common.money import ledger_numeric

STATES = "state IN ('ACTIVE', 'REDUCING', 'HALTED')"


class RiskTradingState(Base):
    """The one current trading state (a single row, id 1): what every order is checked against."""

    __tablename__ = "risk_trading_state"
    __table_args__ = (
        CheckConstraint("id = 1", name="singleton"),
        CheckConstraint(STATES, name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    changed_by: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    flatten: Mapped[bool] = mapped_column(Boolean, default=False)


class RiskTradingStateChange(Base):
    """Every change of the trading state, including a repeated halt that only updates the reason."""

    __tablename__ = "risk_trading_state_history"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    previous_state: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    changed_by: Mapped[str] = mapped_column(String(64))
    flatten: Mapped[bool] = mapped_column(Boolean, default=False)


class RiskLimits(Base):
    """The operator's limits (a single row, id 1); absent until the first `PUT /limits`."""

    __tablename__ = "risk_limits"
    __table_args__ = (CheckConstraint("id = 1", name="singleton"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    max_order_notional: Mapped[Decimal] = mapped_column(ledger_numeric())
    max_position_pct: Mapped[Decimal] = mapped_column(ledger_numeric())
    max_gross_exposure_pct: Mapped[Decimal] = mapped_column(ledger_numeric())
    max_heat_pct: Mapped[Decimal] = mapped_column(ledger_numeric())
    default_stop_pct: Mapped[Decimal] = mapped_column(ledger_numeric())
    daily_loss_limit: Mapped[Decimal] = mapped_column(ledger_numeric())
    max_drawdown_pct: Mapped[Decimal] = mapped_column(ledger_numeric())
    max_orders_per_minute: Mapped[int] = mapped_column(Integer)
    duplicate_window_s: Mapped[int] = mapped_column(Integer)
    price_collar_pct: Mapped[Decimal] = mapped_column(ledger_numeric())
    max_reference_age_ms: Mapped[int] = mapped_column(Integer)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RiskEquityPeak(Base):
    """The highest equity risk has been sent (a single row, id 1): the drawdown breaker's base."""

    __tablename__ = "risk_equity_peak"
    __table_args__ = (CheckConstraint("id = 1", name="singleton"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    peak_equity: Mapped[Decimal] = mapped_column(ledger_numeric())
    peak_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_equity: Mapped[Decimal | None] = mapped_column(ledger_numeric())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RiskAccountPeak(Base):
    """One account's highest equity (an account per exchange execution trades): the
    drawdown breaker's base for the checks and snapshots that name that account."""

    __tablename__ = "risk_account_peaks"

    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    peak_equity: Mapped[Decimal] = mapped_column(ledger_numeric())
    peak_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_equity: Mapped[Decimal] = mapped_column(ledger_numeric())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RiskCheck(Base):
    """One pre-trade decision. Approved rows feed the rate limit and duplicate detection."""

    __tablename__ = "risk_checks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    client_order_id: Mapped[str] = mapped_column(String(64), index=True)
    exchange: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(41))
    side: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(ledger_numeric())
    price: Mapped[Decimal | None] = mapped_column(ledger_numeric())
    reduce_only: Mapped[bool] = mapped_column(Boolean)
    approved: Mapped[bool] = mapped_column(Boolean)
    state: Mapped[str] = mapped_column(String(16))
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    requested_by: Mapped[str] = mapped_column(String(64))


class RiskEquitySnapshot(Base):
    """Execution's portfolio at a point in time (a TimescaleDB hypertable where available)."""

    __tablename__ = "risk_equity_snapshots"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    taken_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    equity: Mapped[Decimal] = mapped_column(ledger_numeric())
    cash: Mapped[Decimal] = mapped_column(ledger_numeric())
    realized_pnl_today: Mapped[Decimal] = mapped_column(ledger_numeric())
    gross_exposure: Mapped[Decimal] = mapped_column(ledger_numeric())
    net_exposure: Mapped[Decimal] = mapped_column(ledger_numeric())
    positions: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
