"""The autonomous loop over HTTP on `sim`: a signal becomes exactly one order through
risk and compliance, a repeated tick never doubles it, a halt stops the loop for good,
and bad inputs name the field to fix."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from common.quant.bars import TIMEFRAME_MS, Bars
from common.quant.strategies import get_strategy
from tests.conftest import Stack

SYMBOL = "SOL/USDT"  # the execution tests trade BTC and ETH


def call(stack: Stack, method: str, service: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, stack.url(service) + path, headers=stack.auth(), timeout=60, **kwargs
    )


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


@pytest.fixture(autouse=True)
def _trading(stack: Stack) -> Iterator[None]:
    """Trading ACTIVE, look-alike orders allowed, the drawdown peak at the real equity,
    no loop running, no position in SYMBOL; limits and state put back afterwards."""
    saved = ok(call(stack, "GET", "risk", "/limits"))
    from agents.risk.schemas import Limits

    editable = {k: v for k, v in saved.items() if k in Limits.model_fields}
    relaxed = {**editable, "duplicate_window_s": 0, "max_orders_per_minute": 100_000}
    ok(call(stack, "PUT", "risk", "/limits", json=relaxed))
    # Other suites leave synthetic equity peaks behind; the sim account is ~10,000 USDT.
    ok(call(stack, "POST", "risk", "/drawdown/reset", json={"reason": "test", "equity": "1"}))
    if ok(call(stack, "GET", "risk", "/state"))["state"] != "ACTIVE":
        ok(call(stack, "POST", "risk", "/resume", json={"reason": "test setup"}))
    call(stack, "POST", "signal", "/autonomous/stop", json={"reason": "test setup"})
    call(stack, "POST", "execution", "/positions/sim/close", json={"symbol": SYMBOL})
    yield
    call(stack, "POST", "signal", "/autonomous/stop", json={"reason": "test cleanup"})
    if ok(call(stack, "GET", "risk", "/state"))["state"] != "ACTIVE":
        ok(call(stack, "POST", "risk", "/resume", json={"reason": "test cleanup"}))
    ok(call(stack, "PUT", "risk", "/limits", json=editable))


def _closed_bars(stack: Stack, timeframe: str = "1m") -> Bars:
    body = ok(
        call(
            stack,
            "GET",
            "execution",
            f"/ohlcv/sim/{SYMBOL.replace('/', '-')}",
            params={"timeframe": timeframe, "limit": 200},
        )
    )
    bars = Bars.from_rows(body["bars"])
    if bars.ts[-1] + TIMEFRAME_MS[timeframe] > time.time() * 1000:
        bars = bars.slice(0, len(bars) - 1)
    return bars


def _params_with_a_buy_now(stack: Stack) -> tuple[dict[str, int], int]:
    """SMA periods whose fast average crossed above the slow one on the last closed
    minute: the sim's prices are seeded, not chosen, so search for such a pair."""
    strategy = get_strategy("sma_cross")
    bars = _closed_bars(stack)
    for slow in range(3, 80):
        for fast in range(2, slow):
            params = strategy.validate({"fast": fast, "slow": slow})
            if strategy.generate(bars, params).entries[-1]:
                return {"fast": fast, "slow": slow}, int(bars.ts[-1])
    pytest.fail("no SMA pair crosses upward on the last closed minute")


def _decide_buy(stack: Stack) -> dict[str, Any]:
    """A decide call on the bar we searched; retried if the minute turned meanwhile."""
    for _ in range(4):
        params, bar_ts = _params_with_a_buy_now(stack)
        decision = ok(
            call(
                stack,
                "POST",
                "signal",
                "/autonomous/decide",
                json={
                    "symbol": SYMBOL,
                    "timeframe": "1m",
                    "strategy": "sma_cross",
                    "params": params,
                },
            )
        )
        if decision["signal"] == "buy":
            decision["_params"] = params
            return decision
        assert decision["bar_ts"] is not None and bar_ts < _ms(decision["bar_ts"]), decision
    pytest.fail("the minute kept turning between search and decision")


