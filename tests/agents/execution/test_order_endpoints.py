"""Execution's order, position and exchange endpoints over HTTP, against the real fleet:
cancel-all, exchange status, quote-sized orders, closing every position, position PnL,
the exchange refusing an order, and what still goes out while trading is HALTED."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from agents.execution.exchange.sim_markets import DEFAULT_MARKETS, Fees, MarketSpec
from agents.risk.schemas import Limits
from common.money import to_step
from tests.agents.execution.fleet import balance, close_position, new_cid, order, positions
from tests.conftest import Stack

pytestmark = pytest.mark.usefixtures("repeatable_orders", "active")

D = Decimal
# What an open buy holds on the sim: its price x amount and the larger of its two fees.
HOLD_RATE = 1 + max(Fees().maker, Fees().taker)
TAKER_FEE = Fees().taker
EXACT = D("1e-9")  # ledger values are stored with 18 decimals, sim averages with 12


# --- helpers -------------------------------------------------------------------------------
def _spec(symbol: str) -> MarketSpec:
    return next(spec for spec in DEFAULT_MARKETS if spec.symbol == symbol)


def _ticker(stack: Stack, symbol: str) -> dict[str, Decimal]:
    body = stack.get("execution", f"/ticker/sim/{symbol.replace('/', '-')}").json()
    return {k: D(body[k]) for k in ("bid", "ask", "last")}


def _stored(stack: Stack, order_id: int) -> dict[str, Any]:
    response = stack.get("execution", f"/orders/sim/{order_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def _open_orders(stack: Stack) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for status in ("open", "partially_filled"):
        found += stack.get("execution", f"/orders/sim?status={status}&limit=1000").json()
    return found


def _cancel(stack: Stack, order_id: int) -> httpx.Response:
    url = stack.url("execution") + f"/orders/sim/{order_id}"
    return httpx.delete(url, headers=stack.auth(), timeout=30)


def _flatten(stack: Stack, *symbols: str) -> None:
    for symbol in symbols:
        closed = close_position(stack, symbol)
        assert closed.status_code == 200 and closed.json()["errors"] == [], closed.text


def _realized_in_ledger(stack: Stack, symbol: str) -> Decimal:
    """The position row's realized PnL (it stays when the position goes flat; 0 if none)."""
    engine = stack.engine()
    try:
        with engine.connect() as conn:
            realized = conn.execute(
                text("SELECT realized_pnl FROM positions WHERE exchange = 'sim' AND symbol = :s"),
                {"s": symbol},
            ).scalar_one_or_none()
    finally:
        engine.dispose()
    return D(0) if realized is None else D(realized)


@contextmanager
def _limits(stack: Stack, **changes: str) -> Iterator[None]:
    """Risk's limits with `changes` for the duration, then as they were."""
    url = stack.url("risk") + "/limits"
    saved = httpx.get(url, headers=stack.auth(), timeout=10).json()
    editable = {k: v for k, v in saved.items() if k in Limits.model_fields}
    changed = httpx.put(url, json={**editable, **changes}, headers=stack.auth(), timeout=10)
    assert changed.status_code == 200, changed.text
    try:
        yield
    finally:
        httpx.put(url, json=editable, headers=stack.auth(), timeout=10).raise_for_status()


def _rest_buy(stack: Stack, symbol: str, amount: str, below: str) -> dict[str, Any]:
    """A limit buy of `amount` at `below` x the bid (rounded to the price step): resting."""
    price = to_step(_ticker(stack, symbol)["bid"] * D(below), _spec(symbol).price_step)
    placed = order(
        stack,
        symbol=symbol,
        type="limit",
        amount=amount,
        price=str(price),
        client_order_id=new_cid("rest"),
    )
    assert placed.status_code == 201, placed.text
    body: dict[str, Any] = placed.json()
    assert body["status"] == "open" and D(body["filled"]) == 0, body
    return body


def _bought(stack: Stack, symbol: str, amount: str) -> dict[str, Any]:
    placed = order(stack, symbol=symbol, amount=amount, client_order_id=new_cid("buy"))
    assert placed.status_code == 201, placed.text
    body: dict[str, Any] = placed.json()
    assert body["status"] == "filled" and D(body["filled"]) == D(amount), body
    return body


