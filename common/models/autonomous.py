"""The signal agent's autonomous loop: its runs (what it trades, how often) and every
decision a tick made, with the reasons and what happened to the order.

Owned by the signal agent. At most one run is `running` at a time (a partial unique
index says so); a run stops when told or when trading is halted, and never restarts
by itself.
"""

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime, Identity, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import Base
from common.money import ledger_numeric


class AutonomousRun(Base):
    __tablename__ = "autonomous_runs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # running | stopped
    exchange: Mapped[str] = mapped_column(String(32))
    symbols: Mapped[list[str]] = mapped_column(JSONB)
    timeframe: Mapped[str] = mapped_column(String(8))
    strategy: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB)
    interval_s: Mapped[int] = mapped_column(Integer)
    risk_fraction: Mapped[Decimal] = mapped_column(ledger_numeric())
    atr_multiple: Mapped[Decimal] = mapped_column(ledger_numeric())
    started_by: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    stopped_by: Mapped[str | None] = mapped_column(String(64))
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stop_reason: Mapped[str | None] = mapped_column(Text)
    # The trading-state change (risk's changed_at) the loop has last seen: a newer one
    # with a HALTED between means a halt happened while the loop was not looking.
    state_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ticks: Mapped[int] = mapped_column(Integer, default=0)
    last_tick_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AutonomousDecision(Base):
    __tablename__ = "autonomous_decisions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    run_id: Mapped[int | None] = mapped_column(BigInteger)  # None: a one-off /decide
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    exchange: Mapped[str] = mapped_column(String(32))
    symbol: Mapped[str] = mapped_column(String(32))
    timeframe: Mapped[str] = mapped_column(String(8))
    strategy: Mapped[str] = mapped_column(String(64))
    bar_ts: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    signal: Mapped[str] = mapped_column(String(8))  # buy | sell | hold
    action: Mapped[str] = mapped_column(String(16))  # what was done: buy | sell | none
    outcome: Mapped[str] = mapped_column(String(16))  # ordered | skipped | refused | error
    reasons: Mapped[dict[str, Any]] = mapped_column(JSONB)
    client_order_id: Mapped[str | None] = mapped_column(String(64))
    order_id: Mapped[int | None] = mapped_column(BigInteger)
    order_status: Mapped[str | None] = mapped_column(String(24))
    detail: Mapped[str] = mapped_column(Text)
