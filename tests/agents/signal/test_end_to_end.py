"""The signal agent on real bars from the backtest agent's market data.

Pending merge: skipped while the backtest agent does not serve `GET /data/ohlcv`
(see `market_data` in conftest.py); the integrator removes the gate.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import pytest

from agents.execution.exchange.sim_prices import EPOCH_MS
from agents.signal import service
from agents.signal.market import parse_columns
from common.quant.bars import TIMEFRAME_MS, Bars
from common.quant.strategies import STRATEGIES
from tests.agents.signal.bars import sim_bars
from tests.agents.signal.conftest import Signal
from tests.conftest import Stack

pytestmark = pytest.mark.usefixtures("history")
DAY_MS = 86_400_000
RULES = [name for name, s in STRATEGIES.items() if not s.needs_model]


def backtest(stack: Stack, method: str, path: str, **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", None) or stack.auth()
    response = httpx.request(
        method, stack.url("backtest") + path, headers=headers, timeout=60, **kwargs
    )
    assert response.is_success, response.text
    return response.json()


@pytest.fixture(scope="module")
def history(stack: Stack) -> None:
    """120 days of the sim's own 1h candles for BTC and ETH, up to the last closed hour,
    imported into the backtest agent's store (all or nothing, synchronously)."""
    hour = TIMEFRAME_MS["1h"]
    last_closed = int(time.time() * 1000) // hour * hour - hour
    count = 120 * 24
    start_day = (last_closed - (count - 1) * hour - EPOCH_MS) // DAY_MS
    for symbol in ("BTC/USDT", "ETH/USDT"):
        bars = sim_bars(symbol, "1h", count + 48, start_day=start_day)
        bars = bars.slice(0, int(np.searchsorted(bars.ts, last_closed, side="right")))
        lines = ["timestamp,open,high,low,close,volume"] + [
            f"{t},{o!r},{h!r},{lo!r},{c!r},{v!r}"
            for t, o, h, lo, c, v in zip(
                bars.ts.tolist(),
                bars.open.tolist(),
                bars.high.tolist(),
                bars.low.tolist(),
                bars.close.tolist(),
                bars.volume.tolist(),
                strict=True,
            )
        ]
        backtest(
            stack,
            "POST",
            "/data/import",
            params={"exchange": "sim", "symbol": symbol, "timeframe": "1h"},
            content="\n".join(lines).encode(),
            headers={**stack.auth(), "Content-Type": "text/csv"},
        )


def stored_bars(stack: Stack, symbol: str, timeframe: str = "1h", limit: int = 500) -> Bars:
    body = backtest(
        stack,
        "GET",
        f"/data/ohlcv/sim/{symbol.replace('/', '-')}",
        params={"timeframe": timeframe, "limit": limit},
    )
    return parse_columns(body, timeframe, int(time.time() * 1000))


def test_generate_matches_the_strategies_on_the_same_bars(signal: Signal) -> None:
    answer = signal.ok(signal.post("/signals/generate", {"symbol": "BTC/USDT", "limit": 500}))
    assert [s["strategy"] for s in answer["strategies"]] == RULES and answer["model_id"] is None
    bars = stored_bars(signal.stack, "BTC/USDT")
    if int(bars.ts[-1]) != answer["bar_ts"]:  # an hour turned in between: ask again
        answer = signal.ok(signal.post("/signals/generate", {"symbol": "BTC/USDT"}))
        bars = stored_bars(signal.stack, "BTC/USDT")
    assert answer["bar_ts"] + TIMEFRAME_MS["1h"] <= time.time() * 1000  # a closed bar
    choices = [(STRATEGIES[n], STRATEGIES[n].defaults()) for n in RULES]
    expected, ensemble = service.evaluate(
        bars, service.run_strategies(bars, choices, None), horizon=5, threshold=0.25
    )
    assert answer["strategies"] == [s.model_dump() for s in expected]
    assert answer["ensemble"]["confidence"] == ensemble.confidence
    assert 0 <= answer["ensemble"]["confidence"] <= 1 and answer["ensemble"]["basis"]["samples"] > 0

    stored = signal.ok(signal.get("/signals", params={"symbol": "BTC-USDT", "limit": 50}))
    batch = [r for r in stored["items"] if r["batch_id"] == answer["batch_id"]]
    assert sorted(r["strategy"] for r in batch) == sorted([*RULES, "ensemble"])
    [row] = [r for r in batch if r["strategy"] == "ensemble"]
    assert row["confidence"] == answer["ensemble"]["confidence"]


