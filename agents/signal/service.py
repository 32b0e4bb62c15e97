"""Signals: strategies on the last closed bar, their ensemble, and the signal history.

`generate()` is the one entry point for a signal, whether over HTTP or from the
autonomous loop's `decide(symbol)`: give it the runtime, a session (the caller
commits it) and a `GenerateRequest`. Its hot path is one call for bars (run at the
same time as the active-model lookup), numpy/TA-Lib, and one INSERT for every row.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import numpy as np
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from agents.signal import ensemble, models_service
from agents.signal import repository as repo
from agents.signal.ensemble import Run
from agents.signal.repository import ModelRef, SignalFilter
from agents.signal.runtime import Runtime
from agents.signal.schemas import (
    ConfidenceBasis,
    EnsembleSignal,
    GenerateRequest,
    GenerateResponse,
    SignalOut,
    SignalPage,
    StrategyChoice,
    StrategySignal,
)
from common.db import database_error
from common.errors import NotFound, ServiceUnavailable, Unprocessable
from common.quant.bars import Bars, Floats
from common.quant.strategies import STRATEGIES, Context, Params, Strategy, get_strategy

ENSEMBLE = "ensemble"
T = TypeVar("T")


def _choices(
    requested: list[str | StrategyChoice] | None, model: ModelRef | None, market: str
) -> list[tuple[Strategy, Params]]:
    if requested is None:
        chosen = [s for s in STRATEGIES.values() if not s.needs_model or model is not None]
        return [(s, s.defaults()) for s in chosen]
    out = []
    for i, item in enumerate(requested):
        choice = StrategyChoice(name=item) if isinstance(item, str) else item
        strategy = get_strategy(choice.name, f"strategies[{i}].name")
        if strategy.needs_model and model is None:
            raise Unprocessable(
                f"strategies[{i}].name: {choice.name} needs an active model for {market}; "
                "train one (POST /models/train) and activate it (POST /models/{id}/activate)",
                field=f"strategies[{i}].name",
            )
        out.append((strategy, strategy.validate(choice.params, f"strategies[{i}].params")))
    return out


def _first_bar_after(bars: Bars, ts: int) -> int:
    return int(np.searchsorted(bars.ts, ts, side="right"))


def evaluate(
    bars: Bars,
    runs: list[Run],
    *,
    horizon: int,
    threshold: float,
    model_train_end_ts: int | None = None,
) -> tuple[list[StrategySignal], EnsembleSignal]:
    """Each strategy's verdict on the last bar and the ensemble's, with its confidence."""
    signals = []
    for run in runs:
        v = ensemble.verdict(run.signals)
        signals.append(
            StrategySignal(
                strategy=run.name,
                params=run.params,
                action=v.action,
                strength=round(v.strength, 6),
                position=v.position,
                events=v.events,
            )
        )
    scores = ensemble.score(runs)
    # An ML model's predictions on its own training bars would flatter the hit rate.
    not_before = 0 if model_train_end_ts is None else _first_bar_after(bars, model_train_end_ts)
    first = max(run.lookback for run in runs)
    cal = ensemble.calibrate(scores, bars.close, horizon, first=first, not_before=not_before)
    now = float(scores[-1])
    basis = ConfidenceBasis(
        method="past hit rate of scores in this bucket, (hits + 1) / (samples + 2)",
        horizon=horizon,
        bucket=cal.bucket,
        samples=cal.samples,
        hits=cal.hits,
        hit_rate=None if cal.hit_rate is None else round(cal.hit_rate, 6),
        excluded_until_ts=model_train_end_ts,
    )
    verdict = EnsembleSignal(
        action=ensemble.action_of(now, threshold),
        score=round(now, 6),
        threshold=threshold,
        confidence=round(cal.confidence, 6),
        basis=basis,
        strategies=[run.name for run in runs],
    )
    return signals, verdict


def run_strategies(
    bars: Bars, choices: list[tuple[Strategy, Params]], predictions: Floats | None
) -> list[Run]:
    context = Context(predictions=predictions)
    return [
        Run(s.name, params, s.generate(bars, params, context), s.lookback(params))
        for s, params in choices
    ]


def _check_history(
    bars: Bars, choices: list[tuple[Strategy, Params]], body: GenerateRequest
) -> None:
    market = f"{body.symbol} {body.timeframe} on {body.exchange}"
    if len(bars) == 0:
        raise NotFound(f"no closed bars for {market}; fetch or import market data first")
    needed = max(s.lookback(p) for s, p in choices) + 1
    if len(bars) < needed:
        raise Unprocessable(
            f"limit: these strategies need at least {needed} closed bars; {market} has "
            f"{len(bars)} (ask for more, or import more history)",
            field="limit",
        )


async def generate(
    rt: Runtime, sessions: sessionmaker[Session], body: GenerateRequest, caller: str
) -> GenerateResponse:
    """Signals on the last closed bar, stored in `signals` (one INSERT, one commit)."""
    key = (body.exchange, body.symbol, body.timeframe)
    known, model = rt.active.get(key)
    if known:
        bars = await rt.bars.fetch(body.exchange, body.symbol, body.timeframe, limit=body.limit)
    else:
        fetched, found = await asyncio.gather(
            rt.bars.fetch(body.exchange, body.symbol, body.timeframe, limit=body.limit),
            _db(_active_model, sessions, key),
            return_exceptions=True,
        )
        for outcome in (fetched, found):
            if isinstance(outcome, BaseException):
                raise outcome
        bars, model = cast(Bars, fetched), cast(ModelRef | None, found)
        rt.active.put(key, model)
    choices = _choices(body.strategies, model, f"{body.symbol} {body.timeframe} on {body.exchange}")
    _check_history(bars, choices, body)
    uses_model = model is not None and any(s.needs_model for s, _ in choices)
    predictions = None
    if uses_model:
        assert model is not None
        with sessions() as session:
            predictions = await models_service.predictions(rt, session, model, bars)
    runs = run_strategies(bars, choices, predictions)
    signals, verdict = evaluate(
        bars,
        runs,
        horizon=body.horizon,
        threshold=body.threshold,
        model_train_end_ts=model.train_end_ts if uses_model and model else None,
    )
    response = GenerateResponse(
        batch_id=uuid.uuid4().hex,
        exchange=body.exchange,
        symbol=body.symbol,
        timeframe=body.timeframe,
        generated_at=datetime.now(UTC),
        bar_ts=int(bars.ts[-1]),
        price=float(bars.close[-1]),
        bars=len(bars),
        model_id=model.id if uses_model and model else None,
        strategies=signals,
        ensemble=verdict,
    )
    if rt.history is None:
        raise ServiceUnavailable("this service has no database configured")
    await repo.insert_signals(rt.history, _rows(response, caller))
    return response


async def _db(fn: Callable[..., T], *args: Any) -> T:
    try:
        return await asyncio.to_thread(fn, *args)
    except SQLAlchemyError as exc:
        raise database_error(exc) from exc


def _active_model(sessions: sessionmaker[Session], key: tuple[str, str, str]) -> ModelRef | None:
    with sessions() as session:
        return repo.active_model_ref(session, *key)


def _rows(r: GenerateResponse, caller: str) -> list[dict[str, Any]]:
    common = {
        "generated_at": r.generated_at,
        "batch_id": r.batch_id,
        "exchange": r.exchange,
        "symbol": r.symbol,
        "timeframe": r.timeframe,
        "bar_ts": r.bar_ts,
        "price": r.price,
        "requested_by": caller,
    }
    rows = [
        {
            **common,
            "strategy": s.strategy,
            "action": s.action,
            "strength": s.strength,
            "position": s.position,
            "confidence": None,
            "params": s.params,
            "details": {"events": s.events},
            "model_id": r.model_id if s.strategy == "ml" else None,
        }
        for s in r.strategies
    ]
    e = r.ensemble
    rows.append(
        {
            **common,
            "strategy": ENSEMBLE,
            "action": e.action,
            "strength": e.score,
            "position": None,
            "confidence": e.confidence,
            "params": {"threshold": e.threshold, "horizon": e.basis.horizon},
            "details": {"strategies": e.strategies, "basis": e.basis.model_dump()},
            "model_id": r.model_id,
        }
    )
    return rows


def list_signals(session: Session, where: SignalFilter, limit: int, offset: int) -> SignalPage:
    rows = repo.list_signals(session, where, limit + 1, offset)
    items = [SignalOut.model_validate(row, from_attributes=True) for row in rows[:limit]]
    return SignalPage(items=items, next_offset=offset + limit if len(rows) > limit else None)
