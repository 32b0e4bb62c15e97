"""The backtest agent's tables: OHLCV candles and the jobs that fetch them.

Owned by the backtest agent; other agents ask it over HTTP (`/data/...`). Candles
are market data feeding float indicators and backtests, not ledger money: prices
and volumes are double precision. A float64 round-trips every decimal string of at
most 15 significant digits, which covers every price and volume an exchange sends.
"""

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Double, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import Base

JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")


class Ohlcv(Base):
    """One candle, keyed by (exchange, symbol, timeframe, open time).

    A TimescaleDB hypertable where the extension exists, a plain table otherwise;
    the primary key serves range scans of one series in either direction. `time` is
    a timestamptz rather than bigint milliseconds: it reads as a time in SQL,
    TimescaleDB chunks it without an integer-now function, and the binary COPY the
    agent reads with hands it over as int64 microseconds, one numpy division away
    from milliseconds.
    """

    __tablename__ = "ohlcv"

    exchange: Mapped[str] = mapped_column(String(64), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(41), primary_key=True)
    timeframe: Mapped[str] = mapped_column(String(4), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    open: Mapped[float] = mapped_column(Double)
    high: Mapped[float] = mapped_column(Double)
    low: Mapped[float] = mapped_column(Double)
    close: Mapped[float] = mapped_column(Double)
    volume: Mapped[float] = mapped_column(Double)


class OhlcvFetchJob(Base):
    """A background fetch of one series' range from an exchange (through execution).

    `plan` is the list of [from_ms, to_ms) ranges the job must fetch (what was not
    stored when it was created); `cursor` is the next candle time to ask for,
    written in the same transaction as each page of candles, so a job picked up
    again after a crash continues exactly where the last committed page ended.
    """

    __tablename__ = "ohlcv_fetch_jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'cancelled')", name="status"
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    exchange: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(41))
    timeframe: Mapped[str] = mapped_column(String(4))
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), index=True)
    total: Mapped[int] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer)
    fetched: Mapped[int] = mapped_column(Integer, default=0)
    rows_written: Mapped[int] = mapped_column(Integer, default=0)
    plan: Mapped[list[list[int]]] = mapped_column(JSONB)
    cursor: Mapped[int | None] = mapped_column(BigInteger)
    gaps: Mapped[list[list[int]]] = mapped_column(JSONB, default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
