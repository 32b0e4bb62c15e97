"""Requests and answers of the autonomous loop's routes."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.contracts import EXCHANGE_PATTERN, SYMBOL_PATTERN
from common.quant.bars import TIMEFRAME_MS

Symbol = Annotated[str, Field(pattern=SYMBOL_PATTERN, examples=["BTC/USDT"])]
RiskFraction = Annotated[
    Decimal, Field(gt=0, le=Decimal("0.1"), description="equity risked per trade, 0.01 = 1 %")
]
AtrMultiple = Annotated[
    Decimal, Field(gt=0, le=20, description="protective stop this many ATRs below the entry")
]


def _timeframe(value: str | None) -> str | None:
    if value is not None and value not in TIMEFRAME_MS:
        raise ValueError(f"{value!r} is not a timeframe; use one of {', '.join(TIMEFRAME_MS)}")
    return value


class StartRequest(BaseModel):
    """What the loop trades and how often."""

    model_config = ConfigDict(extra="forbid")

    exchange: str = Field("sim", pattern=EXCHANGE_PATTERN)
    symbols: list[Symbol] = Field(min_length=1, max_length=20)
    timeframe: str = "1h"
    strategy: str = "sma_cross"
    params: dict[str, Any] = Field(default_factory=dict)
    interval: int = Field(60, ge=5, le=86_400, description="seconds between ticks")
    risk_fraction: RiskFraction = Decimal("0.01")
    atr_multiple: AtrMultiple = Decimal(2)

    _tf = field_validator("timeframe")(_timeframe)


class DecideRequest(BaseModel):
    """One tick for one symbol. Unset fields come from the running loop, else the defaults."""

    model_config = ConfigDict(extra="forbid")

    symbol: Symbol
    exchange: str | None = Field(None, pattern=EXCHANGE_PATTERN)
    timeframe: str | None = None
    strategy: str | None = None
    params: dict[str, Any] | None = None
    risk_fraction: RiskFraction | None = None
    atr_multiple: AtrMultiple | None = None

    _tf = field_validator("timeframe")(_timeframe)


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("stopped by the operator", min_length=1, max_length=500)


class RunView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    status: str
    exchange: str
    symbols: list[str]
    timeframe: str
    strategy: str
    params: dict[str, Any]
    interval_s: int
    risk_fraction: Decimal
    atr_multiple: Decimal
    started_by: str
    started_at: datetime
    stopped_by: str | None
    stopped_at: datetime | None
    stop_reason: str | None
    state_seen_at: datetime | None
    ticks: int
    last_tick_at: datetime | None


class DecisionView(BaseModel):
    """What one tick saw, decided and did."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int | None
    decided_at: datetime
    exchange: str
    symbol: str
    timeframe: str
    strategy: str
    bar_ts: datetime | None
    signal: str = Field(description="the strategy's signal on the last closed bar")
    action: str = Field(description="what the tick did: buy, sell or none")
    outcome: str = Field(description="ordered, skipped, refused or error")
    reasons: dict[str, Any]
    client_order_id: str | None
    order_id: int | None
    order_status: str | None
    detail: str


class StatusView(BaseModel):
    running: bool
    run: RunView | None
    recent_decisions: list[DecisionView]
