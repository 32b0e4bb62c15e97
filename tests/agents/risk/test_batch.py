"""Orders judged together (`POST /checks/pre-trade/batch`), over HTTP: in turn, each one
seeing the orders approved before it in the batch as resting orders of ours."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.agents.risk.conftest import Risk, detail, failed
from tests.agents.risk.test_pre_trade import RULES, long_btc

pytestmark = pytest.mark.usefixtures("baseline")


def batch(
    risk: Risk, orders: list[dict[str, Any]], portfolio: dict[str, Any], **params: str
) -> Any:
    """The orders (built by `risk.order`) in one batch against `portfolio`."""
    body = {
        "portfolio": {"equity": "100000", "cash": "100000", **portfolio},
        "orders": [{k: v for k, v in o.items() if k != "portfolio"} for o in orders],
    }
    return risk.post("/checks/pre-trade/batch", body, params=params)


def decisions(risk: Risk, orders: list[dict[str, Any]], portfolio: dict[str, Any]) -> list[Any]:
    answer = risk.ok(batch(risk, orders, portfolio))
    assert len(answer["decisions"]) == len(orders)
    return list(answer["decisions"])


def buy(risk: Risk, amount: str) -> dict[str, Any]:
    return risk.order(amount=amount, stop_loss="49900")


def test_each_order_counts_those_approved_before_it(risk: Risk) -> None:
    """0.3 BTC held (15 % of equity, limit 25 %): three buys of 0.1 each pass alone; the
    third, judged after the first two, would make it 30 %."""
    mark = risk.audit_mark()
    orders = [buy(risk, "0.1") for _ in range(3)]
    held = {"positions": [long_btc("0.3", stop_loss=None)]}
    first, second, third = decisions(risk, orders, held)
    assert first["approved"] and second["approved"], (first, second)
    assert {c["rule"] for c in first["checks"]} == RULES
    assert "0.5 (0.1 of it in resting orders)" in detail(second, "max_position_pct")
    assert failed(third) == {"max_position_pct"}
    assert "0.6 (0.2 of it in resting orders)" in detail(third, "max_position_pct")
    # Each decision is stored and audited under its own client order id.
    for order, decided in zip(orders, (True, True, False), strict=True):
        [stored] = risk.ok(risk.get(f"/checks/{order['client_order_id']}"))
        assert stored["approved"] is decided
    events = risk.audited(mark, "risk.checked", count=3)
    assert [e["subject"] for e in events] == [o["client_order_id"] for o in orders]
    assert [e["data"]["approved"] for e in events] == [True, True, False]


def test_checks_failed_lists_only_the_failures_and_stores_every_result(risk: Risk) -> None:
    """What execution asks for: each decision names the rules that failed, nothing else;
    every rule's result is stored as before."""
    held = {"positions": [long_btc("0.3", stop_loss=None)]}
    orders = [buy(risk, "0.1"), buy(risk, "0.19")]  # the second: 34 % of equity
    answer = risk.ok(batch(risk, orders, held, checks="failed"))
    approved, refused = answer["decisions"]
    assert approved == {"approved": True, "checks": [], "state": "ACTIVE"}
    assert refused["approved"] is False
    assert [c["rule"] for c in refused["checks"]] == ["max_position_pct"]
    assert not refused["checks"][0]["passed"]
    assert "0.59 (0.1 of it in resting orders)" in refused["checks"][0]["detail"]
    for order in orders:
        [stored] = risk.ok(risk.get(f"/checks/{order['client_order_id']}"))
        assert {c["rule"] for c in stored["checks"]} == RULES


def test_checks_listing_other_than_all_or_failed_is_a_422(risk: Risk) -> None:
    order = buy(risk, "0.1")
    response = batch(risk, [order], {}, checks="passed")
    assert response.status_code == 422, response.text
    assert "checks" in response.text and "'all' or 'failed'" in response.text
    assert risk.get(f"/checks/{order['client_order_id']}").status_code == 404  # not judged


def test_a_rejected_order_does_not_count_against_the_next(risk: Risk) -> None:
    held = {"positions": [long_btc("0.3", stop_loss=None)]}
    orders = [buy(risk, "0.1"), buy(risk, "0.19"), buy(risk, "0.1")]  # the second: 34 %
    first, second, third = decisions(risk, orders, held)
    assert first["approved"] and third["approved"], (first, third)
    assert failed(second) == {"max_position_pct"}
    assert "0.5 (0.1 of it in resting orders)" in detail(third, "max_position_pct")


