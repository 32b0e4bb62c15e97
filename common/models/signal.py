"""The signal agent's tables: every signal it produced, and its versioned ML models.

Owned by the signal agent; others ask it over HTTP (`GET /signals`, `GET /models`).
"""

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import Base

ACTIONS = "action IN ('buy', 'sell', 'hold')"
MODEL_KINDS = "kind IN ('logistic_regression', 'random_forest', 'gradient_boosting')"


class SignalRecord(Base):
    """One strategy's (or the ensemble's) signal for one bar, as `POST /signals/generate`
    answered it. A TimescaleDB hypertable on `generated_at` where available.

    The rows of one call share `batch_id`; the ensemble's row has strategy `ensemble`.
    """

    __tablename__ = "signals"
    __table_args__ = (CheckConstraint(ACTIONS, name="action"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    generated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(32))
    exchange: Mapped[str] = mapped_column(String(32))
    symbol: Mapped[str] = mapped_column(String(32))
    timeframe: Mapped[str] = mapped_column(String(8))
    strategy: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(8))
    strength: Mapped[float] = mapped_column(Float)
    position: Mapped[int | None] = mapped_column(SmallInteger)
    confidence: Mapped[float | None] = mapped_column(Float)
    bar_ts: Mapped[int] = mapped_column(BigInteger)  # open time of the bar, epoch ms
    price: Mapped[float] = mapped_column(Float)  # that bar's close
    params: Mapped[dict[str, Any]] = mapped_column(JSONB)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB)
    model_id: Mapped[int | None] = mapped_column(BigInteger)
    requested_by: Mapped[str] = mapped_column(String(64))


class SignalModel(Base):
    """A trained model: what it was trained on, how it did out of sample, and its bytes.

    `version` counts up per (exchange, symbol, timeframe); at most one model per that
    key is `active`. `model_bytes` is a pickle of our own scikit-learn estimator and is
    only ever unpickled after its SHA-256 matches `digest`.
    """

    __tablename__ = "signal_models"
    __table_args__ = (
        CheckConstraint(MODEL_KINDS, name="kind"),
        UniqueConstraint("exchange", "symbol", "timeframe", "version"),
        Index(
            "uq_signal_models_active",
            "exchange",
            "symbol",
            "timeframe",
            unique=True,
            postgresql_where=text("active"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str] = mapped_column(String(64))
    exchange: Mapped[str] = mapped_column(String(32))
    symbol: Mapped[str] = mapped_column(String(32))
    timeframe: Mapped[str] = mapped_column(String(8))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    horizon: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB)
    features: Mapped[list[str]] = mapped_column(JSONB)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONB)
    bars: Mapped[int] = mapped_column(Integer)  # bars fetched for training
    train_start_ts: Mapped[int] = mapped_column(BigInteger)  # first and last feature rows
    train_end_ts: Mapped[int] = mapped_column(BigInteger)  # the final fit used, epoch ms
    model_bytes: Mapped[bytes] = mapped_column(LargeBinary)
    digest: Mapped[str] = mapped_column(String(64))  # SHA-256 of model_bytes, hex
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