def _ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def test_a_buy_signal_becomes_exactly_one_order_through_risk_and_compliance(
    stack: Stack,
) -> None:
    first = _decide_buy(stack)
    assert first["outcome"] == "ordered" and first["action"] == "buy", first
    cid = first["client_order_id"]
    assert cid.startswith("auto-") and first["order_id"] is not None
    assert first["reasons"]["sizing"]["method"] == "atr"
    assert float(first["reasons"]["order"]["stop_loss"]) < first["reasons"]["close"]

    # The same tick again (a retry, the loop beside /decide): the same order, not a second.
    again = ok(
        call(
            stack,
            "POST",
            "signal",
            "/autonomous/decide",
            json={
                "symbol": SYMBOL,
                "timeframe": "1m",
                "strategy": "sma_cross",
                "params": first["_params"],
            },
        )
    )
    if again["bar_ts"] == first["bar_ts"]:
        assert again["client_order_id"] == cid and again["order_id"] == first["order_id"]
    with stack.engine().connect() as conn:
        orders = conn.execute(
            text("SELECT count(*) FROM orders WHERE client_order_id = :c"), {"c": cid}
        ).scalar_one()
        checks = conn.execute(
            text("SELECT count(*) FROM risk_checks WHERE client_order_id = :c AND approved"),
            {"c": cid},
        ).scalar_one()
        policy = conn.execute(
            text("SELECT count(*) FROM policy_decisions WHERE client_order_id = :c AND approved"),
            {"c": cid},
        ).scalar_one()
    assert orders == 1 and checks >= 1 and policy >= 1

    def audited() -> bool:
        events = ok(call(stack, "GET", "compliance", "/audit", params={"subject": cid}))
        kinds = {e["kind"] for e in events["items"]}
        return "autonomous.decided" in kinds

    stack.wait_for(audited, timeout=30, what="the decision in the audit log")


def test_the_loop_ticks_and_a_halt_stops_it_for_good(stack: Stack) -> None:
    run = ok(
        call(
            stack,
            "POST",
            "signal",
            "/autonomous/start",
            json={"symbols": [SYMBOL, "XRP/USDT"], "timeframe": "1m", "interval": 5},
        ),
        201,
    )
    assert run["status"] == "running"
    clash = call(stack, "POST", "signal", "/autonomous/start", json={"symbols": [SYMBOL]})
    assert clash.status_code == 409 and "already running" in clash.json()["detail"]

    def ticked() -> bool:
        status = ok(call(stack, "GET", "signal", "/autonomous/status"))
        return status["run"]["ticks"] >= 1 and len(status["recent_decisions"]) >= 2

    stack.wait_for(ticked, timeout=60, what="a first tick")

    ok(call(stack, "POST", "risk", "/halt", json={"reason": "test halt", "flatten": False}))

    def stopped() -> bool:
        return not ok(call(stack, "GET", "signal", "/autonomous/status"))["running"]

    stack.wait_for(stopped, timeout=30, what="the loop to stop on the halt")
    status = ok(call(stack, "GET", "signal", "/autonomous/status"))
    assert "halted" in status["run"]["stop_reason"] and "test halt" in status["run"]["stop_reason"]
    refused = call(stack, "POST", "signal", "/autonomous/start", json={"symbols": [SYMBOL]})
    assert refused.status_code == 409 and "HALTED" in refused.json()["detail"]

    ok(call(stack, "POST", "risk", "/resume", json={"reason": "test resume"}))
    time.sleep(6)  # longer than the interval: a restarted loop would have ticked
    after = ok(call(stack, "GET", "signal", "/autonomous/status"))
    assert not after["running"] and after["run"]["ticks"] == status["run"]["ticks"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"symbols": ["DOGE/USDT"]}, "symbols"),
        ({"symbols": [SYMBOL], "exchange": "nowhere"}, "exchange"),
        ({"symbols": [SYMBOL], "timeframe": "7m"}, "timeframe"),
        ({"symbols": [SYMBOL], "strategy": "astrology"}, "strategy"),
        ({"symbols": [SYMBOL], "params": {"fast": 50, "slow": 10}}, "params.fast"),
        ({"symbols": [SYMBOL], "params": {"speed": 3}}, "params.speed"),
        ({"symbols": [SYMBOL], "interval": 1}, "interval"),
        ({"symbols": []}, "symbols"),
        ({"symbols": ["btc-usdt"]}, "symbols"),
    ],
)
def test_bad_inputs_name_the_field(stack: Stack, body: dict[str, Any], field: str) -> None:
    response = call(stack, "POST", "signal", "/autonomous/start", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    named = problem["detail"] + " ".join(
        ".".join(str(p) for p in e.get("loc", [])) for e in problem.get("errors") or []
    )
    assert field in named, problem
    assert not ok(call(stack, "GET", "signal", "/autonomous/status"))["running"]


def test_decide_names_a_bad_symbol_and_every_route_needs_a_token(stack: Stack) -> None:
    response = call(stack, "POST", "signal", "/autonomous/decide", json={"symbol": "DOGE/USDT"})
    assert response.status_code == 422 and "symbol" in response.json()["detail"]
    for method, path in [
        ("POST", "/autonomous/start"),
        ("POST", "/autonomous/stop"),
        ("GET", "/autonomous/status"),
        ("POST", "/autonomous/decide"),
        ("GET", "/autonomous/decisions"),
    ]:
        assert httpx.request(method, stack.url("signal") + path, timeout=10).status_code == 401
