"""Backtests over HTTP: the same numbers as the engine in process, stored and served."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agents.backtest.resample import resample
from agents.backtest.runs.equity import drawdown
from agents.backtest.timegrid import iso
from tests.agents.backtest.conftest import (
    COUNT,
    HOUR,
    Backtest,
    check_against_engine,
    field_errors,
    in_process,
    stored,
)


def test_a_run_gives_the_engines_numbers(backtest: Backtest, market: dict[str, Any]) -> None:
    run = backtest.run(**market["window"], strategy="sma_cross", params={"fast": 8, "slow": 40})
    assert run["params"] == {"fast": 8, "slow": 40} and run["fill"] == "next_open"
    assert run["stats"]["buy_and_hold_return"] is not None and run["stats"]["fill"] == "next_open"
    assert run["attempts"] == 1 and run["duration_ms"] >= 0 and run["resampled_from"] is None
    window = market["window"]
    bars = stored(backtest, market["symbol"], "1h", window["since"], window["until"])
    assert len(bars) == COUNT
    result = in_process(bars, run)
    assert result.stats["trade_count"] > 20
    check_against_engine(backtest, run, bars, result)


def test_stops_fees_slippage_shorts_and_sizing(backtest: Backtest, market: dict[str, Any]) -> None:
    run = backtest.run(
        **market["window"],
        strategy="ema_cross",
        fee_rate=0.002,
        slippage_bps=5,
        slippage_vol_mult=0.1,
        fill="close",
        allow_short=True,
        stop_loss_pct=0.02,
        take_profit_pct=0.05,
        trailing_stop_pct=0.03,
        sizing={"method": "fixed_fractional", "risk_fraction": 0.02},
        initial_capital=2500,
    )
    window = market["window"]
    bars = stored(backtest, market["symbol"], "1h", window["since"], window["until"])
    result = in_process(bars, run)
    reasons = {t["exit_reason"] for t in result.trades}
    assert {"stop_loss", "signal"} <= reasons and {t["side"] for t in result.trades} == {
        "long",
        "short",
    }
    check_against_engine(backtest, run, bars, result)


def test_a_longer_timeframe_is_built_from_stored_bars(
    backtest: Backtest, market: dict[str, Any]
) -> None:
    window = {**market["window"], "timeframe": "4h"}
    run = backtest.run(**window, strategy="rsi_mean_reversion")
    assert run["resampled_from"] == "1h", run
    source = stored(backtest, market["symbol"], "1h", window["since"], window["until"])
    span = (int(source.ts[0]), int(source.ts[-1]))
    bars, _ = resample(source, HOUR, 4 * HOUR, span)
    assert len(bars) == COUNT // 4 - 1 or len(bars) == COUNT // 4
    check_against_engine(backtest, run, bars, in_process(bars, run))


def test_equity_downsampling_keeps_the_ends_the_extremes_and_the_drawdown(
    backtest: Backtest, market: dict[str, Any]
) -> None:
    run = backtest.run(**market["window"], strategy="sma_cross")
    full = backtest.ok(backtest.get(f"/backtest/{run['id']}/equity", params={"points": 0}))
    small = backtest.ok(backtest.get(f"/backtest/{run['id']}/equity", params={"points": 50}))
    assert 2 < small["points"] <= 50 and small["bars"] == COUNT and small["downsampling"]
    assert small["ts"][0] == full["ts"][0] and small["ts"][-1] == full["ts"][-1]
    assert small["equity"][-1] == full["equity"][-1] == run["stats"]["final_equity"]
    assert min(small["equity"]) == min(full["equity"]) and max(small["equity"]) == max(
        full["equity"]
    )
    assert small["ts"] == sorted(set(small["ts"]))
    equity = np.asarray(full["equity"])
    dd = drawdown(equity, 10_000.0)
    assert full["drawdown"] == dd.tolist()
    assert (
        max(small["drawdown"])
        == max(full["drawdown"])
        == pytest.approx(run["stats"]["max_drawdown"])
    )
    index = {t: i for i, t in enumerate(full["ts"])}
    for t, e in zip(small["ts"], small["equity"], strict=True):
        assert full["equity"][index[t]] == e


def test_list_and_delete(backtest: Backtest, market: dict[str, Any]) -> None:
    first = backtest.run(**market["window"], strategy="macd_cross")
    second = backtest.run(**market["window"], strategy="bollinger_breakout")
    listed = backtest.ok(
        backtest.get("/backtest/list", params={"symbol": market["symbol"].replace("/", "-")})
    )
    ids = [r["id"] for r in listed["items"]]
    assert ids.index(second["id"]) < ids.index(first["id"])  # newest first
    assert listed["total"] == len(ids) >= 2
    only = backtest.ok(
        backtest.get(
            "/backtest/list", params={"strategy": "macd_cross", "status": "done", "limit": 200}
        )
    )
    assert first["id"] in [r["id"] for r in only["items"]]
    assert {r["strategy"] for r in only["items"]} == {"macd_cross"}
    paged = backtest.ok(
        backtest.get("/backtest/list", params={"symbol": market["symbol"], "limit": 1, "offset": 1})
    )
    assert [r["id"] for r in paged["items"]] == ids[1:2]

    assert backtest.request("DELETE", f"/backtest/{first['id']}").status_code == 204
    assert backtest.get(f"/backtest/{first['id']}").status_code == 404
    assert backtest.request("DELETE", f"/backtest/{first['id']}").status_code == 404
    for table in ("backtest_trades", "backtest_equity"):
        left = backtest.rows(
            f"SELECT count(*) AS n FROM {table} WHERE backtest_id = :id",  # noqa: S608
            id=first["id"],
        )
        assert left == [{"n": 0}]
    assert backtest.get(f"/backtest/{second['id']}").status_code == 200
    unknown = backtest.get("/backtest/0123456789abcdef0123456789abcdef/trades")
    assert unknown.status_code == 404 and "GET /backtest/list" in unknown.json()["detail"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"strategy": "moon"}, "body.strategy", "unknown strategy 'moon'"),
        ({"params": {"fast": 1}}, "body.params.fast", "within 2..1000"),
        ({"params": {"speed": 3}}, "body.params.speed", "no parameter 'speed'"),
        ({"params": {"fast": 40, "slow": 20}}, "body.params.fast", "shorter than slow"),
        ({"timeframe": "2m"}, "body.timeframe", "'1m'"),
        ({"symbol": "BTCUSDT"}, "body.symbol", "pattern"),
        ({"until": "2024-01-01"}, "body.until", "after since"),
        ({"fee_rate": 0.5}, "body.fee_rate", "[0, 0.1)"),
        ({"initial_capital": 0}, "body.initial_capital", "above 0"),
        ({"stop_loss_pct": 1.5}, "body.stop_loss_pct", "(0, 0.99]"),
        ({"sizing": {"method": "fixed_fractional"}}, "body.stop_loss_pct", "set a stop-loss"),
        ({"sizing": {"method": "kelly"}}, "body.sizing.win_rate", "win rate"),
        ({"sizing": {"method": "martingale"}}, "body.sizing.method", "all_in"),
        ({"fill": "vwap"}, "body.fill", "next_open"),
        ({"model_id": 3}, "body.model_id", "only the ml strategy"),
        ({"leverage": 10}, "body.leverage", "not permitted"),
    ],
)
def test_bad_requests_name_the_field(
    backtest: Backtest, market: dict[str, Any], change: dict[str, Any], field: str, words: str
) -> None:
    body = {"exchange": "sim", **market["window"], "since": "2024-02-01", "strategy": "sma_cross"}
    response = backtest.post("/backtest/run", body | change)
    assert field_errors(response) == [field]
    assert words in response.json()["detail"], response.json()["detail"]


def test_no_stored_bars_says_what_is_stored_and_how_to_fetch(
    backtest: Backtest, market: dict[str, Any]
) -> None:
    bars = market["bars"]
    body = {
        **market["window"],
        "strategy": "sma_cross",
        "since": "2023-01-01",
        "until": "2023-06-01",
    }
    response = backtest.post("/backtest/run", body)
    assert field_errors(response) == ["body.since"]
    detail = response.json()["detail"]
    assert f"1h from {iso(int(bars.ts[0]))} to {iso(int(bars.ts[-1]))}" in detail
    assert "POST /data/fetch" in detail
    nothing = backtest.post("/backtest/run", {**body, "symbol": "NONE/USDT"})
    assert field_errors(nothing) == ["body.since"] and "stored: nothing" in nothing.json()["detail"]


def test_not_done_yet_is_409_and_cancel(backtest: Backtest, market: dict[str, Any]) -> None:
    body = {"exchange": "sim", **market["window"], "strategy": "sma_cross"}
    accepted = backtest.ok(backtest.post("/backtest/run", body), 202)
    cancelled = backtest.ok(backtest.post(f"/backtest/{accepted['id']}/cancel"))
    run = backtest.wait_run(accepted["id"])
    if cancelled["status"] == "cancelled":  # caught before it finished (the usual case)
        assert run["status"] == "cancelled" and run["stats"] is None
        response = backtest.get(f"/backtest/{accepted['id']}/trades")
        assert response.status_code == 409 and "cancelled" in response.json()["detail"]
    else:
        assert run["status"] == "done"