# --- cancel-all ----------------------------------------------------------------------------
def test_cancel_all_takes_every_resting_order_off_the_book_and_frees_their_funds(
    stack: Stack,
) -> None:
    """POST /orders/sim/cancel-all without a symbol cancels every resting order on the
    exchange, on every symbol, and the sim releases what they held."""
    before = balance(stack, "USDT")
    with _limits(stack, price_collar_pct="0.6"):  # (rest them far from the price)
        placed = [
            _rest_buy(stack, "BTC/USDT", "0.001", "0.5"),
            _rest_buy(stack, "BTC/USDT", "0.0012", "0.55"),
            _rest_buy(stack, "ETH/USDT", "0.01", "0.5"),
        ]
    ids = [p["id"] for p in placed]
    try:
        held = sum((D(p["amount"]) * D(p["price"]) * HOLD_RATE for p in placed), D(0))
        resting = balance(stack, "USDT")
        assert resting["used"] - before["used"] == held, (before, resting, held)
        assert resting["free"] == before["free"] - held and resting["total"] == before["total"]

        response = stack.post("execution", "/orders/sim/cancel-all")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["errors"] == [], body
        cancelled = {o["id"]: o for o in body["cancelled"]}
        assert set(ids) <= set(cancelled), (ids, body)
        for oid in ids:
            assert cancelled[oid]["status"] == "cancelled", cancelled[oid]
            stored = _stored(stack, oid)
            assert stored["status"] == "cancelled" and D(stored["filled"]) == 0, stored
        assert _open_orders(stack) == []
        assert balance(stack, "USDT") == before  # nothing held any more, nothing spent

        again = stack.post("execution", "/orders/sim/cancel-all")
        assert again.status_code == 200 and again.json() == {"cancelled": [], "errors": []}
    finally:
        for oid in ids:
            _cancel(stack, oid)


def test_cancel_all_of_one_symbol_leaves_the_others(stack: Stack) -> None:
    with _limits(stack, price_collar_pct="0.6"):
        btc = _rest_buy(stack, "BTC/USDT", "0.001", "0.5")
        eth = [_rest_buy(stack, "ETH/USDT", amount, "0.5") for amount in ("0.01", "0.011")]
    try:
        url = "/orders/sim/cancel-all"
        # Nothing is cancelled on a body that does not say what it means.
        for body, field in [({"symbol": "eth"}, "symbol"), ({"symbols": ["ETH/USDT"]}, "symbols")]:
            refused = stack.post("execution", url, body)
            assert refused.status_code == 422 and field in refused.json()["detail"], refused.text
        unknown = stack.post("execution", url, {"symbol": "DOGE/EUR"})
        assert unknown.status_code == 422 and "DOGE/EUR" in unknown.json()["detail"]
        assert _stored(stack, btc["id"])["status"] == "open"

        response = stack.post("execution", url, {"symbol": "ETH/USDT"})
        assert response.status_code == 200, response.text
        assert sorted(o["id"] for o in response.json()["cancelled"]) == [o["id"] for o in eth]
        assert [_stored(stack, o["id"])["status"] for o in eth] == ["cancelled"] * 2
        assert _stored(stack, btc["id"])["status"] == "open"
        assert [o["id"] for o in _open_orders(stack)] == [btc["id"]]
    finally:
        for placed in (btc, *eth):
            _cancel(stack, placed["id"])


# --- exchanges -----------------------------------------------------------------------------
def test_exchanges_list_the_sim_with_its_markets(stack: Stack) -> None:
    response = stack.get("execution", "/exchanges")
    assert response.status_code == 200, response.text
    sim = [e for e in response.json() if e["id"] == "sim"]
    symbols = sorted(spec.symbol for spec in DEFAULT_MARKETS)
    assert sim == [{"id": "sim", "mode": "simulated", "symbols": symbols}]


def test_the_sim_status_is_ok_with_its_latency(stack: Stack) -> None:
    response = stack.get("execution", "/exchanges/sim/status")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "ok", "detail", "latency_ms"}
    assert (body["id"], body["ok"], body["detail"]) == ("sim", True, "ok")
    assert isinstance(body["latency_ms"], float | int) and 0 <= body["latency_ms"] < 5000


