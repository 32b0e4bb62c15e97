"""POST /checks/policy, GET/PUT /policies over HTTP against the real compliance service.

Every rule has a test that trips it and one that passes it; every decision lands in the
audit log with its rules; only the operator may change policies; bad policies are 422.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from agents.compliance.policy import RULES
from tests.agents.compliance.conftest import (
    DEFAULT_POLICY,
    call,
    order,
    rule,
    service_token,
)
from tests.conftest import Stack

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
SetPolicy = Callable[..., dict[str, Any]]


def check(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    response = call(
        stack, "POST", "/checks/policy", json=body, token=service_token(stack, "execution")
    )
    assert response.status_code == 200, response.text
    decision: dict[str, Any] = response.json()
    return decision


def test_an_order_breaking_no_rule_is_approved_with_a_result_per_rule(
    stack: Stack, set_policy: SetPolicy
) -> None:
    set_policy()
    decision = check(stack, order())
    assert decision["approved"] is True
    assert [c["rule"] for c in decision["checks"]] == list(RULES)
    assert all(c["passed"] and c["detail"] for c in decision["checks"])


def test_restricted_symbols_and_assets_are_refused(stack: Stack, set_policy: SetPolicy) -> None:
    set_policy(restricted_symbols=["BTC/USDT", "XMR"])
    tripped = check(stack, order(symbol="BTC/USDT"))
    assert tripped["approved"] is False
    assert rule(tripped, "restricted_symbols") == {
        "rule": "restricted_symbols",
        "passed": False,
        "detail": "BTC/USDT is restricted (matches BTC/USDT)",
    }
    by_asset = check(stack, order(symbol="BTC/XMR"))
    assert not rule(by_asset, "restricted_symbols")["passed"]
    assert "XMR" in rule(by_asset, "restricted_symbols")["detail"]
    # The other rules are still evaluated and reported.
    assert rule(tripped, "allowed_exchanges")["passed"]


def test_unrestricted_symbols_pass(stack: Stack, set_policy: SetPolicy) -> None:
    set_policy(restricted_symbols=["BTC/USDT", "XMR"])
    passed = check(stack, order(symbol="ETH/USDT"))
    assert passed["approved"] is True
    assert rule(passed, "restricted_symbols")["passed"]


def test_exchanges_outside_the_allowed_list_are_refused(
    stack: Stack, set_policy: SetPolicy
) -> None:
    set_policy(allowed_exchanges=["sim", "kraken"])
    tripped = check(stack, order(exchange="binance"))
    assert tripped["approved"] is False
    result = rule(tripped, "allowed_exchanges")
    assert not result["passed"]
    assert result["detail"] == "binance is not an allowed exchange; allowed: [sim, kraken]"
    passed = check(stack, order(exchange="kraken"))
    assert passed["approved"] is True and rule(passed, "allowed_exchanges")["passed"]


def _today() -> str:
    """Today's UTC weekday, waiting out the last seconds before midnight."""
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    if midnight - now < timedelta(seconds=10):
        time.sleep((midnight - now).total_seconds() + 1)
        now = datetime.now(UTC)
    return DAYS[now.weekday()]


def test_orders_outside_every_trading_window_are_refused(
    stack: Stack, set_policy: SetPolicy
) -> None:
    today = _today()
    other_days = [d for d in DAYS if d != today]
    set_policy(trading_windows=[{"days": other_days, "start": "00:00", "end": "24:00"}])
    tripped = check(stack, order())
    assert tripped["approved"] is False
    result = rule(tripped, "trading_window")
    assert not result["passed"]
    assert (
        result["detail"].startswith(f"{today} ")
        and "outside every trading window" in result["detail"]
    )


def test_orders_inside_a_trading_window_pass(stack: Stack, set_policy: SetPolicy) -> None:
    today = _today()
    others = [d for d in DAYS if d != today]
    set_policy(
        trading_windows=[
            {"days": others, "start": "09:00", "end": "17:00"},
            {"days": [today], "start": "00:00", "end": "24:00"},
        ]
    )
    passed = check(stack, order())
    assert passed["approved"] is True
    assert f"inside window {today} 00:00-24:00" in rule(passed, "trading_window")["detail"]


def _approved_today(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(DISTINCT client_order_id) FROM policy_decisions"
                    " WHERE approved AND at >= date_trunc('day', now() AT TIME ZONE 'UTC')"
                    " AT TIME ZONE 'UTC'"
                )
            ).scalar_one()
        )


