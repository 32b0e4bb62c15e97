"""Every pre-trade rule, tripped and passed, over HTTP against the real risk service."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.agents.risk.conftest import Risk, detail, failed

pytestmark = pytest.mark.usefixtures("baseline")

RULES = {
    "trading_state",
    "reduce_only",
    "max_order_notional",
    "max_position_pct",
    "max_gross_exposure_pct",
    "max_heat_pct",
    "daily_loss_limit",
    "max_drawdown_pct",
    "max_orders_per_minute",
    "duplicate_order",
    "max_reference_age_ms",
    "price_collar_pct",
    "amount_step",
    "price_step",
    "min_amount",
    "min_notional",
}


def long_btc(amount: str = "0.4", **extra: Any) -> dict[str, Any]:
    return {
        "exchange": "sim",
        "symbol": "BTC/USDT",
        "amount": amount,
        "entry_price": "50000",
        "mark_price": "50000",
        "stop_loss": "49000",
        **extra,
    }


def rejected_by(risk: Risk, order: dict[str, Any], rule: str) -> dict[str, Any]:
    """Check `order`; assert that `rule` and only `rule` rejected it."""
    decision = risk.check(order)
    assert decision["approved"] is False
    assert failed(decision) == {rule}, decision["checks"]
    return decision


def approved(risk: Risk, order: dict[str, Any]) -> dict[str, Any]:
    decision = risk.check(order)
    assert decision["approved"] is True, [c for c in decision["checks"] if not c["passed"]]
    return decision


def test_a_good_order_passes_every_rule_and_is_stored(risk: Risk) -> None:
    mark = risk.audit_mark()
    order = risk.order()
    decision = approved(risk, order)
    assert {c["rule"] for c in decision["checks"]} == RULES
    assert decision["state"] == "ACTIVE"
    stored = risk.ok(risk.get(f"/checks/{order['client_order_id']}"))
    assert stored[0]["approved"] is True and stored[0]["requested_by"] == "operator"
    [event] = risk.audited(mark, "risk.checked")
    assert event["subject"] == order["client_order_id"] and event["data"]["approved"] is True


def test_trading_state_halted_rejects_all_but_reduce_only(risk: Risk) -> None:
    risk.halt("rule test")
    try:
        decision = rejected_by(risk, risk.order(), "trading_state")
        assert "trading state HALTED" in detail(decision, "trading_state")
        assert decision["state"] == "HALTED"
        close = risk.order(side="sell", reduce_only=True, portfolio={"positions": [long_btc()]})
        assert "shrinks 0.4 to" in detail(approved(risk, close), "trading_state")
    finally:
        risk.resume()
    approved(risk, risk.order())


def test_trading_state_reducing_rejects_all_but_reduce_only(risk: Risk) -> None:
    risk.ok(risk.post("/reduce", {"reason": "rule test"}))
    try:
        assert risk.state()["state"] == "REDUCING"
        rejected_by(risk, risk.order(), "trading_state")
        close = risk.order(side="sell", reduce_only=True, portfolio={"positions": [long_btc()]})
        approved(risk, close)
    finally:
        risk.resume()


def test_reduce_only_must_shrink_a_position(risk: Risk) -> None:
    decision = rejected_by(risk, risk.order(reduce_only=True), "reduce_only")
    assert "would not shrink position 0" in detail(decision, "reduce_only")
    # Selling more than the long would flip it short: not a reduction either.
    flip = risk.order(
        side="sell", amount="0.5", reduce_only=True, portfolio={"positions": [long_btc("0.1")]}
    )
    assert "reduce_only" in failed(risk.check(flip))
    approved(risk, risk.order(side="sell", reduce_only=True, portfolio={"positions": [long_btc()]}))


def test_max_order_notional(risk: Risk) -> None:
    decision = rejected_by(risk, risk.order(amount="0.24", stop_loss="49500"), "max_order_notional")
    assert detail(decision, "max_order_notional") == (
        "order notional 12000.00 > max_order_notional 10000"
    )
    approved(risk, risk.order(amount="0.2", stop_loss="49500"))  # 10000: at the limit passes


def test_max_position_pct_counts_the_resulting_position(risk: Risk) -> None:
    held = {"positions": [long_btc("0.4", stop_loss=None)]}  # 20000 of 100000
    order = risk.order(amount="0.15", stop_loss="49900", portfolio=held)  # -> 27500
    decision = rejected_by(risk, order, "max_position_pct")
    assert "27500.00" in detail(decision, "max_position_pct")
    assert "0.2750 > max_position_pct 0.25" in detail(decision, "max_position_pct")
    approved(risk, risk.order(amount="0.1", stop_loss="49900", portfolio=held))  # -> 25000
    # Over the limit already (equity fell): selling some is still allowed.
    over = {"positions": [long_btc("0.8", stop_loss=None)]}  # 40000 of 100000
    shrunk = risk.order(side="sell", amount="0.1", stop_loss=None, portfolio=over)
    assert "shrinks" in detail(approved(risk, shrunk), "max_position_pct")


def resting(side: str, amount: str, price: str = "50000", **extra: Any) -> dict[str, Any]:
    return {
        "exchange": "sim",
        "symbol": "BTC/USDT",
        "side": side,
        "amount": amount,
        "price": price,
        "reduce_only": False,
        **extra,
    }


def test_resting_orders_that_would_grow_the_position_count_against_it(risk: Risk) -> None:
    """The worst case in the order's direction: every resting order on its side fills."""
    held = {"positions": [long_btc("0.3", stop_loss=None)], "open_orders": [resting("buy", "0.2")]}
    order = risk.order(amount="0.1", stop_loss="49900", portfolio=held)  # 0.3 + 0.2 + 0.1
    decision = rejected_by(risk, order, "max_position_pct")
    assert "0.6 (0.2 of it in resting orders)" in detail(decision, "max_position_pct")
    assert "0.3000 > max_position_pct 0.25" in detail(decision, "max_position_pct")
    # Orders that would not grow it do not count: the other side, reduce-only, another market.
    for other in (
        resting("sell", "0.2", "52000"),
        resting("buy", "0.2", reduce_only=True),
        resting("buy", "0.2", symbol="ETH/USDT", price="3000"),
    ):
        book = {"positions": [long_btc("0.3", stop_loss=None)], "open_orders": [other]}
        approved(risk, risk.order(amount="0.1", stop_loss="49900", portfolio=book))


