"""The autonomous loop over HTTP on `sim`: a signal becomes exactly one order through
risk and compliance, a repeated tick never doubles it, a halt stops the loop for good,
and bad inputs name the field to fix."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
    # The sim account's own peak at its equity now (404 before its first order: none yet).
    call(stack, "POST", "risk", "/drawdown/reset", json={"reason": "test", "account": "sim"})
    # Always: a halt risk could not record (its database-outage test) still closed
    # execution's own gate, and only a resume opens it again.
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


def _params_with_a_buy_now(
    stack: Stack, timeframe: str = "1m"
) -> tuple[str, dict[str, float], int]:
    """A strategy and parameters that buy on the last closed bar: the sim's prices are
    seeded, not chosen, so search. SMA periods whose fast average crossed above the slow
    one; in a slide no pair does, so then an RSI period and oversold level it climbed back
    above (any bar the RSI rose on has one); else wait for the next bar."""
    sma, rsi = get_strategy("sma_cross"), get_strategy("rsi_mean_reversion")
    step_s = TIMEFRAME_MS[timeframe] / 1000
    for _ in range(3):
        bars = _closed_bars(stack, timeframe)
        for slow in range(3, 80):
            for fast in range(2, slow):
                params = sma.validate({"fast": fast, "slow": slow})
                if sma.generate(bars, params).entries[-1]:
                    return "sma_cross", {"fast": fast, "slow": slow}, int(bars.ts[-1])
        for period in range(2, 31):
            for lower in range(5, 96):
                wanted = {"period": period, "lower": lower, "upper": 99}
                if rsi.generate(bars, rsi.validate(wanted)).entries[-1]:
                    return "rsi_mean_reversion", wanted, int(bars.ts[-1])
        time.sleep(step_s - time.time() % step_s + 1)
    pytest.fail(f"no strategy buys on three last closed {timeframe} bars")


def _decide_buy_concurrently(stack: Stack, n: int = 5) -> list[dict[str, Any]]:
    """`n` decide calls at once on the bar we searched (a tick racing its own retry);
    searched again if the minute turned meanwhile."""
    for _ in range(4):
        strategy, params, bar_ts = _params_with_a_buy_now(stack)
        body = {"symbol": SYMBOL, "timeframe": "1m", "strategy": strategy, "params": params}
        with ThreadPoolExecutor(max_workers=n) as pool:
            decisions = list(
                pool.map(
                    lambda b: ok(call(stack, "POST", "signal", "/autonomous/decide", json=b)),
                    [body] * n,
                )
            )
        if all(d["bar_ts"] is not None and _ms(d["bar_ts"]) == bar_ts for d in decisions):
            return decisions
    pytest.fail("the minute kept turning between search and decision")


def _ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def test_a_buy_signal_becomes_exactly_one_order_through_risk_and_compliance(
    stack: Stack,
) -> None:
    decisions = _decide_buy_concurrently(stack)
    assert all(d["signal"] == "buy" for d in decisions), decisions
    ordered = [d for d in decisions if d["outcome"] == "ordered"]
    assert ordered, decisions
    # Racing ticks on one bar share one client order id, hence one order; a tick that
    # came after the fill saw the position instead and stood aside.
    assert len({d["client_order_id"] for d in ordered}) == 1
    assert len({d["order_id"] for d in ordered}) == 1
    for d in decisions:
        if d["outcome"] != "ordered":
            assert d["outcome"] == "skipped" and "already long" in d["detail"], d["detail"]
    first = ordered[0]
    cid = first["client_order_id"]
    assert cid.startswith("auto") and len(cid) <= 36 and first["action"] == "buy"
    assert first["reasons"]["sizing"]["method"] == "atr"
    assert float(first["reasons"]["order"]["stop_loss"]) < first["reasons"]["close"]
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


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"symbol": "btc-usdt"}, "query.symbol"),
        ({"outcome": "maybe"}, "query.outcome"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 501}, "query.limit"),
        ({"run_id": "latest"}, "query.run_id"),
        ({"before_id": "x"}, "query.before_id"),
    ],
)
def test_decision_queries_name_the_field(stack: Stack, params: dict[str, Any], field: str) -> None:
    response = call(stack, "GET", "signal", "/autonomous/decisions", params=params)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]


def test_decisions_filter_by_outcome_and_page_newest_first(stack: Stack) -> None:
    for _ in range(2):
        ok(call(stack, "POST", "signal", "/autonomous/decide", json={"symbol": SYMBOL}))
    everything = ok(call(stack, "GET", "signal", "/autonomous/decisions", params={"limit": 500}))
    ids = [d["id"] for d in everything]
    assert len(ids) >= 2 and ids == sorted(ids, reverse=True)
    page = ok(
        call(
            stack,
            "GET",
            "signal",
            "/autonomous/decisions",
            params={"before_id": ids[0], "limit": 1},
        )
    )
    assert [d["id"] for d in page] == [ids[1]]
    mine = ok(call(stack, "GET", "signal", "/autonomous/decisions", params={"symbol": SYMBOL}))
    assert mine and {d["symbol"] for d in mine} == {SYMBOL}
    for outcome in ("ordered", "skipped", "refused", "error"):
        found = ok(
            call(stack, "GET", "signal", "/autonomous/decisions", params={"outcome": outcome})
        )
        assert {d["outcome"] for d in found} <= {outcome}


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


def _fetch_minutes(stack: Stack, symbol: str, minutes: int) -> None:
    """Store the sim's last `minutes` one-minute candles in the backtest agent."""
    now = int(time.time() * 1000) // 60_000 * 60_000
    body = {
        "exchange": "sim",
        "symbol": symbol,
        "timeframe": "1m",
        "since": now - minutes * 60_000,
        "until": now,
    }
    job = ok(call(stack, "POST", "backtest", "/data/fetch", json=body), 202)

    def done() -> bool:
        state = ok(call(stack, "GET", "backtest", f"/data/jobs/{job['id']}"))
        assert state["status"] not in ("failed", "cancelled"), state
        return bool(state["status"] == "done")

    stack.wait_for(done, timeout=120, what="the candles to be fetched")


