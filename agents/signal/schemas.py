"""The signal agent's request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from common.contracts import EXCHANGE_PATTERN, SYMBOL_PATTERN
from common.errors import Unprocessable
from common.quant.bars import TIMEFRAME_MS
from common.quant.features import validate_features
from common.quant.strategies import get_strategy

Symbol = Annotated[str, Field(pattern=SYMBOL_PATTERN, examples=["BTC/USDT"])]
Exchange = Annotated[str, Field(pattern=EXCHANGE_PATTERN)]
ModelKind = Literal["logistic_regression", "random_forest", "gradient_boosting"]
Action = Literal["buy", "sell", "hold"]


def check_timeframe(value: str) -> str:
    if value not in TIMEFRAME_MS:
        raise ValueError(f"{value!r} is not a timeframe; use one of {', '.join(TIMEFRAME_MS)}")
    return value


class _Market(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exchange: Exchange = "sim"
    symbol: Symbol
    timeframe: str = Field("1h", examples=["1h"])

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, value: str) -> str:
        return check_timeframe(value)


# --- signals ---------------------------------------------------------------------------------
class StrategyChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class GenerateRequest(_Market):
    """Signals on the last closed bar from the named strategies (default: every rule
    strategy, plus `ml` when an active model exists) and their ensemble."""

    strategies: list[str | StrategyChoice] | None = Field(
        None, description='names, or {"name", "params"}; omit for all', max_length=20
    )
    limit: int = Field(500, ge=50, le=5000, description="bars of history to compute on")
    horizon: int = Field(5, ge=1, le=200, description="bars ahead the confidence is judged on")
    threshold: float = Field(0.25, gt=0, le=1, description="|ensemble score| that acts")

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, value: list[str | StrategyChoice] | None) -> list[StrategyChoice] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one strategy, or leave it out for all")
        choices = [StrategyChoice(name=v) if isinstance(v, str) else v for v in value]
        seen: set[str] = set()
        for i, choice in enumerate(choices):
            try:
                strategy = get_strategy(choice.name, f"strategies[{i}].name")
                strategy.validate(choice.params, f"strategies[{i}].params")
            except Unprocessable as exc:
                # A cross-parameter check names `params.x`: say which strategy it is about.
                where = f"strategies[{i}]"
                message = exc.message if exc.message.startswith(where) else f"{where}.{exc.message}"
                raise ValueError(message) from None
            if choice.name in seen:
                raise ValueError(f"strategies[{i}]: {choice.name!r} is listed twice")
            seen.add(choice.name)
        return choices


class StrategySignal(BaseModel):
    strategy: str
    params: dict[str, float]
    action: Action
    strength: float = Field(description="the strategy's strength on the bar, -1..1")
    position: int = Field(description="what the strategy would hold now: 1 long, -1 short, 0 flat")
    events: list[str] = Field(description="events on the bar: entries, exits, short_entries ...")


class ConfidenceBasis(BaseModel):
    method: str
    horizon: int
    bucket: tuple[float, float] = Field(description="the |score| range of the samples")
    samples: int
    hits: int
    hit_rate: float | None
    excluded_until_ts: int | None = Field(
        None, description="bars up to this time were left out (the model's training data)"
    )


class EnsembleSignal(BaseModel):
    action: Action
    score: float = Field(description="mean of the strategies' strengths, -1..1")
    threshold: float
    confidence: float = Field(description="smoothed past hit rate of scores this size, 0..1")
    basis: ConfidenceBasis
    strategies: list[str]


class GenerateResponse(BaseModel):
    batch_id: str
    exchange: str
    symbol: str
    timeframe: str
    generated_at: datetime
    bar_ts: int = Field(description="open time of the last closed bar (epoch ms)")
    price: float = Field(description="that bar's close")
    bars: int
    model_id: int | None
    strategies: list[StrategySignal]
    ensemble: EnsembleSignal


class SignalOut(BaseModel):
    id: int
    generated_at: datetime
    batch_id: str
    exchange: str
    symbol: str
    timeframe: str
    strategy: str
    action: Action
    strength: float
    position: int | None
    confidence: float | None
    bar_ts: int
    price: float
    params: dict[str, Any]
    details: dict[str, Any]
    model_id: int | None
    requested_by: str


class SignalPage(BaseModel):
    items: list[SignalOut]
    next_offset: int | None = Field(description="pass as `offset` for the next page; null: end")


# --- indicators ------------------------------------------------------------------------------
class IndicatorValue(BaseModel):
    name: str
    params: dict[str, float]
    values: dict[str, float | None] = Field(description="each output on the last closed bar")
    series: dict[str, list[float | None]] | None = None


class TimeframeIndicators(BaseModel):
    timeframe: str
    bars: int
    bar_ts: int | None = Field(description="open time of the last closed bar (epoch ms)")
    close: float | None
    indicators: dict[str, IndicatorValue]
    ts: list[int] | None = Field(None, description="bar times of the series (series=true)")


class IndicatorsResponse(BaseModel):
    exchange: str
    symbol: str
    timeframes: list[TimeframeIndicators]


# --- models ----------------------------------------------------------------------------------
class _Window(BaseModel):
    since: AwareDatetime | None = Field(None, description="first bar at or after")
    until: AwareDatetime | None = Field(None, description="bars opening before (exclusive)")


class TrainRequest(_Market, _Window):
    horizon: int = Field(5, ge=1, le=200, description="bars ahead the label looks")
    model: ModelKind
    params: dict[str, Any] | None = None
    features: list[str] | None = Field(None, description="omit for all (GET /models/features)")
    limit: int = Field(2000, ge=200, le=50_000, description="bars to train on (the latest)")
    splits: int = Field(5, ge=2, le=20, description="walk-forward folds")
    threshold: float = Field(0.55, ge=0.5, lt=1, description="P(up) that goes long in the backtest")
    fee_rate: float = Field(0.001, ge=0, le=0.05, description="per change of position")

    @field_validator("features")
    @classmethod
    def _features(cls, value: list[str] | None) -> list[str] | None:
        try:
            return None if value is None else validate_features(value)
        except Unprocessable as exc:
            raise ValueError(exc.message) from None


class PredictRequest(_Market, _Window):
    model_id: int | None = Field(None, description="omit: the active model for the market")
    limit: int = Field(500, ge=1, le=50_000)


class ModelOut(BaseModel):
    id: int
    created_at: datetime
    created_by: str
    exchange: str
    symbol: str
    timeframe: str
    version: int
    kind: str
    horizon: int
    params: dict[str, Any]
    features: list[str]
    metrics: dict[str, Any]
    bars: int
    train_start_ts: int
    train_end_ts: int
    digest: str
    active: bool
    activated_at: datetime | None


class ModelPerformance(BaseModel):
    id: int
    exchange: str
    symbol: str
    timeframe: str
    version: int
    kind: str
    horizon: int
    active: bool
    out_of_sample: dict[str, Any]
    backtest: dict[str, Any]


class Prediction(BaseModel):
    model_id: int
    version: int
    kind: str
    horizon: int
    exchange: str
    symbol: str
    timeframe: str
    ts: list[int]
    probability: list[float | None] = Field(description="P(close rises over horizon bars)")


# --- insights --------------------------------------------------------------------------------
class Insights(BaseModel):
    exchange: str
    symbol: str
    timeframe: str
    bar_ts: int
    price: float
    summary: str = Field(description="plain English")
    facts: dict[str, Any] = Field(description="the numbers behind the summary")