def test_chosen_strategies_with_params(signal: Signal) -> None:
    body = {
        "symbol": "BTC/USDT",
        "strategies": ["rsi_mean_reversion", {"name": "sma_cross", "params": {"fast": 5}}],
    }
    answer = signal.ok(signal.post("/signals/generate", body))
    assert [s["strategy"] for s in answer["strategies"]] == ["rsi_mean_reversion", "sma_cross"]
    assert answer["strategies"][1]["params"] == {"fast": 5, "slow": 30}


def test_ml_without_an_active_model_is_422(signal: Signal) -> None:
    body = {"symbol": "BTC/USDT", "strategies": ["ml"]}
    response = signal.post("/signals/generate", body)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("strategies[0].name: ml needs an active model")


def test_unknown_market_is_passed_on(signal: Signal) -> None:
    response = signal.post("/signals/generate", {"symbol": "NOPE/USDT"})
    assert response.status_code == 404, response.text


def test_indicators_on_several_timeframes(signal: Signal) -> None:
    params = {"timeframes": "1h,4h,1d", "indicators": "rsi:21,macd,atr", "limit": 100}
    answer = signal.ok(signal.get("/indicators/BTC-USDT", params=params))
    blocks = {b["timeframe"]: b for b in answer["timeframes"]}
    assert list(blocks) == ["1h", "4h", "1d"]
    for timeframe, block in blocks.items():
        assert set(block["indicators"]) == {"rsi:21", "macd:12:26:9", "atr:14"}
        bars = stored_bars(signal.stack, "BTC/USDT", timeframe, 100)
        if block["bar_ts"] == int(bars.ts[-1]):
            import talib

            rsi = talib.RSI(bars.close, 21)[-1]
            assert block["indicators"]["rsi:21"]["values"]["rsi"] == pytest.approx(rsi)
    with_series = signal.ok(
        signal.get("/indicators/BTC-USDT", params={"indicators": "ema:10", "series": True})
    )
    block = with_series["timeframes"][0]
    assert len(block["ts"]) == len(block["indicators"]["ema:10"]["series"]["ema"]) == block["bars"]


def test_train_activate_then_signals_predictions_and_insights_use_the_model(
    signal: Signal,
) -> None:
    train = {
        "symbol": "ETH/USDT",
        "model": "logistic_regression",
        "horizon": 4,
        "limit": 2000,
        "splits": 4,
    }
    first = signal.ok(signal.post("/models/train", train), 201)
    second = signal.ok(signal.post("/models/train", {**train, "model": "gradient_boosting"}), 201)
    assert second["version"] == first["version"] + 1 and not second["active"]
    oos = first["metrics"]["out_of_sample"]
    assert oos["samples"] > 500 and 0 <= oos["accuracy"] <= 1 and "backtest" in first["metrics"]

    signal.ok(signal.post(f"/models/{first['id']}/activate"))
    answer = signal.ok(signal.post("/signals/generate", {"symbol": "ETH/USDT"}))
    assert answer["model_id"] == first["id"] and answer["strategies"][-1]["strategy"] == "ml"
    assert answer["ensemble"]["basis"]["excluded_until_ts"] == first["train_end_ts"]

    since = answer["bar_ts"] - 99 * TIMEFRAME_MS["1h"]
    predicted = signal.ok(
        signal.post(
            "/models/predict",
            {"symbol": "ETH/USDT", "timeframe": "1h", "since": _iso(since), "limit": 100},
        )
    )
    assert predicted["model_id"] == first["id"] and predicted["ts"][0] == since
    assert len(predicted["ts"]) == len(predicted["probability"]) == 100
    assert all(p is not None and 0 <= p <= 1 for p in predicted["probability"])
    assert np.all(np.diff(predicted["ts"]) == TIMEFRAME_MS["1h"])

    insights = signal.ok(signal.get("/autonomous/insights/ETH-USDT"))
    assert insights["facts"]["model"]["id"] == first["id"]
    assert f"(#{first['id']}, v{first['version']})" in insights["summary"]
    performance = signal.ok(signal.get("/models/performance", params={"symbol": "ETH/USDT"}))
    assert {p["id"] for p in performance} >= {first["id"], second["id"]}


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()