def test_the_status_of_an_unreachable_exchange_says_why(stack: Stack) -> None:
    fault = {"kind": "network_error", "op": "fetch_ticker", "times": 1000}
    armed = stack.post("execution", "/exchanges/sim/faults", fault)
    assert armed.status_code == 204, armed.text
    try:
        body = stack.get("execution", "/exchanges/sim/status").json()
        assert body["id"] == "sim" and body["ok"] is False, body
        assert "injected network_error on fetch_ticker" in body["detail"], body
    finally:
        httpx.delete(
            stack.url("execution") + "/exchanges/sim/faults", headers=stack.auth(), timeout=10
        )
    assert stack.get("execution", "/exchanges/sim/status").json()["ok"] is True


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/exchanges/nosuch/status"),
        ("GET", "/balance/nosuch"),
        ("GET", "/positions/nosuch"),
        ("GET", "/ticker/nosuch/BTC-USDT"),
        ("POST", "/orders/nosuch/cancel-all"),
        ("POST", "/positions/nosuch/close"),
    ],
)
def test_an_unknown_exchange_is_a_404_naming_it(stack: Stack, method: str, path: str) -> None:
    body: dict[str, str] | None = {} if path.endswith("/close") else None
    response = httpx.request(
        method, stack.url("execution") + path, json=body, headers=stack.auth(), timeout=10
    )
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    detail = response.json()["detail"]
    assert "exchange 'nosuch' is not open" in detail and "available: sim" in detail, detail


# --- quote_amount --------------------------------------------------------------------------
def test_a_quote_amount_buy_spends_that_much_quote(stack: Stack) -> None:
    """quote_amount 50 USDT: execution turns it into an amount (50 / mid, down to the amount
    step) and the fill costs 50 USDT less at most one step's worth, give or take the spread
    and the price's move between the mark and the fill; the fee comes on top."""
    btc = "BTC/USDT"
    step = _spec(btc).amount_step
    usdt_before = balance(stack, "USDT")["total"]
    response = order(stack, symbol=btc, quote_amount="50", client_order_id=new_cid("quote"))
    try:
        assert response.status_code == 201, response.text
        placed = response.json()
        amount, filled = D(placed["amount"]), D(placed["filled"])
        assert placed["status"] == "filled" and filled == amount > 0, placed
        assert amount % step == 0, amount
        average = D(placed["average_price"])
        cost = filled * average
        slippage = D(50) * D("0.005")  # spread (at most 4 bp) and the move since the mark
        assert D(50) - step * average - slippage <= cost <= D(50) + slippage, (cost, placed)
        assert abs(D(placed["fee"]) - cost * TAKER_FEE) < EXACT, placed
        stored = _stored(stack, placed["id"])
        assert D(stored["amount"]) == amount and D(stored["amount"]) % step == 0, stored
        spent = usdt_before - balance(stack, "USDT")["total"]
        assert abs(spent - cost - D(placed["fee"])) < EXACT, (spent, placed)
    finally:
        close_position(stack, btc)


def test_a_quote_amount_too_small_for_one_step_is_refused(stack: Stack) -> None:
    cid = new_cid("tiny")
    response = order(stack, quote_amount="0.0001", client_order_id=cid)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "quote_amount 0.0001 buys less than one step (0.00001) of BTC/USDT" in detail
    listed = stack.get("execution", "/orders/sim?symbol=BTC-USDT&limit=1000").json()
    assert cid not in [o["client_order_id"] for o in listed]  # refused before it was claimed


# --- positions -----------------------------------------------------------------------------
def test_closing_without_a_symbol_closes_every_position(stack: Stack) -> None:
    sol, xrp = "SOL/USDT", "XRP/USDT"
    _flatten(stack, sol, xrp)
    try:
        _bought(stack, sol, "0.1")
        _bought(stack, xrp, "20")
        held = positions(stack)
        assert D(held[sol]["amount"]) == D("0.1") and D(held[xrp]["amount"]) == D(20), held

        response = stack.post("execution", "/positions/sim/close", {})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["errors"] == [], body
        closed = {o["symbol"]: o for o in body["orders"]}
        assert {sol, xrp} <= set(closed), body
        for symbol, amount in ((sol, D("0.1")), (xrp, D(20))):
            close = closed[symbol]
            assert (close["side"], close["type"], close["status"]) == ("sell", "market", "filled")
            assert close["reduce_only"] is True and close["role"] == "close", close
            assert D(close["amount"]) == D(close["filled"]) == amount, close
            assert close["reason"] == "closed by operator", close
        after = positions(stack)
        assert sol not in after and xrp not in after, after
        assert balance(stack, "SOL")["total"] == 0 and balance(stack, "XRP")["total"] == 0
    finally:
        _flatten(stack, sol, xrp)


