"""Risk's request and response models. The shapes execution shares live in common.contracts."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from common.contracts import (
    EXCHANGE_PATTERN,
    ApplyTradingStateResult,
    CheckResult,
    PortfolioView,
    TradingState,
    TradingStateView,
)
from common.money import SCALE, Fraction, Positive

# A multiple of equity (1 = 100 %); above 1 only with leverage.
Ratio = Annotated[Decimal, Field(gt=0, le=100, max_digits=38, decimal_places=SCALE)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


# --- limits --------------------------------------------------------------------------------
class Limits(BaseModel):
    """The operator's risk limits. Fractions of equity are written as 0.25 for 25 %."""

    model_config = ConfigDict(extra="forbid")

    max_order_notional: Positive = Field(Decimal(10000), description="quote currency per order")
    max_position_pct: Ratio = Field(Decimal("0.25"), description="one position / equity")
    max_gross_exposure_pct: Ratio = Field(Decimal("1.0"), description="sum of |notional| / equity")
    max_heat_pct: Fraction = Field(Decimal("0.06"), description="money at risk to stops / equity")
    default_stop_pct: Fraction = Field(
        Decimal("0.05"), description="stop distance assumed for a position without a stop"
    )
    daily_loss_limit: Positive = Field(Decimal(500), description="realized + unrealized, quote")
    max_drawdown_pct: Fraction = Field(Decimal("0.2"), description="from the equity peak; HALTs")
    max_orders_per_minute: int = Field(60, ge=1, le=100_000)
    duplicate_window_s: int = Field(5, ge=0, le=86_400, description="0 turns the check off")
    price_collar_pct: Fraction = Field(Decimal("0.05"), description="|price - ref| / ref")
    max_reference_age_ms: int = Field(5000, ge=1, le=3_600_000)

    @field_validator("*", mode="after")
    @classmethod
    def _plain(cls, value: object) -> object:
        # Stored as Numeric(38, 18): show 0.25, not 0.250000000000000000.
        if isinstance(value, Decimal):
            return Decimal(format(value.normalize(), "f"))
        return value


class LimitsView(Limits):
    updated_by: str | None = None  # None: the defaults, never changed
    updated_at: datetime | None = None


# --- trading state -------------------------------------------------------------------------
class HaltRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason
    flatten: bool = Field(False, description="also close every position at market")


class ReasonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason


class BroadcastOutcome(BaseModel):
    published: bool
    receivers: int = 0
    detail: str


class ExecutionOutcome(BaseModel):
    applied: bool
    detail: str
    result: ApplyTradingStateResult | None = None


class StateChange(BaseModel):
    """A trading-state change as persisted, broadcast and applied by execution."""

    state: TradingStateView
    previous_state: TradingState
    broadcast: BroadcastOutcome
    execution: ExecutionOutcome


class StateHistoryEntry(BaseModel):
    changed_at: datetime
    previous_state: TradingState
    state: TradingState
    reason: str
    changed_by: str
    flatten: bool


# --- pre-trade decisions -------------------------------------------------------------------
class StoredCheck(BaseModel):
    checked_at: datetime
    client_order_id: str
    approved: bool
    state: TradingState
    requested_by: str
    checks: list[CheckResult]


# --- equity peak -----------------------------------------------------------------------------
class PeakResetRequest(BaseModel):
    """Re-base the drawdown breaker, e.g. after a withdrawal or once a drawdown is accepted."""

    model_config = ConfigDict(extra="forbid")

    reason: Reason
    equity: Positive | None = Field(None, description="new peak; default: the last equity seen")
    account: str | None = Field(
        None, pattern=EXCHANGE_PATTERN, description="one account's peak; default: the single peak"
    )


# --- position sizing -------------------------------------------------------------------------
class _SizingBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    equity: Positive
    entry_price: Positive
    amount_step: Positive | None = Field(None, description="round the amount down to this step")


class FixedFractionalSizing(_SizingBase):
    """Risk `risk_fraction` of equity between entry and stop."""

    method: Literal["fixed_fractional"]
    stop_price: Positive
    risk_fraction: Fraction


