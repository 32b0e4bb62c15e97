"""Backtest runs: checking a request before accepting it, the engine's config, views."""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import asdict
from typing import Any

import numpy as np
import orjson
from sqlalchemy.orm import Session

from agents.backtest.repository import Series
from agents.backtest.runs import bars as run_bars
from agents.backtest.runs import equity as curves
from agents.backtest.runs import repository
from agents.backtest.runs.schemas import RunList, RunRequest, RunView, TradePage
from agents.backtest.timegrid import iso
from common.clients import Agents
from common.errors import Conflict, NotFound, Unprocessable, VolexError
from common.models.backtest import BacktestRun
from common.quant.engine import EngineConfig, Sizing
from common.quant.strategies import get_strategy

PREDICT_PAGE = 50_000  # the signal agent's most bars per POST /models/predict


def _named(exc: Unprocessable) -> Unprocessable:
    """An engine or strategy 422 (`field` in its extra) as one naming `body.<field>`."""
    field = str(exc.extra.get("field") or "body")
    message = exc.message.removeprefix(f"{field}: ")
    return Unprocessable(exc.message, errors=[{"field": f"body.{field}", "message": message}])


def engine_config(request: dict[str, Any]) -> EngineConfig:
    """The engine's config from a normalised request (a 422 naming the field if wrong)."""
    try:
        return EngineConfig(
            initial_capital=request["initial_capital"],
            fee_rate=request["fee_rate"],
            slippage_bps=request["slippage_bps"],
            slippage_vol_mult=request["slippage_vol_mult"],
            fill=request["fill"],
            allow_short=request["allow_short"],
            stop_loss_pct=request["stop_loss_pct"],
            take_profit_pct=request["take_profit_pct"],
            trailing_stop_pct=request["trailing_stop_pct"],
            sizing=Sizing(**request["sizing"]),
            timeframe=request["timeframe"],
        )
    except Unprocessable as exc:
        raise _named(exc) from None


def series_of(request: dict[str, Any]) -> Series:
    return Series(request["exchange"], request["symbol"], request["timeframe"])


async def create_run(
    session: Session, agents: Agents, body: RunRequest, caller: str
) -> BacktestRun:
    """Check everything a run needs (strategy, params, engine config, stored bars, the
    model), then queue it. The stored request is normalised: defaults filled in, the
    params validated, the model pinned, so a re-run computes the same thing."""
    request = body.model_dump()
    request["sizing"] = request["sizing"] or {}
    try:
        strategy = get_strategy(body.strategy)
        request["params"] = strategy.validate(body.params)
        request["sizing"] = asdict(Sizing(**request["sizing"]))
    except Unprocessable as exc:
        raise _named(exc) from None
    config = engine_config(request)
    series = series_of(request)
    source = await asyncio.to_thread(run_bars.locate, session, series, body.since, body.until)
    if strategy.needs_model:
        request["model_id"] = await _model_id(agents, body)
    elif body.model_id is not None:
        raise Unprocessable(
            f"model_id: only the ml strategy uses a model, not {body.strategy}",
            errors=[{"field": "body.model_id", "message": "only the ml strategy uses a model"}],
        )
    run = BacktestRun(
        id=uuid.uuid4().hex,
        status="queued",
        stage="queued",
        progress=0.0,
        exchange=series.exchange,
        symbol=series.symbol,
        timeframe=series.timeframe,
        strategy=strategy.name,
        fill=config.fill,
        request=request,
        resampled_from=None if source == series.timeframe else source,
        attempts=0,
        requested_by=caller,
    )
    return await asyncio.to_thread(repository.add_run, session, run)


async def _model_id(agents: Agents, body: RunRequest) -> int:
    """The model the run will use (the one named, or the market's active one), checked
    by asking the signal agent for one prediction in the range."""
    payload = {
        "exchange": body.exchange,
        "symbol": body.symbol,
        "timeframe": body.timeframe,
        "since": iso(body.since),
        "until": iso(body.until),
        "model_id": body.model_id,
        "limit": 1,
    }
    try:
        answer = await agents.signal.post("/models/predict", json=payload, timeout=60)
    except VolexError as exc:
        if exc.status_code not in (404, 422):
            raise
        raise Unprocessable(
            f"model_id: {exc.message}", errors=[{"field": "body.model_id", "message": exc.message}]
        ) from None
    return int(answer["model_id"])