def test_max_orders_per_day_counts_approved_orders_once(
    stack: Stack, set_policy: SetPolicy, engine: Engine
) -> None:
    _today()
    count = _approved_today(engine)
    set_policy(max_orders_per_day=count + 1)
    first = order()
    assert check(stack, first)["approved"] is True

    second = order()
    tripped = check(stack, second)
    assert tripped["approved"] is False
    result = rule(tripped, "max_orders_per_day")
    assert not result["passed"]
    assert result["detail"] == (
        f"{count + 1} approved today, this order would be number {count + 2}; "
        f"max_orders_per_day {count + 1}"
    )
    # Asking again about an order already approved today does not count it twice.
    again = check(stack, first)
    assert again["approved"] is True and rule(again, "max_orders_per_day")["passed"]
    # A refused order was not counted: one more allowed lets it through.
    set_policy(max_orders_per_day=count + 2)
    assert check(stack, second)["approved"] is True


def test_max_orders_per_day_zero_refuses_and_none_allows(
    stack: Stack, set_policy: SetPolicy
) -> None:
    set_policy(max_orders_per_day=0)
    assert not rule(check(stack, order()), "max_orders_per_day")["passed"]
    set_policy(max_orders_per_day=None)
    assert rule(check(stack, order()), "max_orders_per_day")["passed"]


RESTING_SELL = {"side": "sell", "price": "100", "amount": "0.3"}
RESTING_BUY = {"side": "buy", "price": "100", "amount": "0.3"}


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        (
            {"side": "buy", "price": "101", "resting_orders": [RESTING_SELL]},
            "buy at limit price 101 would cross our resting sell at 100 (amount 0.3)",
        ),
        (
            {"side": "buy", "price": "100", "resting_orders": [RESTING_SELL]},
            "buy at limit price 100 would cross our resting sell at 100",
        ),
        (
            {"side": "sell", "price": "99.5", "resting_orders": [RESTING_BUY]},
            "sell at limit price 99.5 would cross our resting buy at 100",
        ),
        (
            {
                "type": "market",
                "price": None,
                "reference_price": "100.2",
                "resting_orders": [RESTING_SELL],
            },
            "buy at reference price 100.2 would cross our resting sell at 100",
        ),
        (
            {
                "type": "market",
                "price": None,
                "reference_price": None,
                "resting_orders": [RESTING_SELL],
            },
            "market buy has no price or reference_price to compare with our 1 resting sell",
        ),
    ],
)
def test_orders_crossing_our_own_resting_orders_are_refused(
    stack: Stack, set_policy: SetPolicy, overrides: dict[str, Any], detail: str
) -> None:
    set_policy()
    decision = check(stack, order(**overrides))
    assert decision["approved"] is False
    result = rule(decision, "wash_trade")
    assert not result["passed"]
    assert result["detail"].startswith(detail), result["detail"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"side": "buy", "price": "99.99", "resting_orders": [RESTING_SELL]},
        {"side": "sell", "price": "100.01", "resting_orders": [RESTING_BUY]},
        {
            "type": "market",
            "price": None,
            "reference_price": "99",
            "resting_orders": [RESTING_SELL],
        },
        # Our own orders on the same side are not a wash trade.
        {"side": "buy", "price": "150", "resting_orders": [RESTING_BUY]},
    ],
)
def test_orders_not_crossing_our_resting_orders_pass(
    stack: Stack, set_policy: SetPolicy, overrides: dict[str, Any]
) -> None:
    set_policy()
    decision = check(stack, order(**overrides))
    assert rule(decision, "wash_trade")["passed"], rule(decision, "wash_trade")
    assert decision["approved"] is True


def test_every_decision_is_audited_with_its_rules(stack: Stack, set_policy: SetPolicy) -> None:
    set_policy(restricted_symbols=["DOGE"])
    body = order(symbol="DOGE/USDT")
    decision = check(stack, body)
    page = call(
        stack,
        "GET",
        "/audit",
        params={"kind": "policy.checked", "subject": body["client_order_id"]},
    ).json()
    [event] = page["items"]
    assert event["actor"] == "execution"
    assert event["data"]["approved"] is False
    assert event["data"]["checks"] == decision["checks"]
    assert event["data"]["order"]["symbol"] == "DOGE/USDT"


def test_bad_policy_requests_are_422_naming_the_field(stack: Stack) -> None:
    body = order(amount="-1")
    response = call(
        stack, "POST", "/checks/policy", json=body, token=service_token(stack, "execution")
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in response.json()["errors"]] == ["body.amount"]


