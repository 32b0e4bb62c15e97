"""Backtest runs across a restart, and the `ml` strategy with a model from the signal agent."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import numpy as np
from sqlalchemy import text

from agents.backtest.timegrid import iso
from common.quant.strategies import Context
from tests.agents.backtest.conftest import (
    COUNT,
    Backtest,
    check_against_engine,
    field_errors,
    in_process,
    stored,
)

_COPY_AS_INTERRUPTED = """
INSERT INTO backtests (id, status, stage, progress, exchange, symbol, timeframe, strategy,
    fill, request, attempts, requested_by, started_at)
SELECT :new, 'running', 'simulating', 0.5, exchange, symbol, timeframe, strategy, fill,
    request, :attempts, requested_by, now()
FROM backtests WHERE id = :old
"""


def test_interrupted_runs_run_again_when_the_agent_starts(
    backtest: Backtest, market: dict[str, Any]
) -> None:
    done = backtest.run(**market["window"], strategy="sma_cross", params={"fast": 5})
    assert done["status"] == "done", done
    again, given_up = uuid.uuid4().hex, uuid.uuid4().hex
    backtest.stack.volex("stop", "backtest")
    try:
        # As a process stopped mid-run leaves them: `running`, nothing saved.
        engine = backtest.stack.engine()
        with engine.begin() as conn:
            for run_id, attempts in ((again, 1), (given_up, 3)):
                params = {"new": run_id, "attempts": attempts, "old": done["id"]}
                conn.execute(text(_COPY_AS_INTERRUPTED), params)
        engine.dispose()
    finally:
        backtest.stack.volex("start", "backtest")
    rerun = backtest.wait_run(again)
    assert rerun["status"] == "done" and rerun["attempts"] == 2, rerun
    assert rerun["stats"] == done["stats"]  # deterministic: the same numbers again
    trades = backtest.ok(backtest.get(f"/backtest/{again}/trades", params={"limit": 10_000}))
    assert trades["total"] == len(trades["items"]) == done["stats"]["trade_count"]
    failed = backtest.wait_run(given_up)
    assert failed["status"] == "failed" and "interrupted 3 times" in failed["error"], failed


def signal(backtest: Backtest, path: str, body: dict[str, Any], status: int = 200) -> Any:
    url = backtest.stack.url("signal") + path
    response = httpx.post(url, json=body, headers=backtest.stack.auth(), timeout=120)
    assert response.status_code == status, response.text
    return response.json()


def test_ml_strategy_with_a_model_trained_on_the_same_bars(
    backtest: Backtest, market: dict[str, Any]
) -> None:
    window, symbol = market["window"], market["symbol"]
    run_body = {**window, "strategy": "ml", "params": {"threshold": 0.52}}
    no_model = backtest.post("/backtest/run", run_body)
    assert field_errors(no_model) == ["body.model_id"]
    assert "no active model" in no_model.json()["detail"]
    missing = backtest.post("/backtest/run", {**run_body, "model_id": 999_999})
    assert field_errors(missing) == ["body.model_id"] and "999999" in missing.json()["detail"]

    started = time.monotonic()
    model = signal(
        backtest,
        "/models/train",
        {
            "exchange": "sim",
            "symbol": symbol,
            "timeframe": "1h",
            "model": "logistic_regression",
            "horizon": 4,
            "limit": 2000,
            "splits": 3,
            "until": iso(window["since"] + 2000 * 3_600_000),
        },
        201,
    )
    assert time.monotonic() - started < 60, "training got slow: see the report"
    run = backtest.run(**run_body, model_id=model["id"])
    assert run["model_id"] == model["id"] and run["request"]["model_id"] == model["id"], run

    predicted = signal(
        backtest,
        "/models/predict",
        {
            "exchange": "sim",
            "symbol": symbol,
            "timeframe": "1h",
            "model_id": model["id"],
            "since": iso(window["since"]),
            "until": iso(window["until"]),
            "limit": COUNT,
        },
    )
    bars = stored(backtest, symbol, "1h", window["since"], window["until"])
    assert predicted["ts"] == bars.ts.tolist()
    proba = np.asarray(predicted["probability"], dtype=np.float64)
    assert np.isfinite(proba).sum() > COUNT - 100  # the features' warm-up is fetched before
    result = in_process(bars, run, Context(proba))
    assert result.stats["trade_count"] > 0
    check_against_engine(backtest, run, bars, result)