def test_orders_that_each_shrink_a_position_are_judged_together(risk: Risk) -> None:
    """A sell smaller than the long shrinks it, and exposure limits let it through; with
    our other sells resting (or on their way) it would take the book short: judged so."""
    alone = {"positions": [long_btc("0.4", stop_loss=None)]}
    sell = {"side": "sell", "amount": "0.15", "stop_loss": None}
    shrinks = approved(risk, risk.order(**sell, portfolio=alone))
    assert "shrinks position 0.4 to 0.25" in detail(shrinks, "max_position_pct")
    together = {**alone, "open_orders": [resting("sell", "2")]}
    decision = rejected_by(risk, risk.order(**sell, portfolio=together), "max_position_pct")
    assert "resulting position -1.75 (2 of it in resting orders)" in detail(
        decision, "max_position_pct"
    )


def test_resting_orders_count_in_gross_exposure_and_heat(risk: Risk) -> None:
    # Resting ETH buys: 32 x 3000 = 96000 of gross exposure if they fill.
    eth_bids = [resting("buy", "32", symbol="ETH/USDT", price="3000")]
    order = risk.order(amount="0.1", stop_loss="49900", portfolio={"open_orders": eth_bids})
    decision = rejected_by(risk, order, "max_gross_exposure_pct")  # 96000 + 5000
    assert "101000.00" in detail(decision, "max_gross_exposure_pct")
    # A short ETH position: resting sells grow it, resting buys only reduce it.
    short = {
        "exchange": "sim",
        "symbol": "ETH/USDT",
        "amount": "-1",
        "entry_price": "3000",
        "mark_price": "3000",
        "stop_loss": "3050",
    }
    buys = {"positions": [short], "open_orders": eth_bids}
    approved(risk, risk.order(amount="0.1", stop_loss="49900", portfolio=buys))
    # Heat: resting orders have no stop yet and count at the default stop (5 %): a resting
    # BTC buy 0.1 x 50000 x 0.05 = 250, resting ETH sells that grow the short 15 x 3000 x
    # 0.05 = 2250; with the short's own 50 and this order's 0.1 x 35000 = 3500: 6050.
    sells = [resting("sell", "15", symbol="ETH/USDT", price="3000")]
    hot = {"positions": [short], "open_orders": [resting("buy", "0.1"), *sells]}
    decision = rejected_by(
        risk, risk.order(amount="0.1", stop_loss="15000", portfolio=hot), "max_heat_pct"
    )
    assert "6050.00 at risk" in detail(decision, "max_heat_pct")
    cooler = {"positions": [short], "open_orders": [resting("buy", "0.1")]}  # 3800
    approved(risk, risk.order(amount="0.1", stop_loss="15000", portfolio=cooler))


