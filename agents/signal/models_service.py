"""ML models: train (walk-forward validated), version, activate, predict.

Training runs in a thread, one at a time (`Runtime.training`), and answers 201 with
the stored model once it is done: a few seconds for thousands of bars. A model is
never unpickled per request: loaded estimators are cached by id and digest.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import numpy as np
from sklearn.base import ClassifierMixin
from sqlalchemy.orm import Session

from agents.signal import artifacts, training
from agents.signal import repository as repo
from agents.signal.repository import ModelRef
from agents.signal.runtime import Runtime
from agents.signal.schemas import (
    ModelOut,
    ModelPerformance,
    Prediction,
    PredictRequest,
    TrainRequest,
)
from common.errors import NotFound, Unprocessable
from common.models.signal import SignalModel
from common.quant.bars import Bars, Floats, timeframe_ms
from common.quant.features import WARMUP, validate_features


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _check_window(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and since > until:
        raise Unprocessable("until: must not be before since", field="until")


# --- loading -------------------------------------------------------------------------------
def _load_blocking(rt: Runtime, session: Session, ref: ModelRef) -> ClassifierMixin:
    cached = rt.models.get(ref.id, ref.digest)
    if cached is not None:
        return cached
    estimator = artifacts.load(ref.id, repo.model_bytes(session, ref.id), ref.digest)
    rt.models.put(ref.id, ref.digest, estimator)
    return estimator


async def estimator_for(rt: Runtime, session: Session, ref: ModelRef) -> ClassifierMixin:
    cached = rt.models.get(ref.id, ref.digest)
    if cached is not None:
        return cached
    return await asyncio.to_thread(_load_blocking, rt, session, ref)


async def predictions(rt: Runtime, session: Session, ref: ModelRef, bars: Bars) -> Floats:
    """The model's P(up) for every bar (NaN while its features warm up)."""
    estimator = await estimator_for(rt, session, ref)
    return await asyncio.to_thread(training.predict, estimator, bars, ref.features)


# --- training ------------------------------------------------------------------------------
async def train(rt: Runtime, session: Session, body: TrainRequest, caller: str) -> ModelOut:
    params = training.validate_params(body.model, body.params)
    features = validate_features(body.features)
    _check_window(body.since, body.until)
    bars = await rt.bars.fetch(
        body.exchange,
        body.symbol,
        body.timeframe,
        limit=body.limit,
        since=_ms(body.since),
        until=_ms(body.until),
    )
    async with rt.training:
        result = await asyncio.to_thread(
            training.train,
            bars,
            kind=body.model,
            params=params,
            features=features,
            horizon=body.horizon,
            splits=body.splits,
            timeframe=body.timeframe,
            threshold=body.threshold,
            fee_rate=body.fee_rate,
        )
    blob, digest = artifacts.dump(result.estimator)
    values = {
        "created_by": caller,
        "exchange": body.exchange,
        "symbol": body.symbol,
        "timeframe": body.timeframe,
        "kind": body.model,
        "horizon": body.horizon,
        "params": params,
        "features": features,
        "metrics": result.metrics,
        "bars": len(bars),
        "train_start_ts": result.train_start_ts,
        "train_end_ts": result.train_end_ts,
        "model_bytes": blob,
        "digest": digest,
    }
    model = await asyncio.to_thread(repo.add_model, session, values)
    rt.models.put(model.id, digest, result.estimator)
    return ModelOut.model_validate(model, from_attributes=True)


# --- the catalogue -------------------------------------------------------------------------
def _get(session: Session, model_id: int, lock: bool = False) -> SignalModel:
    model = repo.get_model(session, model_id, lock=lock)
    if model is None:
        raise NotFound(f"no model {model_id}; GET /models lists them")
    return model


def activate(rt: Runtime, session: Session, model_id: int) -> ModelOut:
    """Make the model its market's active one, after checking its bytes load."""
    model = _get(session, model_id, lock=True)
    ref = repo.model_ref(session, model_id)
    assert ref is not None
    _load_blocking(rt, session, ref)  # refuses a model whose digest does not match
    repo.activate(session, model)
    rt.active.forget((model.exchange, model.symbol, model.timeframe))
    return ModelOut.model_validate(model, from_attributes=True)


def list_models(
    session: Session,
    *,
    exchange: str | None,
    symbol: str | None,
    timeframe: str | None,
    active: bool | None,
    limit: int,
) -> list[ModelOut]:
    rows = repo.list_models(
        session, exchange=exchange, symbol=symbol, timeframe=timeframe, active=active, limit=limit
    )
    return [ModelOut.model_validate(row, from_attributes=True) for row in rows]


def performance(session: Session, **filters: str | bool | int | None) -> list[ModelPerformance]:
    rows = repo.list_models(session, **filters)  # type: ignore[arg-type]
    return [
        ModelPerformance(
            id=m.id,
            exchange=m.exchange,
            symbol=m.symbol,
            timeframe=m.timeframe,
            version=m.version,
            kind=m.kind,
            horizon=m.horizon,
            active=m.active,
            out_of_sample=m.metrics.get("out_of_sample", {}),
            backtest=m.metrics.get("backtest", {}),
        )
        for m in rows
    ]


def get_model(session: Session, model_id: int) -> ModelOut:
    return ModelOut.model_validate(_get(session, model_id), from_attributes=True)


# --- predictions ---------------------------------------------------------------------------
def _model_for(session: Session, body: PredictRequest) -> ModelRef:
    market = f"{body.symbol} {body.timeframe} on {body.exchange}"
    if body.model_id is None:
        ref = repo.active_model_ref(session, body.exchange, body.symbol, body.timeframe)
        if ref is None:
            raise NotFound(f"no active model for {market}; activate one or pass model_id")
        return ref
    ref = repo.model_ref(session, body.model_id)
    if ref is None:
        raise NotFound(f"no model {body.model_id}; GET /models lists them")
    if ref.timeframe != body.timeframe:
        raise Unprocessable(
            f"timeframe: model {ref.id} was trained on {ref.timeframe} bars, not {body.timeframe}",
            field="timeframe",
        )
    return ref


async def predict(rt: Runtime, session: Session, body: PredictRequest) -> Prediction:
    """P(up) per bar of the window. The features' warm-up is fetched from before the
    window, so the first bars asked for have a probability too."""
    _check_window(body.since, body.until)
    ref = await asyncio.to_thread(_model_for, session, body)
    since, until = _ms(body.since), _ms(body.until)
    extra = 2 * WARMUP
    if since is not None:
        since -= extra * timeframe_ms(body.timeframe)
    bars = await rt.bars.fetch(
        body.exchange,
        body.symbol,
        body.timeframe,
        limit=body.limit + extra,
        since=since,
        until=until,
    )
    proba = await predictions(rt, session, ref, bars)
    keep = _window(bars, body)
    return Prediction(
        model_id=ref.id,
        version=ref.version,
        kind=ref.kind,
        horizon=ref.horizon,
        exchange=body.exchange,
        symbol=body.symbol,
        timeframe=body.timeframe,
        ts=bars.ts[keep].tolist(),
        probability=[None if p != p else round(float(p), 6) for p in proba[keep]],
    )


def _window(bars: Bars, body: PredictRequest) -> slice:
    """The bars the caller asked for (those before are the features' warm-up)."""
    since = _ms(body.since)
    if since is not None:
        first = int(np.searchsorted(bars.ts, since, side="left"))
        return slice(first, first + body.limit)
    return slice(max(len(bars) - body.limit, 0), len(bars))