class KellySizing(_SizingBase):
    """Allocate kelly_fraction x (W - (1 - W) / R) of equity; nothing without an edge."""

    method: Literal["kelly"]
    win_rate: Annotated[Decimal, Field(ge=0, le=1, max_digits=20, decimal_places=SCALE)]
    payoff_ratio: Positive
    kelly_fraction: Fraction = Field(Decimal("0.5"), description="0.5 = half Kelly")


class AtrSizing(_SizingBase):
    """Risk `risk_fraction` of equity with the stop `atr_multiple` ATRs away."""

    method: Literal["atr"]
    atr: Positive
    risk_fraction: Fraction
    atr_multiple: Annotated[Decimal, Field(gt=0, le=100)] = Decimal(2)


SizingRequest = Annotated[
    FixedFractionalSizing | KellySizing | AtrSizing, Field(discriminator="method")
]


class SizingMethod(StrEnum):
    fixed_fractional = "fixed_fractional"
    kelly = "kelly"
    atr = "atr"


class PositionSize(BaseModel):
    method: SizingMethod
    amount: Decimal
    notional: Decimal
    fraction_of_equity: Decimal
    risk_amount: Decimal | None = Field(None, description="money lost if the stop is hit")
    stop_distance: Decimal | None = None
    kelly_edge: Decimal | None = Field(None, description="full-Kelly fraction W - (1 - W) / R")
    capped_by: str | None = Field(None, description="the limit that shrank the amount, if any")
    inputs: dict[str, Decimal | str]


# --- snapshots, exposure, drawdown, VaR ------------------------------------------------------
class SnapshotIn(PortfolioView):
    taken_at: AwareDatetime | None = Field(
        None, description="with a time zone; default: when risk receives it"
    )


class SnapshotOut(BaseModel):
    taken_at: datetime
    equity: Decimal
    peak_equity: Decimal
    drawdown_pct: Decimal
    state: TradingState


class ExposureLine(BaseModel):
    exchange: str
    symbol: str
    amount: Decimal
    mark_price: Decimal
    notional: Decimal  # signed: > 0 long
    pct_of_equity: Decimal | None


class Exposure(BaseModel):
    taken_at: datetime
    equity: Decimal
    gross: Decimal
    net: Decimal
    gross_pct_of_equity: Decimal | None
    net_pct_of_equity: Decimal | None
    positions: list[ExposureLine]


class AccountDrawdown(BaseModel):
    """One account's breaker: its peak, its last equity and how far below the peak it is."""

    account: str
    peak_equity: Decimal
    peak_at: datetime
    equity: Decimal
    updated_at: datetime
    current_drawdown_pct: Decimal


class Drawdown(BaseModel):
    """The breaker's view (peak and last equity seen; per account for execution, which
    names its accounts) and the snapshot series' statistics."""

    accounts: list[AccountDrawdown] = Field(default_factory=list)
    peak_equity: Decimal
    equity: Decimal | None
    current_drawdown_pct: Decimal
    max_drawdown_limit_pct: Decimal
    snapshots: int
    max_drawdown_pct: float | None
    max_drawdown_peak_at: datetime | None
    max_drawdown_trough_at: datetime | None
    max_drawdown_duration_s: float | None = Field(
        None, description="from that peak until equity regained it, or until the last snapshot"
    )
    recovered: bool | None


class VarMethod(StrEnum):
    historical = "historical"
    parametric = "parametric"
    montecarlo = "montecarlo"


class ValueAtRisk(BaseModel):
    method: VarMethod
    confidence: float
    horizon_days: float
    returns: int
    interval_days: float = Field(description="median time between snapshots")
    var_pct: float = Field(description="loss not exceeded with `confidence`, fraction of equity")
    cvar_pct: float = Field(description="mean loss beyond the VaR, fraction of equity")
    equity: Decimal
    var_amount: Decimal
    cvar_amount: Decimal