def test_max_gross_exposure_pct(risk: Risk) -> None:
    eth = {
        "exchange": "sim",
        "symbol": "ETH/USDT",
        "amount": "-32",
        "entry_price": "3000",
        "mark_price": "3000",
        "stop_loss": "3050",
    }
    order = risk.order(amount="0.1", stop_loss="49900", portfolio={"positions": [eth]})
    decision = rejected_by(risk, order, "max_gross_exposure_pct")  # 96000 + 5000
    assert "101000.00" in detail(decision, "max_gross_exposure_pct")
    assert "1.0100 > max_gross_exposure_pct 1" in detail(decision, "max_gross_exposure_pct")
    approved(risk, risk.order(amount="0.08", stop_loss="49900", portfolio={"positions": [eth]}))


def test_max_heat_pct_counts_stops_and_the_default_stop(risk: Risk) -> None:
    # 20 ETH at 3000 without a stop counts 60000 x 0.05 = 3000 at risk.
    eth = {
        "exchange": "sim",
        "symbol": "ETH/USDT",
        "amount": "20",
        "entry_price": "3000",
        "mark_price": "3000",
    }
    order = risk.order(amount="0.1", stop_loss="15000", portfolio={"positions": [eth]})
    decision = rejected_by(risk, order, "max_heat_pct")  # 3000 + 0.1 x 35000 = 6500
    assert "6500.00 at risk" in detail(decision, "max_heat_pct")
    assert "0.0650 > max_heat_pct 0.06" in detail(decision, "max_heat_pct")
    # 3000 + 0.1 x 25000 = 5500
    approved(risk, risk.order(amount="0.1", stop_loss="25000", portfolio={"positions": [eth]}))


def test_stop_on_the_wrong_side_is_rejected(risk: Risk) -> None:
    decision = rejected_by(risk, risk.order(stop_loss="51000"), "max_heat_pct")
    assert "must be below the price 50000" in detail(decision, "max_heat_pct")


def test_daily_loss_limit_allows_only_reduce_only(risk: Risk) -> None:
    losing = long_btc("0.1", mark_price="48000")  # unrealized -200
    book = {"positions": [losing], "realized_pnl_today": "-400"}
    decision = rejected_by(risk, risk.order(portfolio=book), "daily_loss_limit")
    assert "600.00 > daily_loss_limit 500" in detail(decision, "daily_loss_limit")
    assert "realized -400.00, unrealized -200.00" in detail(decision, "daily_loss_limit")
    close = risk.order(
        side="sell",
        amount="0.05",
        reduce_only=True,
        price="48000",
        reference_price="48000",
        portfolio=book,
    )
    approved(risk, close)
    within = {"positions": [losing], "realized_pnl_today": "-300"}  # loss 500: at the limit
    approved(risk, risk.order(portfolio=within))


