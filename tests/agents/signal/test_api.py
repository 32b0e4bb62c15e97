"""The signal service over HTTP, where no bars are needed: auth, input validation, the
model catalogue (activation, digests) and the signal history."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, text

from common.models.signal import SignalRecord
from tests.agents.signal.conftest import Signal, fresh_symbol

GENERATE = {"symbol": "BTC/USDT", "exchange": "sim", "timeframe": "1h"}


def problem(response: Any, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/signals/generate"),
        ("GET", "/signals"),
        ("GET", "/indicators/BTC-USDT"),
        ("POST", "/models/train"),
        ("POST", "/models/predict"),
        ("GET", "/models"),
        ("POST", "/models/1/activate"),
        ("GET", "/autonomous/insights/BTC-USDT"),
    ],
)
def test_no_token_is_401(signal: Signal, method: str, path: str) -> None:
    import httpx

    response = httpx.request(method, signal.url + path, timeout=10)
    assert problem(response, 401)["status"] == 401


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"strategies": ["sma_cross", "moon"]}, "body.strategies", "strategies[1].name: unknown"),
        (
            {"strategies": [{"name": "sma_cross", "params": {"fast": 50, "slow": 20}}]},
            "body.strategies",
            "strategies[0].params.fast: must be shorter than slow",
        ),
        (
            {"strategies": [{"name": "rsi_mean_reversion", "params": {"period": "x"}}]},
            "body.strategies",
            "strategies[0].params.period: must be a number",
        ),
        (
            {"strategies": [{"name": "ema_cross", "params": {"speed": 3}}]},
            "body.strategies",
            "strategies[0].params.speed: ema_cross has no parameter 'speed'",
        ),
        ({"strategies": ["macd_cross", "macd_cross"]}, "body.strategies", "listed twice"),
        ({"strategies": []}, "body.strategies", "at least one strategy"),
        ({"timeframe": "7m"}, "body.timeframe", "'7m' is not a timeframe"),
        ({"symbol": "BTCUSDT"}, "body.symbol", "should match pattern"),
        ({"exchange": "Bin ance"}, "body.exchange", "should match pattern"),
        ({"horizon": 0}, "body.horizon", "greater than or equal to 1"),
        ({"threshold": 1.5}, "body.threshold", "less than or equal to 1"),
        ({"limit": 10}, "body.limit", "greater than or equal to 50"),
        ({"colour": "red"}, "body.colour", "Extra inputs are not permitted"),
    ],
)
def test_generate_names_the_field_to_fix(
    signal: Signal, change: dict[str, Any], field: str, says: str
) -> None:
    body = problem(signal.post("/signals/generate", {**GENERATE, **change}))
    assert [e["field"] for e in body["errors"]] == [field]
    assert says in body["detail"]


@pytest.mark.parametrize(
    ("path", "params", "says"),
    [
        ("/indicators/BTC-USDT", {"indicators": "rsi,hma"}, "indicators: unknown indicator 'hma'"),
        ("/indicators/BTC-USDT", {"indicators": "rsi:0"}, "indicators: rsi period must be within"),
        ("/indicators/BTC-USDT", {"timeframe": "5h"}, "timeframe: '5h' is not a timeframe"),
        ("/indicators/BTC-USDT", {"timeframes": "1h,4h,9d"}, "timeframes: '9d' is not"),
        ("/indicators/BTCUSDT", {}, "symbol: 'BTCUSDT' is not a symbol"),
        ("/autonomous/insights/BTC_USDT", {}, "symbol: 'BTC_USDT' is not a symbol"),
        ("/autonomous/insights/BTC-USDT", {"timeframe": "1y"}, "timeframe: '1y' is not"),
    ],
)
def test_bad_queries_name_the_field(
    signal: Signal, path: str, params: dict[str, str], says: str
) -> None:
    assert problem(signal.get(path, params=params))["detail"].startswith(says)


def test_indicator_and_strategy_catalogues(signal: Signal) -> None:
    names = {i["name"] for i in signal.ok(signal.get("/indicators"))}
    assert {"rsi", "macd", "bbands", "stoch", "atr", "adx", "ema", "sma", "obv", "willr"} <= names
    strategies = {s["name"]: s for s in signal.ok(signal.get("/strategies"))}
    assert strategies["ml"]["needs_model"] is True and "sma_cross" in strategies
    features = [f["name"] for f in signal.ok(signal.get("/models/features"))]
    assert "rsi_14" in features and "volume_z" in features


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"model": "svm"}, "body.model", "Input should be"),
        ({"features": ["rsi_14", "tomorrow"]}, "body.features", "features[1]: unknown feature"),
        ({"horizon": 0}, "body.horizon", "greater than or equal to 1"),
        ({"splits": 1}, "body.splits", "greater than or equal to 2"),
        ({"timeframe": "2d"}, "body.timeframe", "not a timeframe"),
        ({"since": "2024-01-01T00:00:00"}, "body.since", "timezone"),
    ],
)
def test_train_names_the_field_to_fix(
    signal: Signal, change: dict[str, Any], field: str, says: str
) -> None:
    body = {"symbol": "BTC/USDT", "model": "random_forest", **change}
    answer = problem(signal.post("/models/train", body))
    assert [e["field"] for e in answer["errors"]] == [field] and says in answer["detail"]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"n_trees": 5}, "params.n_trees: random_forest has no parameter 'n_trees'"),
        ({"max_depth": 0}, "params.max_depth: must be within 1..32"),
        ({"min_samples_leaf": 2.5}, "params.min_samples_leaf: must be a whole number"),
    ],
)
def test_train_params_are_checked_before_any_work(
    signal: Signal, params: dict[str, Any], says: str
) -> None:
    body = {"symbol": "BTC/USDT", "model": "random_forest", "params": params}
    assert problem(signal.post("/models/train", body))["detail"].startswith(says)


def test_train_window_must_be_in_order(signal: Signal) -> None:
    body = {
        "symbol": "BTC/USDT",
        "model": "logistic_regression",
        "since": "2024-03-01T00:00:00Z",
        "until": "2024-02-01T00:00:00Z",
    }
    assert problem(signal.post("/models/train", body))["detail"].startswith("until: must not")


def test_activate_switches_the_one_active_model(signal: Signal) -> None:
    symbol = fresh_symbol()
    first = signal.create_model(symbol, version=1)
    second = signal.create_model(symbol, version=2)
    other_timeframe = signal.create_model(symbol, timeframe="4h", version=1)

    answer = signal.ok(signal.post(f"/models/{first}/activate"))
    assert answer["active"] is True and answer["activated_at"] is not None
    assert signal.active_ids(symbol) == [first]
    signal.ok(signal.post(f"/models/{other_timeframe}/activate"))  # another market: both stay
    assert signal.active_ids(symbol) == [first, other_timeframe]

    assert signal.ok(signal.post(f"/models/{second}/activate"))["active"] is True
    assert signal.active_ids(symbol) == [second, other_timeframe]
    listed = signal.ok(
        signal.get("/models", params={"symbol": symbol, "timeframe": "1h", "active": True})
    )
    assert [m["id"] for m in listed] == [second] and "model_bytes" not in listed[0]
    # Activating the active model again changes nothing.
    signal.ok(signal.post(f"/models/{second}/activate"))
    assert signal.active_ids(symbol) == [second, other_timeframe]
    assert signal.ok(signal.get(f"/models/{first}"))["active"] is False


def test_a_model_whose_bytes_fail_their_digest_is_refused(signal: Signal) -> None:
    symbol = fresh_symbol()
    good = signal.create_model(symbol, version=1)
    signal.ok(signal.post(f"/models/{good}/activate"))
    bad = signal.create_model(symbol, version=2, tamper=True)
    answer = problem(signal.post(f"/models/{bad}/activate"), 409)
    assert f"model {bad}" in answer["detail"] and "SHA-256" in answer["detail"]
    assert signal.active_ids(symbol) == [good]


def test_unknown_models_are_404(signal: Signal) -> None:
    assert "no model 999999999" in problem(signal.post("/models/999999999/activate"), 404)["detail"]
    assert problem(signal.get("/models/999999999"), 404)["status"] == 404
    body = {"symbol": "BTC/USDT", "timeframe": "1h", "model_id": 999999999}
    assert "no model 999999999" in problem(signal.post("/models/predict", body), 404)["detail"]
    body = {"symbol": fresh_symbol(), "timeframe": "1h"}
    assert "no active model" in problem(signal.post("/models/predict", body), 404)["detail"]


def test_predict_refuses_another_timeframe(signal: Signal) -> None:
    model = signal.create_model(fresh_symbol(), timeframe="4h")
    body = {"symbol": "BTC/USDT", "timeframe": "1h", "model_id": model}
    answer = problem(signal.post("/models/predict", body))
    assert answer["detail"].startswith(f"timeframe: model {model} was trained on 4h bars")


def test_performance_lists_out_of_sample_metrics_and_backtest(signal: Signal) -> None:
    symbol = fresh_symbol()
    model = signal.create_model(symbol)
    [row] = signal.ok(signal.get("/models/performance", params={"symbol": symbol}))
    assert row["id"] == model and row["out_of_sample"]["accuracy"] == 0.51
    assert row["backtest"]["total_return"] == -0.01 and row["active"] is False


def _signal_row(symbol: str, strategy: str, at: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "generated_at": at,
        "batch_id": uuid.uuid4().hex,
        "exchange": "sim",
        "symbol": symbol,
        "timeframe": "1h",
        "strategy": strategy,
        "action": "hold",
        "strength": 0.1,
        "position": 0,
        "confidence": None,
        "bar_ts": 0,
        "price": 1.0,
        "params": {},
        "details": {},
        "model_id": None,
        "requested_by": "test",
        **extra,
    }


def test_signal_history_filters_and_pages(signal: Signal) -> None:
    symbol = fresh_symbol()
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    rows = [
        _signal_row(symbol, "sma_cross" if i % 2 else "ensemble", t0 + timedelta(minutes=i))
        for i in range(7)
    ]
    signal.execute(insert(SignalRecord), rows)
    everything = signal.ok(signal.get("/signals", params={"symbol": symbol.replace("/", "-")}))
    times = [r["generated_at"] for r in everything["items"]]
    assert len(times) == 7 and times == sorted(times, reverse=True)
    assert everything["next_offset"] is None

    page = signal.ok(signal.get("/signals", params={"symbol": symbol, "limit": 3}))
    assert len(page["items"]) == 3 and page["next_offset"] == 3
    rest = signal.ok(signal.get("/signals", params={"symbol": symbol, "limit": 3, "offset": 6}))
    assert len(rest["items"]) == 1 and rest["next_offset"] is None

    only = signal.ok(signal.get("/signals", params={"symbol": symbol, "strategy": "ensemble"}))
    assert {r["strategy"] for r in only["items"]} == {"ensemble"} and len(only["items"]) == 4
    window = {
        "symbol": symbol,
        "since": (t0 + timedelta(minutes=2)).isoformat(),
        "until": (t0 + timedelta(minutes=4)).isoformat(),
    }
    assert len(signal.ok(signal.get("/signals", params=window))["items"]) == 3
    assert (
        signal.ok(signal.get("/signals", params={"symbol": symbol, "exchange": "kraken"}))["items"]
        == []
    )


def test_newest_signals_of_every_market_are_read_through_an_index(signal: Signal) -> None:
    """`GET /signals` without a symbol sorts by (generated_at, id) newest first; on a plain
    table (no TimescaleDB here) an index must serve that order, or the whole history is
    sorted on every call."""
    found = signal.execute(text("SELECT indexdef FROM pg_indexes WHERE tablename = 'signals'"))
    assert any("(generated_at DESC, id DESC)" in row["indexdef"] for row in found), found


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "query.since"),
        ({"since": "2025-01-01T00:00:00"}, "query.since"),
        ({"limit": 0}, "query.limit"),
        ({"exchange": "SIM!"}, "query.exchange"),
    ],
)
def test_signal_history_query_is_checked(
    signal: Signal, params: dict[str, Any], field: str
) -> None:
    assert [e["field"] for e in problem(signal.get("/signals", params=params))["errors"]] == [field]