def test_position_pnl_follows_the_ledger(stack: Stack) -> None:
    """Unrealized PnL is (mark - entry) x amount; realized PnL moves by each fill's fee (a
    buy) and by (price - entry) x amount - fee (a sell), as execution's ledger books it."""
    bnb = "BNB/USDT"
    _flatten(stack, bnb)
    realized_before = _realized_in_ledger(stack, bnb)
    try:
        buy = _bought(stack, bnb, "0.1")
        entry, buy_fee = D(buy["average_price"]), D(buy["fee"])
        held = positions(stack)[bnb]
        assert D(held["amount"]) == D("0.1") and abs(D(held["entry_price"]) - entry) < EXACT
        mark = D(held["mark_price"])
        ticker = _ticker(stack, bnb)
        assert abs(mark - (ticker["bid"] + ticker["ask"]) / 2) / mark < D("0.01"), held
        assert abs(D(held["unrealized_pnl"]) - (mark - entry) * D("0.1")) < EXACT, held
        assert abs(D(held["realized_pnl"]) - (realized_before - buy_fee)) < EXACT, held

        sell = order(stack, symbol=bnb, side="sell", amount="0.04", client_order_id=new_cid())
        assert sell.status_code == 201 and sell.json()["status"] == "filled", sell.text
        sold_at, sell_fee = D(sell.json()["average_price"]), D(sell.json()["fee"])
        left = positions(stack)[bnb]
        assert D(left["amount"]) == D("0.06"), left
        assert abs(D(left["entry_price"]) - entry) < EXACT, left  # a sale keeps the entry
        realized = D(left["realized_pnl"]) - D(held["realized_pnl"])
        assert abs(realized - ((sold_at - entry) * D("0.04") - sell_fee)) < EXACT, left
        mark = D(left["mark_price"])
        assert abs(D(left["unrealized_pnl"]) - (mark - entry) * D("0.06")) < EXACT, left
    finally:
        _flatten(stack, bnb)


# --- the exchange refusing an order --------------------------------------------------------
def test_an_order_the_exchange_rejects_is_a_422_with_its_reason(stack: Stack) -> None:
    armed = stack.post("execution", "/exchanges/sim/faults", {"kind": "reject"})
    assert armed.status_code == 204, armed.text
    cid = new_cid("rejected")
    response = order(stack, amount="0.001", client_order_id=cid)
    assert response.status_code == 422, response.text
    reason = "sim: injected reject on create_order: request rejected by the exchange"
    assert response.json()["detail"] == f"sim refused the order: {reason}", response.text
    assert response.json()["title"] == "Order refused by the exchange"

    listed = stack.get("execution", "/orders/sim?symbol=BTC-USDT&status=rejected&limit=1000")
    [stored] = [o for o in listed.json() if o["client_order_id"] == cid]
    assert stored["status"] == "rejected" and stored["reason"] == reason, stored
    assert D(stored["filled"]) == 0 and stored["exchange_order_id"] is None, stored

    again = order(stack, amount="0.001", client_order_id=cid)  # (the fault is used up)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == stored["id"] and again.json()["status"] == "rejected"
    engine = stack.engine()
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT o.status, count(f.id) AS fills FROM orders o"
                    " LEFT JOIN fills f ON f.order_id = o.id"
                    " WHERE o.client_order_id = :c GROUP BY o.id"
                ),
                {"c": cid},
            ).all()
    finally:
        engine.dispose()
    assert [(r.status, r.fills) for r in rows] == [("rejected", 0)]


# The sim's refusal for funds, as execution passes it on.
_FUNDS = re.compile(
    r"sim refused the order: (?P<side>buy|sell) (?P<amount>\S+) (?P<symbol>\S+) needs "
    r"(?P<needs>\S+) (?P<currency>\S+) \(including fees\), but only (?P<free>\S+) is free"
)


def _approved_by_risk(stack: Stack, cid: str) -> bool:
    checks = stack.get("risk", f"/checks/{cid}").json()
    return len(checks) == 1 and checks[0]["approved"] is True


def test_a_sale_of_coins_the_account_does_not_hold_is_refused_for_funds(stack: Stack) -> None:
    """Risk lets a small short through (it judges exposure, not cash); the sim refuses a
    sale of coins the account does not hold, and the caller hears the sim's reason."""
    eth = "ETH/USDT"
    _flatten(stack, eth)
    usdt_before = balance(stack, "USDT")
    cid = new_cid("nofunds")
    response = order(stack, symbol=eth, side="sell", amount="0.005", client_order_id=cid)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert response.json()["title"] == "Insufficient funds"  # a client can tell, untold text
    said = _FUNDS.fullmatch(detail)
    assert said is not None, detail
    assert (said["side"], said["symbol"], said["currency"]) == ("sell", eth, "ETH"), detail
    assert D(said["amount"]) == D(said["needs"]) == D("0.005") and D(said["free"]) == 0, detail
    assert _approved_by_risk(stack, cid)
    [stored] = [
        o
        for o in stack.get("execution", "/orders/sim?symbol=ETH-USDT&limit=1000").json()
        if o["client_order_id"] == cid
    ]
    assert stored["status"] == "rejected" and detail.endswith(stored["reason"]), stored
    assert eth not in positions(stack) and balance(stack, "USDT") == usdt_before