def test_max_drawdown_breach_halts_trading(risk: Risk) -> None:
    mark = risk.audit_mark()
    try:
        decision = risk.check(risk.order(portfolio={"equity": "75000", "cash": "75000"}))
        assert decision["approved"] is False and decision["state"] == "HALTED"
        assert failed(decision) == {"max_drawdown_pct", "trading_state"}
        assert "0.2500 > max_drawdown_pct 0.2" in detail(decision, "max_drawdown_pct")
        state = risk.state()
        assert state["state"] == "HALTED" and state["changed_by"] == "risk"
        assert "equity 75000.00 is 0.2500 below peak 100000.00" in state["reason"]
        [event] = risk.audited(mark, "risk.halted")
        assert event["data"]["automatic"] is True
    finally:
        risk.resume()


def test_a_check_that_cannot_be_stored_whole_stores_nothing(risk: Risk) -> None:
    """A check's decision, its equity and the halt it trips commit together or not at all:
    here the database refuses the check's audit event, the last of its writes."""
    account = f"acct{uuid.uuid4().hex[:8]}"
    on = {"equity": "5000", "cash": "5000", "account": account}
    approved(risk, risk.order(amount="0.00101", portfolio=on))
    refuse = text(
        "CREATE FUNCTION test_refuse_check_event() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN IF NEW.payload->>'subject' LIKE 'refused-%' "
        "THEN RAISE EXCEPTION 'test: this event is refused'; END IF; RETURN NEW; END $$; "
        "CREATE TRIGGER test_refuse_check_event BEFORE INSERT ON event_outbox "
        "FOR EACH ROW EXECUTE FUNCTION test_refuse_check_event()"
    )
    refused = risk.order(
        client_order_id=f"refused-{uuid.uuid4().hex}",
        amount="0.00102",
        portfolio={**on, "equity": "3500", "cash": "3500"},  # 30 % down: a halt
    )
    risk.execute(refuse)
    try:
        response = risk.post("/checks/pre-trade", refused, token=risk.service_token)
    finally:
        risk.execute(text("DROP TRIGGER IF EXISTS test_refuse_check_event ON event_outbox"))
        risk.execute(text("DROP FUNCTION IF EXISTS test_refuse_check_event()"))
        if risk.state()["state"] != "ACTIVE":
            risk.resume()
    assert response.status_code == 500, response.text
    assert risk.get(f"/checks/{refused['client_order_id']}").status_code == 404
    [line] = [a for a in risk.ok(risk.get("/drawdown"))["accounts"] if a["account"] == account]
    assert Decimal(line["equity"]) == 5000  # the 3500 was not recorded
    assert risk.state()["state"] == "ACTIVE"
    assert not risk.rows(
        "SELECT id FROM risk_trading_state_history WHERE reason LIKE :mine",
        mine=f"account {account}:%",
    )


def test_a_check_without_the_database_is_a_503_and_the_next_one_passes(risk: Risk) -> None:
    stack = risk.stack
    approved(risk, risk.order())  # risk holds connections that the outage will break
    stack.volex("stop", "postgres")
    try:
        response = risk.post("/checks/pre-trade", risk.order(), token=risk.service_token)
        assert response.status_code == 503, response.text
        assert "database unavailable" in response.json()["detail"]
    finally:
        stack.volex("start", "postgres")
    # Generous: PostgreSQL restarts slowly on a busy machine.
    stack.wait_for(lambda: stack.healthy("risk"), timeout=240, what="risk to recover")
    approved(risk, risk.order())  # the same process, connected again


