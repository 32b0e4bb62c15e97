"""Orders checked together (`POST /checks/policy/batch`), over HTTP: in turn, each one
seeing the limit orders approved before it in the batch as resting orders of ours."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.agents.compliance.conftest import call, order, rule, service_token
from tests.agents.compliance.test_policies import _approved_today
from tests.conftest import Stack

SetPolicy = Callable[..., dict[str, Any]]


def batch(stack: Stack, orders: list[dict[str, Any]], **params: str) -> httpx.Response:
    return call(
        stack,
        "POST",
        "/checks/policy/batch",
        json={"orders": orders},
        params=params,
        token=service_token(stack, "execution"),
    )


def policy_events(stack: Stack, client_order_id: str) -> list[dict[str, Any]]:
    page = call(
        stack,
        "GET",
        "/audit",
        params={"kind": "policy.checked", "subject": client_order_id},
    ).json()
    events: list[dict[str, Any]] = page["items"]
    return events


def decisions(stack: Stack, orders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = batch(stack, orders)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["decisions"]
    assert len(found) == len(orders)
    return found


def test_the_daily_limit_counts_the_batch(
    stack: Stack, set_policy: SetPolicy, engine: Engine
) -> None:
    set_policy(max_orders_per_day=_approved_today(engine) + 2)
    first, second, third = decisions(stack, [order(), order(), order()])
    assert first["approved"] and second["approved"], (first, second)
    assert third["approved"] is False
    assert not rule(third, "max_orders_per_day")["passed"]


def test_a_limit_order_approved_before_counts_as_resting(
    stack: Stack, set_policy: SetPolicy
) -> None:
    """A buy at 101 and a sell at 100 in one batch would trade with each other."""
    set_policy()
    buy = order(side="buy", price="101")
    sell = order(side="sell", price="100")
    elsewhere = order(side="sell", price="100", symbol="ETH/USDT")
    market = order(side="sell", type="market", price=None, reference_price="100")
    first, crossing, other_symbol, at_market = decisions(stack, [buy, sell, elsewhere, market])
    assert first["approved"] is True
    assert crossing["approved"] is False
    assert rule(crossing, "wash_trade")["detail"].startswith(
        "sell at limit price 100 would cross our resting buy at 101"
    )
    assert other_symbol["approved"] is True
    assert at_market["approved"] is False  # the buy at 101 rests above the market sell


def test_a_refused_limit_order_does_not_rest(stack: Stack, set_policy: SetPolicy) -> None:
    set_policy(restricted_symbols=["DOGE"])
    refused = order(side="buy", price="101", symbol="DOGE/USDT")
    sell = order(side="sell", price="100", symbol="DOGE/USDT")
    first, second = decisions(stack, [refused, sell])
    assert first["approved"] is False and second["approved"] is False
    assert rule(second, "wash_trade")["passed"], rule(second, "wash_trade")


def test_each_decision_is_stored_and_audited_in_order(stack: Stack, set_policy: SetPolicy) -> None:
    set_policy(restricted_symbols=["DOGE"])
    orders = [order(), order(symbol="DOGE/USDT"), order()]
    found = decisions(stack, orders)
    assert [d["approved"] for d in found] == [True, False, True]
    ids = []
    for body, decision in zip(orders, found, strict=True):
        [event] = policy_events(stack, body["client_order_id"])
        assert event["actor"] == "execution"
        assert event["data"]["checks"] == decision["checks"]
        ids.append(event["id"])
    assert ids == sorted(ids)
    verified = call(stack, "GET", "/audit/verify").json()
    assert verified["ok"] is True, verified


def test_checks_failed_lists_only_the_failures_and_audits_every_result(
    stack: Stack, set_policy: SetPolicy
) -> None:
    set_policy(restricted_symbols=["DOGE"])
    orders = [order(), order(symbol="DOGE/USDT")]
    response = batch(stack, orders, checks="failed")
    assert response.status_code == 200, response.text
    approved, refused = response.json()["decisions"]
    assert approved["approved"] is True and approved["checks"] == []
    assert refused["approved"] is False
    assert [c["rule"] for c in refused["checks"]] == ["restricted_symbols"]
    assert "DOGE" in refused["checks"][0]["detail"]
    for body in orders:  # the audit trail keeps every rule's result
        [event] = policy_events(stack, body["client_order_id"])
        assert {c["rule"] for c in event["data"]["checks"]} >= {
            "restricted_symbols",
            "allowed_exchanges",
            "wash_trade",
        }


def test_checks_listing_other_than_all_or_failed_is_a_422(stack: Stack) -> None:
    body = order()
    response = batch(stack, [body], checks="passed")
    assert response.status_code == 422, response.text
    assert "checks" in response.text and "'all' or 'failed'" in response.text
    assert policy_events(stack, body["client_order_id"]) == []  # nothing judged


@pytest.mark.parametrize(
    ("count", "says"),
    [(0, "at least 1 item"), (65, "at most 64 items"), ("twice", "is in the batch twice")],
)
def test_a_bad_batch_is_422_saying_why_and_records_nothing(
    stack: Stack, count: int | str, says: str
) -> None:
    if count == "twice":
        one = order()
        orders = [one, one]
    else:
        assert isinstance(count, int)
        orders = [order() for _ in range(count)]
    response = batch(stack, orders)
    assert response.status_code == 422, response.text
    assert says in response.text
    for body in orders[:3]:
        assert policy_events(stack, body["client_order_id"]) == []


REFUSE_DECISIONS = """
CREATE FUNCTION test_refuse_decision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.requested_by = 'refuse-my-decision' THEN RAISE EXCEPTION 'refused by the test'; END IF;
    RETURN NEW;
END
$$
"""


def test_a_check_that_fails_half_way_leaves_nothing_behind(
    stack: Stack, set_policy: SetPolicy, engine: Engine
) -> None:
    """The decisions are written last, after the audit rows and with the day's count: when
    the database refuses one, the whole batch is undone (a 500) and can be asked again."""
    set_policy()
    orders = [order(), order(requested_by="refuse-my-decision")]
    ids = [body["client_order_id"] for body in orders]
    with engine.begin() as conn:
        conn.execute(text(REFUSE_DECISIONS))
        conn.execute(
            text(
                "CREATE TRIGGER test_refuse_decision BEFORE INSERT ON policy_decisions"
                " FOR EACH ROW EXECUTE FUNCTION test_refuse_decision()"
            )
        )
    try:
        response = batch(stack, orders)
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER test_refuse_decision ON policy_decisions"))
            conn.execute(text("DROP FUNCTION test_refuse_decision()"))
    assert response.status_code == 500, response.text
    for client_order_id in ids:
        assert policy_events(stack, client_order_id) == []
    with engine.connect() as conn:
        decided, counted = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM policy_decisions WHERE client_order_id = ANY(:ids)),"
                " (SELECT count(*) FROM policy_day_orders WHERE client_order_id = ANY(:ids))"
            ),
            {"ids": ids},
        ).one()
    assert (decided, counted) == (0, 0)
    assert call(stack, "GET", "/audit/verify").json()["ok"] is True
    assert [d["approved"] for d in decisions(stack, orders)] == [True, True]