def test_a_buy_beyond_the_cash_is_refused_for_funds(stack: Stack) -> None:
    """With risk's limits raised past the account, a limit buy worth 1.5x the free cash is
    approved by risk and refused by the sim, naming what it needs and what is free."""
    btc = "BTC/USDT"
    spec = _spec(btc)
    free = balance(stack, "USDT")["free"]
    price = to_step(_ticker(stack, btc)["bid"] * D("0.97"), spec.price_step)
    amount = to_step(free * D("1.5") / price, spec.amount_step)
    cid = new_cid("nocash")
    roomy = {
        "max_order_notional": str(to_step(free * 3, D(1))),
        "max_position_pct": "5",
        "max_gross_exposure_pct": "5",
        "max_heat_pct": "0.9",
    }
    with _limits(stack, **roomy):
        response = order(
            stack, type="limit", amount=str(amount), price=str(price), client_order_id=cid
        )
    try:
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        said = _FUNDS.fullmatch(detail)
        assert said is not None, detail
        assert (said["side"], said["symbol"], said["currency"]) == ("buy", btc, "USDT"), detail
        assert D(said["amount"]) == amount and D(said["free"]) == free, detail
        assert D(said["needs"]) == amount * price * HOLD_RATE, detail
        assert _approved_by_risk(stack, cid)
    finally:
        if response.status_code in (200, 201):  # (it rests if it was wrongly accepted)
            _cancel(stack, response.json()["id"])


# --- while HALTED --------------------------------------------------------------------------
def test_while_halted_only_reducing_orders_and_cancels_go_through(stack: Stack) -> None:
    """A halt without flatten cancels our resting orders and keeps positions; then a new
    buy is refused naming the halt, a reduce-only sell that shrinks the position (market,
    or limit resting on the book) goes out, and a resting order can still be cancelled."""
    eth = "ETH/USDT"
    _flatten(stack, eth)
    _bought(stack, eth, "0.01")
    resting = _rest_buy(stack, eth, "0.003", "0.97")  # (inside risk's price collar)
    reason = f"halt drill {new_cid()}"
    try:
        halt = stack.post("risk", "/halt", {"reason": reason, "flatten": False}, timeout=60)
        assert halt.status_code == 200, halt.text
        assert halt.json()["state"]["state"] == "HALTED", halt.text
        # Risk tells execution before it answers. The news also comes over Redis, and
        # whichever arrives first cancels (the other waits for it, then finds nothing
        # left): so the order is cancelled by now, by this call or by the broadcast.
        applied = halt.json()["execution"]
        assert applied["applied"] is True and applied["result"]["errors"] == [], applied
        assert _stored(stack, resting["id"])["status"] == "cancelled"
        assert D(positions(stack)[eth]["amount"]) == D("0.01")

        refused = order(stack, symbol=eth, amount="0.003", client_order_id=new_cid("halted"))
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert detail.startswith(f"trading is HALTED: {reason}") and "trading_state" in detail

        ask = _ticker(stack, eth)["ask"]
        above = to_step(ask * D("1.03"), _spec(eth).price_step)
        limit_sell = order(
            stack,
            symbol=eth,
            side="sell",
            type="limit",
            amount="0.003",
            price=str(above),
            reduce_only=True,
            client_order_id=new_cid("reduce"),
        )
        assert limit_sell.status_code == 201, limit_sell.text
        assert limit_sell.json()["status"] == "open", limit_sell.text
        assert balance(stack, "ETH")["used"] == D("0.003")

        market_sell = order(
            stack,
            symbol=eth,
            side="sell",
            amount="0.003",
            reduce_only=True,
            client_order_id=new_cid("reduce"),
        )
        assert market_sell.status_code == 201, market_sell.text
        assert market_sell.json()["status"] == "filled", market_sell.text
        assert D(positions(stack)[eth]["amount"]) == D("0.007")

        cancelled = _cancel(stack, limit_sell.json()["id"])
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled", cancelled.text
        assert _stored(stack, limit_sell.json()["id"])["status"] == "cancelled"
        assert balance(stack, "ETH")["used"] == 0
    finally:
        stack.post("risk", "/resume", {"reason": "halt drill over"}).raise_for_status()
        for leftover in _open_orders(stack):
            _cancel(stack, leftover["id"])
        _flatten(stack, eth)