def test_drawdown_within_the_limit_passes(risk: Risk) -> None:
    decision = approved(risk, risk.order(portfolio={"equity": "80000", "cash": "80000"}))
    assert "0.2000 <= max_drawdown_pct 0.2" in detail(decision, "max_drawdown_pct")
    assert risk.state()["state"] == "ACTIVE"


def test_max_orders_per_minute(risk: Risk) -> None:
    approved(risk, risk.order())
    limits = risk.ok(risk.put("/limits", {"max_orders_per_minute": 1}))
    assert limits["max_orders_per_minute"] == 1
    decision = rejected_by(risk, risk.order(), "max_orders_per_minute")
    assert "> max_orders_per_minute 1" in detail(decision, "max_orders_per_minute")
    risk.ok(risk.put("/limits", {"max_orders_per_minute": 100_000}))
    approved(risk, risk.order())


def test_duplicate_order_within_the_window(risk: Risk) -> None:
    off = approved(risk, risk.order())
    assert "off" in detail(off, "duplicate_order")
    risk.ok(risk.put("/limits", {"duplicate_window_s": 5}))
    first = risk.order()
    approved(risk, first)
    again = {**first, "client_order_id": "another-id-" + first["client_order_id"][:20]}
    decision = rejected_by(risk, again, "duplicate_order")
    assert repr(first["client_order_id"]) in detail(decision, "duplicate_order")
    # The same client order id is a replay of the same order, not a duplicate.
    approved(risk, first)
    approved(risk, {**again, "amount": str(Decimal(first["amount"]) + Decimal("0.00001"))})


def test_reference_price_missing_or_stale(risk: Risk) -> None:
    stale = rejected_by(risk, risk.order(reference_age_ms=6000), "max_reference_age_ms")
    assert "6000 ms > max_reference_age_ms 5000" in detail(stale, "max_reference_age_ms")
    unknown_age = risk.order(reference_age_ms=None)
    rejected_by(risk, unknown_age, "max_reference_age_ms")
    missing = risk.check(risk.order(reference_price=None))
    assert {"max_reference_age_ms", "price_collar_pct"} == failed(missing)
    market = risk.check(risk.order(type="market", price=None, reference_price=None))
    assert "max_order_notional" in failed(market) and "max_reference_age_ms" in failed(market)
    approved(risk, risk.order(type="market", price=None))


def test_price_collar(risk: Risk) -> None:
    decision = rejected_by(risk, risk.order(reference_price="55000"), "price_collar_pct")
    assert "deviation 0.0909 > price_collar_pct 0.05" in detail(decision, "price_collar_pct")
    approved(risk, risk.order(reference_price="52600"))  # 0.0494


def test_amount_step(risk: Risk) -> None:
    decision = rejected_by(risk, risk.order(amount="0.050005"), "amount_step")
    assert "is not a multiple of amount_step 0.00001" in detail(decision, "amount_step")
    approved(risk, risk.order(amount="0.05001"))  # the step's last digit, and trailing zeros
    approved(risk, risk.order(amount="0.0500100"))


def test_price_step(risk: Risk) -> None:
    decision = rejected_by(risk, risk.order(price="50000.005"), "price_step")
    assert "50000.005 is not a multiple of price_step 0.01" in detail(decision, "price_step")
    approved(risk, risk.order(price="50000.01"))
    approved(risk, risk.order(price="50000.0100"))


def test_min_amount(risk: Risk) -> None:
    order = risk.order(amount="0.0005", market={"min_notional": "0"})
    decision = rejected_by(risk, order, "min_amount")
    assert detail(decision, "min_amount") == "amount 0.0005 < min_amount 0.001"
    approved(risk, risk.order(amount="0.001", market={"min_notional": "0"}))


def test_min_notional(risk: Risk) -> None:
    order = risk.order(amount="0.001", market={"min_notional": "100"})  # 50
    decision = rejected_by(risk, order, "min_notional")
    assert "order notional 50 < min_notional 100" in detail(decision, "min_notional")
    approved(risk, risk.order(amount="0.002", market={"min_notional": "100"}))