def test_a_reduce_only_order_approved_before_does_not_grow_the_book(risk: Risk) -> None:
    held = {"positions": [long_btc("0.4", stop_loss=None)]}  # 20 %
    close = risk.order(side="sell", amount="0.2", reduce_only=True, stop_loss=None)
    first, second = decisions(risk, [close, buy(risk, "0.1")], held)
    assert first["approved"] and second["approved"], (first, second)


def test_the_duplicate_rule_sees_the_orders_approved_before_in_the_batch(risk: Risk) -> None:
    """The same order under another id, later in the batch, duplicates an approved one
    (and names it), not a rejected one (here: its stop was on the wrong side)."""
    risk.ok(risk.put("/limits", {"duplicate_window_s": 5}))
    first = risk.order()  # (an amount of its own: the tests before may have used 0.1)
    copy = {**first, "client_order_id": "copy-" + first["client_order_id"][:20]}
    wrong_stop = risk.order(stop_loss="50100")
    right_stop = {**wrong_stop, "client_order_id": "fixed-" + wrong_stop["client_order_id"][:20]}
    right_stop["stop_loss"] = "49900"
    one, two, three, four = decisions(risk, [first, copy, wrong_stop, right_stop], {})
    assert one["approved"] is True, one
    assert failed(two) == {"duplicate_order"}
    assert repr(first["client_order_id"]) in detail(two, "duplicate_order")
    assert failed(three) == {"max_heat_pct"}
    assert four["approved"] is True, four


def _approved_last_minute(risk: Risk) -> int:
    """Orders approved in the rate rule's window, once none of them is about to leave it
    (one that ages out between this count and the test's checks would leave more room
    than the test means to give): waits while any is older than 45 s."""
    while True:
        [row] = risk.rows(
            "SELECT count(DISTINCT client_order_id) AS n,"
            " count(*) FILTER (WHERE checked_at <= now() - interval '45 seconds') AS leaving"
            " FROM risk_checks WHERE approved AND checked_at > now() - interval '60 seconds'"
        )
        if row["leaving"] == 0:
            return int(row["n"])
        time.sleep(16)


def test_the_rate_limit_counts_the_batch(risk: Risk) -> None:
    """Room for two more orders this minute: the batch's third is one too many."""
    risk.ok(risk.put("/limits", {"max_orders_per_minute": _approved_last_minute(risk) + 2}))
    try:
        [first, second, third] = decisions(risk, [risk.order() for _ in range(3)], {})
    finally:
        risk.ok(risk.put("/limits", {"max_orders_per_minute": 100_000}))
    assert first["approved"] and second["approved"]
    assert failed(third) == {"max_orders_per_minute"}


def test_an_order_checked_again_counts_once_for_the_rate(risk: Risk) -> None:
    """Room for one more order: A is approved; A checked again (a retry) with B in one
    batch passes (A is not counted against itself), and B, after A, is one too many."""
    risk.ok(risk.put("/limits", {"max_orders_per_minute": _approved_last_minute(risk) + 1}))
    try:
        first = risk.order()
        assert risk.check(first)["approved"] is True
        again, other = decisions(risk, [first, risk.order()], {})
    finally:
        risk.ok(risk.put("/limits", {"max_orders_per_minute": 100_000}))
    assert again["approved"] is True, again
    assert failed(other) == {"max_orders_per_minute"}


def test_a_halt_rejects_the_whole_batch_but_reduce_only(risk: Risk) -> None:
    risk.halt("batch test")
    try:
        close = risk.order(side="sell", reduce_only=True, stop_loss=None)
        held = {"positions": [long_btc()]}
        new, closing = decisions(risk, [risk.order(), close], held)
    finally:
        risk.resume()
    assert failed(new) == {"trading_state"} and new["state"] == "HALTED"
    assert closing["approved"] is True


@pytest.mark.parametrize(
    ("orders", "says"),
    [
        (0, "at least 1 item"),
        (65, "at most 64 items"),
        ("twice", "is in the batch twice"),
    ],
)
def test_a_bad_batch_is_422_saying_why_and_stores_nothing(
    risk: Risk, orders: int | str, says: str
) -> None:
    if orders == "twice":
        one = risk.order()
        listed = [one, one]
    else:
        assert isinstance(orders, int)
        listed = [risk.order() for _ in range(orders)]
    answer = batch(risk, listed, {})
    assert answer.status_code == 422, answer.text
    assert says in answer.text
    for order in listed[:3]:
        assert risk.get(f"/checks/{order['client_order_id']}").status_code == 404
