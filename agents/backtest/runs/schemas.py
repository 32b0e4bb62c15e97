"""Request and response models of the backtest routes (`/backtest/...`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from agents.backtest.schemas import Exchange, JobStatus, Symbol, check_range
from agents.backtest.timegrid import Timeframe, TimeMs


class SizingIn(BaseModel):
    """How much an entry buys or sells (the engine's `Sizing`)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["all_in", "fixed_fractional", "kelly", "atr"] = "all_in"
    risk_fraction: float = Field(0.01, description="fixed_fractional and atr: equity at risk")
    win_rate: float | None = Field(None, description="kelly: W")
    payoff_ratio: float | None = Field(None, description="kelly: R")
    kelly_fraction: float = Field(0.5, description="kelly: share of the full Kelly bet")
    atr_period: int = 14
    atr_multiple: float = 2.0


class RunRequest(BaseModel):
    """One backtest of a named strategy over stored candles in [since, until)."""

    model_config = ConfigDict(extra="forbid")

    exchange: Exchange = "sim"
    symbol: Symbol
    timeframe: Timeframe
    since: TimeMs = Field(description="ISO-8601 or epoch ms; the first bar opens at or after")
    until: TimeMs = Field(description="ISO-8601 or epoch ms; bars opening before it")
    strategy: str = Field(description="a name from the signal agent's GET /strategies")
    params: dict[str, Any] | None = Field(None, description="omit for the strategy's defaults")
    initial_capital: float = 10_000.0
    fee_rate: float = Field(0.001, description="of the traded value, on entry and exit")
    slippage_bps: float = 0.0
    slippage_vol_mult: float = Field(0.0, description="extra slippage: this x ATR(14) / close")
    fill: Literal["next_open", "close"] = Field(
        "next_open", description="orders decided at a close fill at the next open, or then"
    )
    allow_short: bool = False
    stop_loss_pct: float | None = Field(None, description="fraction of the entry price")
    take_profit_pct: float | None = None
    trailing_stop_pct: float | None = None
    sizing: SizingIn | None = None
    model_id: int | None = Field(None, description="ml strategy: omit for the active model")

    @field_validator("until")
    @classmethod
    def _after_since(cls, until: int, info: ValidationInfo) -> int:
        return check_range(until, info)


class RunAccepted(BaseModel):
    id: str
    status: JobStatus


class RunView(BaseModel):
    """A backtest: where it is, and once done its stats (`buy_and_hold_return` is the
    benchmark, `fill` the fill convention)."""

    id: str
    status: JobStatus
    stage: str
    progress: float
    exchange: str
    symbol: str
    timeframe: str
    strategy: str
    params: dict[str, Any]
    fill: str
    model_id: int | None
    request: dict[str, Any]
    stats: dict[str, Any] | None
    bars: int | None
    resampled_from: str | None
    error: str | None
    attempts: int
    requested_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None


class RunList(BaseModel):
    items: list[RunView]
    total: int
    limit: int
    offset: int


class Trade(BaseModel):
    seq: int
    side: Literal["long", "short"]
    entry_time: datetime
    exit_time: datetime
    entry_bar: int
    exit_bar: int
    size: float
    entry_price: float
    exit_price: float
    fees: float
    pnl: float
    return_pct: float = Field(description="PnL (fees included) over the entry notional")
    exit_reason: str


class TradePage(BaseModel):
    id: str
    total: int
    offset: int
    limit: int
    items: list[Trade]