async def predictions(agents: Agents, request: dict[str, Any], ts: np.ndarray) -> np.ndarray:
    """The model's P(up) aligned to the bars' open times `ts`: NaN where it gave none."""
    out = np.full(len(ts), np.nan)
    since, until = int(ts[0]), int(ts[-1]) + 1
    while since < until:
        payload = {
            **{key: request[key] for key in ("exchange", "symbol", "timeframe", "model_id")},
            "since": iso(since),
            "until": iso(until),
            "limit": PREDICT_PAGE,
        }
        answer = await agents.signal.post("/models/predict", json=payload, timeout=300)
        got = np.asarray(answer["ts"], dtype=np.int64)
        if len(got) == 0:
            break
        proba = np.asarray(answer["probability"], dtype=np.float64)  # None becomes NaN
        where = np.minimum(np.searchsorted(ts, got), len(ts) - 1)
        match = ts[where] == got
        out[where[match]] = proba[match]
        since = int(got[-1]) + 1
    return out


# --- views -----------------------------------------------------------------------------------
def finite(stats: dict[str, Any]) -> dict[str, Any]:
    """Stats fit for JSON: a non-finite float (an overflowing CAGR) becomes None."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in stats.items()
    }


def view(run: BacktestRun) -> RunView:
    request = run.request
    return RunView(
        id=run.id,
        status=run.status,
        stage=run.stage,
        progress=run.progress,
        exchange=run.exchange,
        symbol=run.symbol,
        timeframe=run.timeframe,
        strategy=run.strategy,
        params=dict(request.get("params") or {}),
        fill=run.fill,
        model_id=request.get("model_id"),
        request=request,
        stats=run.stats,
        bars=run.bars,
        resampled_from=run.resampled_from,
        error=run.error,
        attempts=run.attempts,
        requested_by=run.requested_by,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        duration_ms=run.duration_ms,
    )


def get_run(session: Session, run_id: str, *, lock: bool = False) -> BacktestRun:
    run = repository.get_run(session, run_id, lock=lock)
    if run is None:
        raise NotFound(f"no backtest {run_id}; GET /backtest/list lists them")
    return run


def list_runs(session: Session, filters: dict[str, str | None], limit: int, offset: int) -> RunList:
    runs, total = repository.list_runs(session, filters, limit, offset)
    return RunList(items=[view(r) for r in runs], total=total, limit=limit, offset=offset)


def cancel(session: Session, run_id: str) -> BacktestRun:
    """Mark a queued or running run cancelled (nothing of it is saved); others as they are."""
    run = get_run(session, run_id, lock=True)
    if run.status in ("queued", "running"):
        repository.finish(session, run, "cancelled")
    return run


def delete(session: Session, run_id: str) -> None:
    if not repository.delete_run(session, run_id):
        raise NotFound(f"no backtest {run_id}; GET /backtest/list lists them")


def _done(run: BacktestRun, what: str) -> None:
    if run.status != "done":
        raise Conflict(
            f"backtest {run.id} is {run.status} ({run.stage}, {run.progress:.0%}); its {what}"
            " is there once its status is done"
            + (f"; it failed: {run.error}" if run.status == "failed" else "")
        )


def trade_page(session: Session, run_id: str, offset: int, limit: int) -> TradePage:
    run = get_run(session, run_id)
    _done(run, "trade list")
    total = int((run.stats or {}).get("trade_count") or 0)
    items = repository.trades(session, run_id, offset, limit)
    return TradePage.model_validate(
        {"id": run_id, "total": total, "offset": offset, "limit": limit, "items": items}
    )


def equity_json(session: Session, run_id: str, points: int) -> bytes:
    """The equity curve with its drawdown, downsampled to `points` (0: every bar)."""
    run = get_run(session, run_id)
    _done(run, "equity curve")
    row = repository.equity(session, run_id)
    if row is None:
        raise NotFound(f"backtest {run_id} has no stored equity curve")
    curve = curves.decode(row.count, row.first_ts, row.ts_deltas, row.equity)
    dd = curves.drawdown(curve.equity, float(run.request["initial_capital"]))
    keep = curves.downsample(len(curve.ts), curve.equity, dd, points)
    body = {
        "id": run_id,
        "bars": row.count,
        "points": len(keep),
        "downsampling": None if len(keep) == row.count else curves.METHOD,
        "ts": curve.ts[keep],
        "equity": curve.equity[keep],
        "drawdown": dd[keep],
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
