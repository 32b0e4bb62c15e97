"""The backtest agent's backtest runs: one row per run, its trades, its equity curve.

A run's request, stats and progress live in `backtests`; its trades in
`backtest_trades` (one row each, written by one binary COPY); its equity curve in
`backtest_equity` as two compressed arrays, since a year of one-minute bars is
525,600 points that are only ever read whole (then downsampled for a chart).
"""

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import CHAR, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import Base

RUN_STATUSES = ("queued", "running", "done", "failed", "cancelled")
RUN_STAGES = ("queued", "loading_bars", "signals", "simulating", "saving", "finished")


class BacktestRun(Base):
    """One backtest: what was asked (`request`, normalised), how far it got, the stats.

    `exchange`, `symbol`, `timeframe` and `strategy` repeat the request's so the list
    filters on plain indexed columns. `duration_ms` is from start to finish of the
    last attempt; `attempts` counts starts (a run interrupted by a restart is run again).
    """

    __tablename__ = "backtests"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'cancelled')", name="status"
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    stage: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Double)
    exchange: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(41))
    timeframe: Mapped[str] = mapped_column(String(4))
    strategy: Mapped[str] = mapped_column(String(64))
    fill: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any]] = mapped_column(JSONB)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    bars: Mapped[int | None] = mapped_column(Integer)
    resampled_from: Mapped[str | None] = mapped_column(String(4))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    requested_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int | None] = mapped_column(Integer)


class BacktestTrade(Base):
    """One closed (or, at the end, marked) trade of a run, numbered from 0.

    `side` and `exit_reason` are fixed-width `char` columns ('long ', 'short';
    'signal', 'stop_loss', …, blank-padded): readable in SQL, compared without the
    padding, and fixed-size rows let the whole trade list go out as one binary COPY
    built by numpy.
    """

    __tablename__ = "backtest_trades"

    backtest_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("backtests.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    side: Mapped[str] = mapped_column(CHAR(5))
    entry_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    exit_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    entry_bar: Mapped[int] = mapped_column(Integer)
    exit_bar: Mapped[int] = mapped_column(Integer)
    size: Mapped[float] = mapped_column(Double)
    entry_price: Mapped[float] = mapped_column(Double)
    exit_price: Mapped[float] = mapped_column(Double)
    fees: Mapped[float] = mapped_column(Double)
    pnl: Mapped[float] = mapped_column(Double)
    return_pct: Mapped[float] = mapped_column(Double)
    exit_reason: Mapped[str] = mapped_column(CHAR(13))


class BacktestEquity(Base):
    """A run's equity curve, one value per bar marked at its close.

    `equity`: the float64 values (little-endian), zlib-compressed; `ts_deltas`: the
    int64 steps between bar open times after `first_ts` (epoch ms), zlib-compressed —
    a regular series compresses to almost nothing, and a series with gaps needs no
    special case. Both columns are stored EXTERNAL: PostgreSQL does not try to
    compress them again.
    """

    __tablename__ = "backtest_equity"

    backtest_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("backtests.id", ondelete="CASCADE"), primary_key=True
    )
    count: Mapped[int] = mapped_column(Integer)
    first_ts: Mapped[int] = mapped_column(BigInteger)
    ts_deltas: Mapped[bytes] = mapped_column(LargeBinary)
    equity: Mapped[bytes] = mapped_column(LargeBinary)