def test_a_service_may_not_change_policies(stack: Stack, set_policy: SetPolicy) -> None:
    before = set_policy()
    attempt = {**DEFAULT_POLICY, "allowed_exchanges": ["binance"]}
    for service in ("execution", "risk"):
        response = call(
            stack, "PUT", "/policies", json=attempt, token=service_token(stack, service)
        )
        assert response.status_code == 403, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert service in response.json()["detail"]
    after = call(stack, "GET", "/policies").json()
    assert after == before
    # Reading them is fine for a service.
    read = call(stack, "GET", "/policies", token=service_token(stack, "execution"))
    assert read.status_code == 200


def test_a_policy_change_is_audited_with_old_and_new(stack: Stack, set_policy: SetPolicy) -> None:
    before = set_policy()
    window = {"days": ["fri", "mon"], "start": "08:30", "end": "16:00"}
    after = set_policy(
        restricted_symbols=["LUNA", "LUNA", "FTT/USDT"],
        trading_windows=[window],
        max_orders_per_day=40,
    )
    assert after["version"] == before["version"] + 1
    assert after["updated_by"] == "operator"
    assert after["restricted_symbols"] == ["LUNA", "FTT/USDT"]  # duplicates dropped
    assert after["trading_windows"] == [{"days": ["mon", "fri"], "start": "08:30", "end": "16:00"}]
    assert call(stack, "GET", "/policies").json() == after

    page = call(stack, "GET", "/audit", params={"kind": "policy.changed", "limit": 1}).json()
    [event] = page["items"]
    assert event["actor"] == "operator"
    assert event["data"]["version"] == after["version"]
    assert event["data"]["old"] == {k: before[k] for k in DEFAULT_POLICY}
    assert event["data"]["new"] == {k: after[k] for k in DEFAULT_POLICY}


GOOD_WINDOW = {"days": ["mon"], "start": "09:00", "end": "17:00"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_orders_per_day": -1}, "body.max_orders_per_day"),
        ({"max_orders_per_day": "lots"}, "body.max_orders_per_day"),
        ({"restricted_symbols": ["btc/usdt"]}, "body.restricted_symbols.0"),
        ({"restricted_symbols": "BTC/USDT"}, "body.restricted_symbols"),
        ({"allowed_exchanges": []}, "body.allowed_exchanges"),
        ({"allowed_exchanges": ["Binance US"]}, "body.allowed_exchanges.0"),
        (
            {"trading_windows": [{**GOOD_WINDOW, "days": ["funday"]}]},
            "body.trading_windows.0.days.0",
        ),
        ({"trading_windows": [{**GOOD_WINDOW, "days": []}]}, "body.trading_windows.0.days"),
        ({"trading_windows": [{**GOOD_WINDOW, "start": "25:00"}]}, "body.trading_windows.0.start"),
        ({"trading_windows": [{**GOOD_WINDOW, "end": "9am"}]}, "body.trading_windows.0.end"),
        ({"trading_windows": [{**GOOD_WINDOW, "end": "08:00"}]}, "body.trading_windows.0"),
        ({"trading_windows": [{**GOOD_WINDOW, "tz": "CET"}]}, "body.trading_windows.0.tz"),
        ({"max_order_per_day": 5}, "body.max_order_per_day"),
    ],
)
def test_bad_policies_are_422_naming_the_field(
    stack: Stack, set_policy: SetPolicy, changes: dict[str, Any], field: str
) -> None:
    before = set_policy()
    response = call(stack, "PUT", "/policies", json={**DEFAULT_POLICY, **changes})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    fields = [e["field"] for e in response.json()["errors"]]
    assert field in fields, fields
    assert call(stack, "GET", "/policies").json() == before


def test_a_policy_put_must_name_every_field(stack: Stack, set_policy: SetPolicy) -> None:
    before = set_policy()
    partial = {k: v for k, v in DEFAULT_POLICY.items() if k != "max_orders_per_day"}
    response = call(stack, "PUT", "/policies", json=partial)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["body.max_orders_per_day"]
    assert call(stack, "GET", "/policies").json() == before


def test_more_concurrent_checks_than_threads_are_all_answered(stack: Stack) -> None:
    """Policy checks queue on one lock. 70 at once (more than the service's worker threads
    and database connections) must all be answered: a check that owns the lock commits
    on the connection it already holds, so it never waits for one the queue has taken."""
    import asyncio

    import httpx

    token = service_token(stack, "execution")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            limits=httpx.Limits(max_connections=100),
        ) as client:
            url = stack.url("compliance") + "/checks/policy"
            answers = await asyncio.gather(*(client.post(url, json=order()) for _ in range(70)))
            return [a.status_code for a in answers]

    started = time.monotonic()
    codes = asyncio.run(burst())
    assert codes == [200] * 70, sorted(set(codes))
    assert time.monotonic() - started < 30
