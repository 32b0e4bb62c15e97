"""The signal agent's routes: validate, call the service, return a schema."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import AwareDatetime

from agents.signal import analysis, indicators, models_service, service
from agents.signal.repository import SignalFilter
from agents.signal.runtime import RuntimeDep
from agents.signal.schemas import (
    GenerateRequest,
    GenerateResponse,
    IndicatorsResponse,
    Insights,
    ModelOut,
    ModelPerformance,
    Prediction,
    PredictRequest,
    SignalPage,
    TrainRequest,
)
from common.auth import CallerDep
from common.contracts import EXCHANGE_PATTERN, SYMBOL_PATTERN
from common.db import SessionDep
from common.errors import Problem, ServiceUnavailable, Unprocessable
from common.quant.features import FEATURES
from common.quant.strategies import STRATEGIES
from common.service import KitDep

router = APIRouter()
PathSymbol = Annotated[str, Path(description="CCXT symbol with a dash: BTC-USDT")]
ExchangeQ = Annotated[str, Query(pattern=EXCHANGE_PATTERN)]
OptionalExchange = Annotated[str | None, Query(pattern=EXCHANGE_PATTERN)]
OptionalSymbol = Annotated[str | None, Query(description="BTC/USDT or BTC-USDT")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "not found"}}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": Problem, "description": "a field to fix"}
}


def _symbol(raw: str, field: str = "symbol") -> str:
    symbol = raw.replace("-", "/").upper()
    if not re.match(SYMBOL_PATTERN, symbol):
        raise Unprocessable(
            f"{field}: {raw!r} is not a symbol; write it as BASE-QUOTE, e.g. BTC-USDT",
            field=field,
        )
    return symbol


# --- catalogues ----------------------------------------------------------------------------
@router.get("/indicators", tags=["indicators"])
def list_indicators() -> list[dict[str, Any]]:
    """The indicators and their parameters, in the order `name:p1:p2` takes them."""
    return indicators.describe()


@router.get("/strategies", tags=["signals"])
def list_strategies() -> list[dict[str, Any]]:
    """The named strategies and their parameters (shared with backtests)."""
    return [s.describe() for s in STRATEGIES.values()]


# --- indicators ----------------------------------------------------------------------------
@router.get("/indicators/{symbol}", tags=["indicators"], responses=INVALID)
async def get_indicators(
    symbol: PathSymbol,
    rt: RuntimeDep,
    exchange: ExchangeQ = "sim",
    timeframe: str = "1h",
    timeframes: Annotated[
        str | None, Query(description="comma list, e.g. 1h,4h,1d; overrides timeframe")
    ] = None,
    indicators: Annotated[
        str | None, Query(description="comma list like rsi:21,macd,bbands:20:2; omit: all")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=5000, description="bars per timeframe")] = 500,
    series: Annotated[bool, Query(description="also every bar's values")] = False,
) -> IndicatorsResponse:
    """TA-Lib indicators on the last closed bar, one block per timeframe."""
    return await analysis.indicators(
        rt,
        exchange=exchange,
        symbol=_symbol(symbol),
        timeframes=analysis.parse_timeframes(timeframe, timeframes),
        spec=indicators,
        limit=limit,
        series=series,
    )


# --- signals -------------------------------------------------------------------------------
@router.post("/signals/generate", tags=["signals"], responses={**INVALID, **NOT_FOUND})
async def generate(
    body: GenerateRequest, rt: RuntimeDep, kit: KitDep, caller: CallerDep
) -> GenerateResponse:
    """Each strategy's signal on the last closed bar and their ensemble; stored."""
    if kit.session_factory is None:
        raise ServiceUnavailable("this service has no database configured")
    return await service.generate(rt, kit.session_factory, body, caller.name)


@router.get("/signals", tags=["signals"])
def list_signals(
    session: SessionDep,
    symbol: OptionalSymbol = None,
    exchange: OptionalExchange = None,
    timeframe: str | None = None,
    strategy: Annotated[str | None, Query(description="a strategy name, or ensemble")] = None,
    since: Annotated[AwareDatetime | None, Query(description="generated at or after")] = None,
    until: Annotated[AwareDatetime | None, Query(description="generated at or before")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> SignalPage:
    """Stored signals, newest first."""
    where = SignalFilter(
        symbol=None if symbol is None else _symbol(symbol),
        exchange=exchange,
        timeframe=timeframe,
        strategy=strategy,
        since=since,
        until=until,
    )
    return service.list_signals(session, where, limit, offset)


# --- models --------------------------------------------------------------------------------
@router.get("/models/features", tags=["models"])
def list_features() -> list[dict[str, str]]:
    """The features a model can be trained on (all of them by default)."""
    return [{"name": name, "description": doc} for name, (_, doc) in FEATURES.items()]


@router.post("/models/train", tags=["models"], status_code=201, responses=INVALID)
async def train(
    body: TrainRequest, rt: RuntimeDep, session: SessionDep, caller: CallerDep
) -> ModelOut:
    """Train, walk-forward validate and store a new model version (not active yet)."""
    return await models_service.train(rt, session, body, caller.name)


@router.post("/models/predict", tags=["models"], responses={**INVALID, **NOT_FOUND})
async def predict(body: PredictRequest, rt: RuntimeDep, session: SessionDep) -> Prediction:
    """A model's P(up) for every bar of a window (default: the market's active model)."""
    return await models_service.predict(rt, session, body)


async def _model_filter(
    symbol: OptionalSymbol = None,
    exchange: OptionalExchange = None,
    timeframe: str | None = None,
    active: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    return {
        "exchange": exchange,
        "symbol": None if symbol is None else _symbol(symbol),
        "timeframe": timeframe,
        "active": active,
        "limit": limit,
    }


ModelFilter = Annotated[dict[str, Any], Depends(_model_filter)]


@router.get("/models", tags=["models"])
def list_models(session: SessionDep, where: ModelFilter) -> list[ModelOut]:
    """Stored models, newest first (without their bytes)."""
    return models_service.list_models(session, **where)


@router.get("/models/performance", tags=["models"])
def model_performance(session: SessionDep, where: ModelFilter) -> list[ModelPerformance]:
    """Per model: out-of-sample metrics and the backtest of its out-of-sample predictions."""
    return models_service.performance(session, **where)


@router.get("/models/{model_id}", tags=["models"], responses=NOT_FOUND)
def get_model(model_id: int, session: SessionDep) -> ModelOut:
    """One model, without its bytes."""
    return models_service.get_model(session, model_id)


@router.post(
    "/models/{model_id}/activate",
    tags=["models"],
    responses={**NOT_FOUND, 409: {"model": Problem, "description": "its bytes fail the digest"}},
)
def activate(model_id: int, rt: RuntimeDep, session: SessionDep) -> ModelOut:
    """Make this model its market's active one (the previous one is deactivated)."""
    return models_service.activate(rt, session, model_id)


# --- insights ------------------------------------------------------------------------------
@router.get("/autonomous/insights/{symbol}", tags=["insights"], responses=NOT_FOUND)
async def get_insights(
    symbol: PathSymbol,
    rt: RuntimeDep,
    session: SessionDep,
    exchange: ExchangeQ = "sim",
    timeframe: str = "1h",
    limit: Annotated[int, Query(ge=60, le=5000)] = 500,
) -> Insights:
    """What the indicators, the active model and the regime say, in words and numbers."""
    return await analysis.insights(
        rt,
        session,
        exchange=exchange,
        symbol=_symbol(symbol),
        timeframe=analysis.parse_timeframes(timeframe, None)[0],
        limit=limit,
    )