def test_the_ml_strategy_trades_on_the_active_model(stack: Stack) -> None:
    refused = call(
        stack,
        "POST",
        "signal",
        "/autonomous/start",
        json={"symbols": ["BNB/USDT"], "strategy": "ml"},
    )
    assert refused.status_code == 422 and "active model" in refused.json()["detail"]

    _fetch_minutes(stack, SYMBOL, 1500)
    train = {"exchange": "sim", "symbol": SYMBOL, "timeframe": "1m", "model": "logistic_regression"}
    model = ok(call(stack, "POST", "signal", "/models/train", json={**train, "limit": 1400}), 201)
    ok(call(stack, "POST", "signal", f"/models/{model['id']}/activate"))

    decision = ok(
        call(
            stack,
            "POST",
            "signal",
            "/autonomous/decide",
            json={"symbol": SYMBOL, "timeframe": "1m", "strategy": "ml"},
        )
    )
    assert decision["strategy"] == "ml" and decision["outcome"] != "error", decision
    assert 0.0 <= decision["reasons"]["probability"] <= 1.0
    assert decision["signal"] in ("buy", "sell", "hold")
    run = ok(
        call(
            stack,
            "POST",
            "signal",
            "/autonomous/start",
            json={"symbols": [SYMBOL], "timeframe": "1m", "strategy": "ml", "interval": 60},
        ),
        201,
    )
    assert run["strategy"] == "ml"


def test_a_refused_attempt_is_tried_again_under_the_next_id_on_the_same_bar(
    stack: Stack,
) -> None:
    policies = ok(call(stack, "GET", "compliance", "/policies"))
    editable = {
        k: policies[k]
        for k in (
            "restricted_symbols",
            "allowed_exchanges",
            "trading_windows",
            "max_orders_per_day",
        )
    }
    for _ in range(3):
        # 3m bars: another test may have ordered this minute's 1m signal already (the
        # same client order id), and a replay of that order would not be refused.
        strategy, params, bar_ts = _params_with_a_buy_now(stack, "3m")
        body = {"symbol": SYMBOL, "timeframe": "3m", "strategy": strategy, "params": params}
        # Compliance refuses the first attempt after execution has claimed its id ...
        restricted = {**editable, "restricted_symbols": [SYMBOL]}
        ok(call(stack, "PUT", "compliance", "/policies", json=restricted))
        try:
            first = ok(call(stack, "POST", "signal", "/autonomous/decide", json=body))
        finally:
            ok(call(stack, "PUT", "compliance", "/policies", json=editable))
        # ... and a later tick on the same bar sends the order under the next id.
        second = ok(call(stack, "POST", "signal", "/autonomous/decide", json=body))
        if _ms(first["bar_ts"]) == bar_ts == _ms(second["bar_ts"]):
            break
    else:
        pytest.fail("the minute kept turning between the two ticks")
    assert first["outcome"] == "refused" and first["order_id"] is None, first
    assert second["outcome"] == "ordered", second
    assert second["client_order_id"] == first["client_order_id"] + "-2"
    with stack.engine().connect() as conn:
        statuses = dict(
            conn.execute(
                text("SELECT client_order_id, status FROM orders WHERE client_order_id LIKE :c"),
                {"c": first["client_order_id"] + "%"},
            ).all()
        )
    assert statuses[first["client_order_id"]] == "rejected"
    assert statuses[second["client_order_id"]] == "filled" and len(statuses) == 2


def test_a_halt_while_the_loop_was_not_looking_still_stops_it(stack: Stack) -> None:
    ok(
        call(
            stack,
            "POST",
            "signal",
            "/autonomous/start",
            json={"symbols": [SYMBOL], "timeframe": "1m", "interval": 3600},
        ),
        201,
    )
    stack.wait_for(
        lambda: ok(call(stack, "GET", "signal", "/autonomous/status"))["run"]["ticks"] >= 1,
        timeout=60,
        what="a first tick",
    )
    stack.volex("stop", "signal")
    try:  # halted and resumed while the signal agent is down: no broadcast reaches it
        ok(call(stack, "POST", "risk", "/halt", json={"reason": "while away", "flatten": False}))
        ok(call(stack, "POST", "risk", "/resume", json={"reason": "back"}))
    finally:
        stack.volex("start", "signal")
    stack.wait_for(lambda: stack.healthy("signal"), timeout=90, what="signal back")

    def stopped() -> bool:
        return not ok(call(stack, "GET", "signal", "/autonomous/status"))["running"]

    stack.wait_for(stopped, timeout=60, what="the loop to notice the halt it missed")
    reason = ok(call(stack, "GET", "signal", "/autonomous/status"))["run"]["stop_reason"]
    assert "while away" in reason and "since resumed" in reason, reason
