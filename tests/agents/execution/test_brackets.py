"""Attached stop-loss and take-profit resting on the exchange (the sim takes
one-cancels-the-other pairs): placed before the entry's 201, kept the size of the
position, out of the way of a sale, cancelled by a halt and back after resume."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.agents.execution.fleet import close_position, new_cid, order
from tests.conftest import Stack

pytestmark = pytest.mark.usefixtures("repeatable_orders", "active")

SOL = "SOL/USDT"
ROLES = ("bracket_sl", "bracket_tp")


def _flat(stack: Stack, symbol: str = SOL) -> None:
    closed = close_position(stack, symbol)
    assert closed.status_code == 200 and not closed.json()["errors"], closed.text


def _legs(stack: Stack, symbol: str = SOL) -> list[dict[str, Any]]:
    """Our bracket legs open on `symbol`, stop first."""
    rows = stack.get("execution", f"/orders/sim?symbol={symbol}&status=open&limit=50").json()
    return sorted((o for o in rows if o["role"] in ROLES), key=lambda o: o["role"])


def _shape(legs: list[dict[str, Any]]) -> list[tuple[str, str, str, Decimal, Decimal]]:
    return [
        (o["role"], o["type"], o["side"], Decimal(o["stop_price"]), Decimal(o["amount"]))
        for o in legs
    ]


def _position(stack: Stack, symbol: str = SOL) -> dict[str, Any] | None:
    found = [p for p in stack.get("execution", "/positions/sim").json() if p["symbol"] == symbol]
    return found[0] if found else None


def _prices(stack: Stack, below: str, above: str) -> tuple[Decimal, Decimal]:
    mid = Decimal(stack.get("execution", "/ticker/sim/SOL-USDT").json()["last"])
    return (mid * Decimal(below)).quantize(Decimal("0.01")), (mid * Decimal(above)).quantize(
        Decimal("0.01")
    )


def _exits(stack: Stack, symbol: str, entry_id: int) -> list[Any]:
    """Wait for the position in `symbol` to close, then the orders placed on it after
    the entry (role, side, status, amount, reason), oldest first."""
    stack.wait_for(
        lambda: _position(stack, symbol) is None,
        timeout=120,
        what=f"an exit to fire and close the {symbol} position",
    )
    with stack.engine().connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT role, side, status, amount, reason FROM orders"
                    " WHERE symbol = :s AND id > :i AND role <> 'entry' ORDER BY id"
                ),
                {"s": symbol, "i": entry_id},
            ).all()
        )


def _held_sol(stack: Stack) -> Decimal:
    return Decimal(stack.get("execution", "/balance/sim").json()["balances"]["SOL"]["used"])


def test_brackets_rest_on_the_exchange_and_follow_the_position(stack: Stack) -> None:
    _flat(stack)
    stop, target = _prices(stack, "0.9", "1.1")
    placed = order(stack, symbol=SOL, amount="1", stop_loss=str(stop), take_profit=str(target))
    assert placed.status_code == 201 and placed.json()["status"] == "filled", placed.text
    # On the exchange before the 201: one pair for the whole position, holding it once.
    first = _legs(stack)
    assert _shape(first) == [
        ("bracket_sl", "stop_loss", "sell", stop, Decimal(1)),
        ("bracket_tp", "take_profit", "sell", target, Decimal(1)),
    ]
    assert all(o["reduce_only"] and o["requested_by"] == "execution" for o in first)
    assert _held_sol(stack) == Decimal(1)
    position = _position(stack)
    assert position is not None and position["protected_by"] == "exchange"

    # The position grows: the pair is replaced by one for the new size.
    assert order(stack, symbol=SOL, amount="0.5").status_code == 201
    grown = stack.wait_for(
        lambda: (legs := _legs(stack)) and Decimal(legs[0]["amount"]) == Decimal("1.5") and legs,
        timeout=30,
        what="the legs to follow the bigger position",
    )
    assert [s[:4] for s in _shape(grown)] == [s[:4] for s in _shape(first)]
    for old in first:
        assert stack.get("execution", f"/orders/sim/{old['id']}").json()["status"] == "cancelled"

    # Selling part of it: the legs hold every coin, so they make way, then follow.
    sold = order(stack, symbol=SOL, side="sell", amount="1")
    assert sold.status_code == 201 and sold.json()["status"] == "filled", sold.text
    smaller = stack.wait_for(
        lambda: (legs := _legs(stack)) and Decimal(legs[0]["amount"]) == Decimal("0.5") and legs,
        timeout=30,
        what="the legs to follow the smaller position",
    )
    assert len(smaller) == 2

    # Closing the position takes the legs with it.
    _flat(stack)
    assert _position(stack) is None and _legs(stack) == []
    assert _held_sol(stack) == 0


def test_a_leg_that_fires_closes_the_position_on_the_exchange(stack: Stack) -> None:
    eth = "ETH/USDT"
    _flat(stack, eth)
    # Legs a hair either side of the price (~45 ticks): one fires within seconds, and the
    # price does not reach either in the moment it takes to place them.
    mid = Decimal(stack.get("execution", "/ticker/sim/ETH-USDT").json()["last"])
    stop, target = ((mid * Decimal(f)).quantize(Decimal("0.01")) for f in ("0.9998", "1.0002"))
    placed = order(stack, symbol=eth, amount="0.01", stop_loss=str(stop), take_profit=str(target))
    assert placed.status_code == 201, placed.text
    assert len(_legs(stack, eth)) == 2
    exits = _exits(stack, eth, placed.json()["id"])
    fired = [e for e in exits if e.status == "filled"]
    assert len(fired) == 1 and fired[0].role in ROLES  # closed once, by the exchange
    cancelled = [e for e in exits if e.status == "cancelled"]
    assert len(cancelled) == 1 and "triggered" in cancelled[0].reason  # one cancels the other
    assert len(exits) == 2


def test_a_trailing_stop_is_watched_by_execution_and_closes_the_position_once(
    stack: Stack,
) -> None:
    eth = "ETH/USDT"
    _flat(stack, eth)
    # A trail of 0.02 %: the price gives that back from its best within seconds.
    placed = order(stack, symbol=eth, amount="0.01", trailing_stop_pct="0.0002")
    assert placed.status_code == 201 and placed.json()["status"] == "filled", placed.text
    position = _position(stack, eth)
    assert position is not None and position["protected_by"] == "execution"
    assert Decimal(position["trailing_stop_pct"]) == Decimal("0.0002")
    assert _legs(stack, eth) == []  # a trailing stop never rests on the exchange
    exits = _exits(stack, eth, placed.json()["id"])
    assert [(e.role, e.side, e.status, e.amount) for e in exits] == [
        ("trailing_stop", "sell", "filled", Decimal("0.01"))
    ]
    assert exits[0].reason.startswith("trailing_stop at ")

    def triggered() -> list[dict[str, Any]] | None:
        query = {"kind": "position.exit_triggered", "subject": f"sim:{eth}"}
        page = stack.get("compliance", "/audit", params=query)
        items = [e for e in page.json()["items"] if e["data"]["trigger"] == "trailing_stop"]
        return items or None

    stack.wait_for(triggered, timeout=30, what="the trigger in the audit trail")


def test_a_trailing_stop_that_fires_takes_the_legs_on_the_exchange_with_it(
    stack: Stack,
) -> None:
    """Stop-loss and take-profit rest on the exchange, the trailing stop is watched by
    execution: when it fires, the pair is cancelled and the position closed once."""
    _flat(stack)
    stop, target = _prices(stack, "0.9", "1.1")
    placed = order(
        stack,
        symbol=SOL,
        amount="1",
        stop_loss=str(stop),
        take_profit=str(target),
        trailing_stop_pct="0.0002",
    )
    assert placed.status_code == 201 and placed.json()["status"] == "filled", placed.text
    assert len(_legs(stack)) == 2
    after = _exits(stack, SOL, placed.json()["id"])
    assert sorted((o.role, o.status) for o in after) == [
        ("bracket_sl", "cancelled"),
        ("bracket_tp", "cancelled"),
        ("trailing_stop", "filled"),
    ]
    assert _legs(stack) == [] and _held_sol(stack) == 0


def test_a_halt_cancels_the_legs_and_execution_watches_until_resume(stack: Stack) -> None:
    _flat(stack)
    stop, target = _prices(stack, "0.9", "1.1")
    assert (
        order(stack, symbol=SOL, amount="1", stop_loss=str(stop), take_profit=str(target)).json()[
            "status"
        ]
        == "filled"
    )
    before = _legs(stack)
    assert len(before) == 2
    halted = stack.post("risk", "/halt", {"reason": "bracket drill", "flatten": False})
    assert halted.status_code == 200, halted.text
    try:
        stack.wait_for(lambda: _legs(stack) == [], timeout=30, what="the halt to cancel the legs")
        position = _position(stack)
        assert position is not None and position["protected_by"] == "execution"
        assert Decimal(position["stop_loss"]) == stop  # still armed, watched by execution
    finally:
        stack.post("risk", "/resume", {"reason": "drill over"}).raise_for_status()
    after = stack.wait_for(lambda: _legs(stack), timeout=30, what="the legs back on the exchange")
    assert _shape(after) == _shape(before) and {o["id"] for o in after}.isdisjoint(
        {o["id"] for o in before}
    )
    _flat(stack)


def test_refused_legs_are_not_asked_again_and_execution_watches(stack: Stack) -> None:
    _flat(stack)
    fault = {"kind": "reject", "op": "create_oco"}
    stack.post("execution", "/exchanges/sim/faults", fault).raise_for_status()
    stop, target = _prices(stack, "0.9", "1.1")
    placed = order(stack, symbol=SOL, amount="1", stop_loss=str(stop), take_profit=str(target))
    assert placed.status_code == 201 and placed.json()["status"] == "filled", placed.text
    position = _position(stack)
    assert position is not None and position["protected_by"] == "execution"

    def legs_asked() -> list[Any]:
        with stack.engine().connect() as conn:
            return conn.execute(
                text("SELECT status, reason FROM orders WHERE role = ANY(:r) AND id > :i"),
                {"r": list(ROLES), "i": placed.json()["id"]},
            ).all()

    refused = legs_asked()
    assert [r.status for r in refused] == ["rejected", "rejected"]
    assert "injected reject" in refused[0].reason
    time.sleep(2)  # four reconciler passes: the refusal is remembered, not retried
    assert len(legs_asked()) == 2
    # A new entry asking for brackets is asked anew (the fault was for one call).
    more = order(stack, symbol=SOL, amount="0.5", stop_loss=str(stop), take_profit=str(target))
    assert more.status_code == 201, more.text
    assert [leg[4] for leg in _shape(_legs(stack))] == [Decimal("1.5")] * 2
    _flat(stack)


def test_a_pair_whose_answer_was_lost_is_reconciled_not_sent_again(stack: Stack) -> None:
    _flat(stack)
    fault = {"kind": "timeout_after_accept", "op": "create_oco"}
    stack.post("execution", "/exchanges/sim/faults", fault).raise_for_status()
    stop, target = _prices(stack, "0.9", "1.1")
    cid = new_cid("lost")
    placed = order(
        stack,
        symbol=SOL,
        amount="1",
        stop_loss=str(stop),
        take_profit=str(target),
        client_order_id=cid,
    )
    assert placed.status_code == 201, placed.text
    legs = stack.wait_for(
        lambda: len(legs := _legs(stack)) == 2 and legs,
        timeout=60,
        what="the unknown legs reconciled to open",
    )
    with stack.engine().connect() as conn:
        asked = conn.execute(
            text("SELECT count(*) FROM orders WHERE role = ANY(:r) AND id > :i"),
            {"r": list(ROLES), "i": placed.json()["id"]},
        ).scalar_one()
    assert asked == 2  # the pair the exchange took; nothing was sent a second time
    assert _held_sol(stack) == Decimal(1)
    assert {o["exchange_order_id"] for o in legs} != {None}
    _flat(stack)
