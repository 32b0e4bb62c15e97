"""Reading candles: stored ones, ones built from a shorter timeframe, what is stored."""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.backtest.repository import load_bars
from tests.agents.backtest.conftest import Backtest
from tests.agents.backtest.test_import import HEADER, MINUTE, T0

HOUR = 60 * MINUTE


def random_minutes(n: int, seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    close = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.002, n))), 4)
    open_ = np.r_[100.0, close[:-1]]
    high = np.round(np.maximum(open_, close) + rng.uniform(0, 0.5, n), 4)
    low = np.round(np.minimum(open_, close) - rng.uniform(0, 0.5, n), 4)
    volume = np.round(rng.uniform(0, 10, n), 3)
    return np.column_stack([open_, high, low, close, volume])


def store(backtest: Backtest, symbol: str, values: np.ndarray[Any, Any], skip: set[int]) -> None:
    rows = [
        f"{T0 + i * MINUTE},{o!r},{h!r},{lo!r},{c!r},{v!r}"
        for i, (o, h, lo, c, v) in enumerate(values.tolist())
        if i not in skip
    ]
    response = backtest.request(
        "POST",
        "/data/import",
        params={"exchange": "csvtest", "symbol": symbol, "timeframe": "1m"},
        content=HEADER + "\n".join(rows),
        headers={"Content-Type": "text/csv"},
    )
    backtest.ok(response, 201)


def test_one_minute_to_one_hour_equals_aggregating_by_hand(backtest: Backtest) -> None:
    symbol = backtest.symbol()
    values = random_minutes(3 * 60 + 30, seed=7)  # three whole hours and half of a fourth
    missing = {75, 76}  # the exchange had no trade in two minutes of the second hour
    store(backtest, symbol, values, missing)
    path = f"/data/ohlcv/csvtest/{symbol.replace('/', '-')}"
    got = backtest.ok(backtest.get(path, params={"timeframe": "1h", "since": T0}))
    assert got["resampled_from"] == "1m" and got["count"] == 3
    assert got["excluded_partial"] == [T0 + 3 * HOUR]  # the half hour is not a candle
    assert got["ts"] == [T0, T0 + HOUR, T0 + 2 * HOUR]
    for hour in range(3):
        rows = [values[i] for i in range(hour * 60, hour * 60 + 60) if i not in missing]
        assert got["open"][hour] == rows[0][0]
        assert got["high"][hour] == max(r[1] for r in rows)
        assert got["low"][hour] == min(r[2] for r in rows)
        assert got["close"][hour] == rows[-1][3]
        assert abs(got["volume"][hour] - sum(r[4] for r in rows)) < 1e-9
    newest = backtest.ok(backtest.get(path, params={"timeframe": "1h", "limit": 2}))
    assert newest["ts"] == [T0 + HOUR, T0 + 2 * HOUR]


def test_stored_candles_by_range_and_limit(backtest: Backtest) -> None:
    symbol = backtest.symbol()
    values = random_minutes(100, seed=8)
    store(backtest, symbol, values, set())
    path = f"/data/ohlcv/csvtest/{symbol.replace('/', '-')}"
    window = backtest.ok(
        backtest.get(
            path,
            params={"timeframe": "1m", "since": "2024-01-01T00:10:00Z", "until": T0 + 20 * MINUTE},
        )
    )
    assert window["resampled_from"] is None and window["count"] == 10
    assert window["ts"] == [T0 + i * MINUTE for i in range(10, 20)]
    assert window["close"] == values[10:20, 3].tolist()
    last = backtest.ok(backtest.get(path, params={"timeframe": "1m", "limit": 5}))
    assert last["ts"] == [T0 + i * MINUTE for i in range(95, 100)]
    # The numpy loader the backtests use reads the very same candles.
    engine = backtest.stack.engine()
    try:
        bars = load_bars(engine, "csvtest", symbol, "1m", T0 + 10 * MINUTE, T0 + 20 * MINUTE)
    finally:
        engine.dispose()
    assert bars.ts.dtype == np.int64 and bars.close.dtype == np.float64
    assert bars.ts.tolist() == window["ts"] and bars.volume.tolist() == window["volume"]
    nothing = backtest.get("/data/ohlcv/csvtest/NONE-USDT", params={"timeframe": "1h"})
    assert nothing.status_code == 404 and "POST /data/fetch" in nothing.json()["detail"]


def test_symbols_and_coverage(backtest: Backtest) -> None:
    symbol = backtest.symbol()
    store(backtest, symbol, random_minutes(60, seed=9), {10, 11, 12, 40})
    [listed] = [
        s for s in backtest.ok(backtest.get("/data/symbols/csvtest")) if s["symbol"] == symbol
    ]
    assert listed == {
        "symbol": symbol,
        "timeframe": "1m",
        "first": "2024-01-01T00:00:00Z",
        "last": "2024-01-01T00:59:00Z",
        "count": 56,
    }
    [cover] = backtest.ok(
        backtest.get("/data/coverage", params={"exchange": "csvtest", "symbol": symbol})
    )
    assert (cover["count"], cover["expected"], cover["gaps"]) == (56, 60, 2)


def test_execution_serves_candles_from_the_sim(backtest: Backtest) -> None:
    execution = backtest.stack.url("execution")
    import httpx

    response = httpx.get(
        execution + "/ohlcv/sim/BTC-USDT",
        params={"timeframe": "1h", "since": T0, "limit": 3},
        headers=backtest.stack.auth(),
        timeout=30,
    )
    body = response.json()
    assert response.status_code == 200, body
    assert (body["exchange"], body["symbol"], body["timeframe"]) == ("sim", "BTC/USDT", "1h")
    assert [bar[0] for bar in body["bars"]] == [T0, T0 + HOUR, T0 + 2 * HOUR]
    assert all(len(bar) == 6 and bar[2] >= max(bar[1], bar[4]) for bar in body["bars"])
    bad = httpx.get(
        execution + "/ohlcv/sim/BTC-USDT", params={"timeframe": "2m"}, headers=backtest.stack.auth()
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.timeframe"
    unknown = httpx.get(execution + "/ohlcv/nosuch/BTC-USDT", headers=backtest.stack.auth())
    assert unknown.status_code == 404
