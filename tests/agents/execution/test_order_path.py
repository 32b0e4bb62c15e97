"""The guarded order path over HTTP: execution → risk + compliance → sim → ledger."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from common.contracts import AuditEventIn
from common.outbox import record
from tests.agents.execution.fleet import balance, close_position, new_cid, order, positions
from tests.conftest import Stack

pytestmark = pytest.mark.usefixtures("repeatable_orders", "active")


def test_market_buy_fills_and_opens_a_position(stack: Stack) -> None:
    before = stack.get("execution", "/balance/sim").json()["balances"]["USDT"]["total"]
    cid = new_cid()
    response = order(stack, amount="0.01", client_order_id=cid)
    assert response.status_code == 201, response.text
    placed = response.json()
    assert placed["status"] == "filled" and Decimal(placed["filled"]) == Decimal("0.01")
    assert Decimal(placed["average_price"]) > 0 and Decimal(placed["fee"]) > 0
    after = stack.get("execution", "/balance/sim").json()["balances"]["USDT"]["total"]
    spent = Decimal(before) - Decimal(after)
    cost = Decimal(placed["average_price"]) * Decimal("0.01") + Decimal(placed["fee"])
    assert abs(spent - cost) < Decimal("0.0001")
    assert Decimal(positions(stack)["BTC/USDT"]["amount"]) >= Decimal("0.01")

    # The audit trail reaches compliance: the request, both checks, the fill (a FillEvent)
    # and the order's completion, each of its own kind.
    def audited() -> list[str] | None:
        page = stack.get("compliance", f"/audit?subject={cid}&order=asc").json()
        kinds = [e["kind"] for e in page["items"]]
        wanted = {"order.requested", "risk.checked", "policy.checked"}
        done = wanted | {"order.filled", "order.completed"}
        return kinds if done <= set(kinds) else None

    kinds = stack.wait_for(audited, timeout=30, what="the order's audit trail at compliance")
    assert kinds.count("order.completed") == 1


def test_twenty_concurrent_requests_with_one_client_id_make_one_order(stack: Stack) -> None:
    cid = new_cid("dup")
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(
            pool.map(lambda _: order(stack, amount="0.001", client_order_id=cid), range(20))
        )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) == 1 and codes.count(200) == 19, codes
    assert len({r.json()["id"] for r in responses}) == 1
    with stack.engine().connect() as conn:
        fills = conn.execute(
            text(
                "SELECT count(*) FROM fills f JOIN orders o ON o.id = f.order_id"
                " WHERE o.client_order_id = :c"
            ),
            {"c": cid},
        ).scalar_one()
    assert fills == 1  # one market order of 0.001, one trade: it went to the exchange once
    trades = stack.get("execution", "/orders/sim?limit=1000").json()
    assert [o["client_order_id"] for o in trades].count(cid) == 1
    placed = stack.get("execution", f"/orders/sim/{responses[0].json()['id']}").json()
    assert placed["status"] == "filled" and Decimal(placed["filled"]) == Decimal("0.001")

    def requested() -> list[str] | None:
        page = stack.get("compliance", f"/audit?subject={cid}&order=asc").json()
        kinds = [e["kind"] for e in page["items"]]
        return (
            kinds if {"order.completed", "risk.checked", "policy.checked"} <= set(kinds) else None
        )

    kinds = stack.wait_for(requested, timeout=30, what="the order's audit trail")
    assert [kinds.count(k) for k in ("order.requested", "risk.checked", "policy.checked")] == [
        1
    ] * 3


def test_same_client_id_for_a_different_order_is_a_conflict(stack: Stack) -> None:
    cid = new_cid()
    assert order(stack, amount="0.001", client_order_id=cid).status_code == 201
    clash = order(stack, amount="0.001", client_order_id=cid, symbol="ETH/USDT")
    assert clash.status_code == 409 and cid in clash.json()["detail"]


def test_timeout_after_accept_is_reconciled_without_a_second_create(stack: Stack) -> None:
    stack.post("execution", "/exchanges/sim/faults", {"kind": "timeout_after_accept"})
    # Armed behind it: a second create would use this up (and be refused).
    stack.post("execution", "/exchanges/sim/faults", {"kind": "reject"})
    cid = new_cid("tmo")
    response = order(stack, amount="0.001", client_order_id=cid)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "unknown"
    oid = response.json()["id"]

    def settled() -> dict[str, object] | None:
        o = stack.get("execution", f"/orders/sim/{oid}").json()
        return o if o["status"] == "filled" else None

    final = stack.wait_for(settled, timeout=30, what="the unknown order to be reconciled")
    assert Decimal(str(final["filled"])) == Decimal("0.001")
    again = order(stack, amount="0.001", client_order_id=cid)
    assert again.status_code == 200 and again.json()["id"] == oid
    # The exchange saw one create: the fault armed for a second one is still there.
    armed = stack.get("execution", "/exchanges/sim/faults").json()
    assert [(f["kind"], f["op"], f["times"]) for f in armed] == [("reject", "create_order", 1)]


def test_armed_faults_are_listed_and_cleared(stack: Stack) -> None:
    faults = "/exchanges/sim/faults"
    hang = {"kind": "hang_after_accept", "op": "cancel_order", "hang_seconds": 2}
    assert stack.post("execution", faults, hang).status_code == 204
    assert stack.post("execution", faults, {"kind": "network_error", "times": 3}).status_code == 204
    assert stack.get("execution", faults).json() == [
        {"kind": "hang_after_accept", "op": "cancel_order", "times": 1, "hang_seconds": 2.0},
        {"kind": "network_error", "op": "create_order", "times": 3, "hang_seconds": None},
    ]
    cleared = httpx.delete(stack.url("execution") + faults, headers=stack.auth(), timeout=10)
    assert cleared.status_code == 204
    assert stack.get("execution", faults).json() == []


def test_killed_between_accept_and_record_recovers_exactly_once(stack: Stack) -> None:
    held_before = Decimal(positions(stack).get("BTC/USDT", {"amount": 0})["amount"])
    coins_before = balance(stack, "BTC")["total"]
    stack.post("execution", "/exchanges/sim/faults", {"kind": "hang_after_accept"})
    cid = new_cid("kill")
    pid = stack.get("execution", "/info").json()["pid"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(order, stack, amount="0.002", client_order_id=cid)

        def accepted() -> bool:
            with stack.engine().connect() as conn:
                status = conn.execute(
                    text("SELECT status FROM orders WHERE client_order_id=:c"), {"c": cid}
                ).scalar_one_or_none()
            return status == "pending"

        stack.wait_for(accepted, timeout=30, what="the order to be claimed")
        import time

        time.sleep(1.0)  # the sim has accepted and is now "hanging" before answering
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(httpx.HTTPError):
            pending.result(timeout=30)
    stack.wait_for(
        lambda: stack.healthy("execution"), timeout=90, what="execution back and reconciled"
    )
    with stack.engine().connect() as conn:
        rows = conn.execute(
            text("SELECT id, status, filled FROM orders WHERE client_order_id = :c"), {"c": cid}
        ).all()
        assert len(rows) == 1 and rows[0].status == "filled"
        assert rows[0].filled == Decimal("0.002")
        fills = conn.execute(
            text("SELECT sum(amount) FROM fills WHERE order_id = :i"), {"i": rows[0].id}
        ).scalar_one()
    assert fills == Decimal("0.002")
    # The ledger's position and the exchange's account both moved by the order, once.
    assert Decimal(positions(stack)["BTC/USDT"]["amount"]) - held_before == Decimal("0.002")
    assert balance(stack, "BTC")["total"] - coins_before == Decimal("0.002")


def test_an_exchange_refusing_our_keys_halts_trading(stack: Stack) -> None:
    """An authentication error from the exchange stops everything through risk: the order
    is refused with 503, and risk is HALTED, naming the credentials, until a resume."""
    stack.post("execution", "/exchanges/sim/faults", {"kind": "auth_error"})
    cid = new_cid("auth")
    try:
        response = order(stack, amount="0.001", client_order_id=cid)
        assert response.status_code == 503, response.text
        assert "sim authentication failed; trading halted" in response.json()["detail"]
        state = stack.get("risk", "/state").json()
        assert state["state"] == "HALTED", state
        assert "sim rejected our credentials" in state["reason"], state
        again = order(stack, amount="0.001", client_order_id=cid)
        assert again.status_code == 200 and again.json()["status"] == "rejected"
        assert "auth_error" in again.json()["reason"]
        refused = order(stack, amount="0.001", client_order_id=new_cid("auth"))
        assert refused.status_code == 409 and "credentials" in refused.json()["detail"]
    finally:
        stack.post("risk", "/resume", {"reason": "keys fixed"}).raise_for_status()
    assert order(stack, amount="0.001", client_order_id=new_cid("auth")).status_code == 201


def test_wash_trade_rule_sees_a_limit_order_still_on_its_way(stack: Stack) -> None:
    """A limit buy approved and on its way to the exchange (the sim holds its answer back)
    is one of our resting orders for the next order's wash-trade rule: a sell that would
    cross it is refused by compliance, not sent."""
    mid = Decimal(stack.get("execution", "/ticker/sim/BTC-USDT").json()["last"])
    price = str((mid * Decimal("0.98")).quantize(Decimal("0.01")))
    hang = {"kind": "hang_after_accept", "hang_seconds": 3}
    stack.post("execution", "/exchanges/sim/faults", hang).raise_for_status()
    buy_cid = new_cid("wash-buy")
    with ThreadPoolExecutor(max_workers=1) as pool:
        buying = pool.submit(
            order, stack, type="limit", price=price, amount="0.001", client_order_id=buy_cid
        )

        def approved() -> bool:
            with stack.engine().connect() as conn:
                return bool(
                    conn.execute(
                        text("SELECT approved FROM policy_decisions WHERE client_order_id = :c"),
                        {"c": buy_cid},
                    ).scalar_one_or_none()
                )

        stack.wait_for(approved, timeout=30, what="the buy to be approved")
        time.sleep(0.5)  # (approved, now held by the sim: on its way)
        sell_cid = new_cid("wash-sell")
        sell = order(
            stack, side="sell", type="limit", price=price, amount="0.001", client_order_id=sell_cid
        )
        bought = buying.result(timeout=30)
    assert bought.status_code == 202 and bought.json()["status"] == "unknown", bought.text
    assert sell.status_code == 422, sell.text
    assert "rejected by compliance" in sell.json()["detail"], sell.text
    assert "wash_trade" in sell.json()["detail"], sell.text
    _cancel_once_resting(stack, bought.json()["id"])  # (reconciled, it rests on the book)


def test_wash_trade_rule_sees_a_limit_order_whose_fate_is_unknown(stack: Stack) -> None:
    """A limit buy the exchange took but did not confirm (a timeout after accepting: the
    order is `unknown` until reconciled) may be resting on the book: a sell that would
    cross it is refused by compliance meanwhile."""
    mid = Decimal(stack.get("execution", "/ticker/sim/BTC-USDT").json()["last"])
    price = str((mid * Decimal("0.98")).quantize(Decimal("0.01")))
    stack.post("execution", "/exchanges/sim/faults", {"kind": "timeout_after_accept"})
    bought = order(stack, type="limit", price=price, amount="0.001", client_order_id=new_cid())
    assert bought.status_code == 202 and bought.json()["status"] == "unknown", bought.text
    sell = order(stack, side="sell", type="limit", price=price, amount="0.001")
    assert sell.status_code == 422, sell.text
    assert "rejected by compliance" in sell.json()["detail"], sell.text
    assert "wash_trade" in sell.json()["detail"], sell.text
    _cancel_once_resting(stack, bought.json()["id"])


def _cancel_once_resting(stack: Stack, order_id: int) -> None:
    """Wait for an `unknown` order to be reconciled as resting, then take it off the book."""
    stack.wait_for(
        lambda: stack.get("execution", f"/orders/sim/{order_id}").json()["status"] == "open",
        timeout=30,
        what=f"order {order_id} to be reconciled as resting",
    )
    response = httpx.delete(
        stack.url("execution") + f"/orders/sim/{order_id}", headers=stack.auth(), timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    cid = response.json()["client_order_id"]

    def audited() -> bool:
        page = stack.get("compliance", "/audit", params={"subject": cid, "kind": "order.cancelled"})
        return len(page.json()["items"]) == 1

    stack.wait_for(audited, timeout=30, what="the cancel in the audit trail at compliance")


def test_a_chosen_hang_is_for_hang_faults_only(stack: Stack) -> None:
    fault = {"kind": "reject", "hang_seconds": 3}
    response = stack.post("execution", "/exchanges/sim/faults", fault)
    assert response.status_code == 422, response.text
    assert "hang_seconds applies to kind hang_after_accept only" in response.json()["detail"]


@pytest.mark.parametrize("agent", ["risk", "compliance"])
def test_order_refused_with_503_when_a_guard_is_down(stack: Stack, agent: str) -> None:
    stack.volex("stop", agent)
    try:
        response = order(stack, amount="0.001", client_order_id=new_cid())
        assert response.status_code == 503
        assert agent in response.json()["detail"]
    finally:
        stack.volex("start", agent)
        stack.wait_for(lambda: stack.healthy(agent), timeout=60, what=f"{agent} back")


def test_execution_started_while_risk_is_down_refuses_orders_until_it_knows_the_state(
    stack: Stack,
) -> None:
    """Execution learns the trading state from risk before it trades: started while
    risk is down it does not know whether trading is halted, and says so."""
    stack.volex("stop", "risk")
    try:
        stack.volex("restart", "execution")

        def unknown() -> httpx.Response | None:
            try:
                health = stack.health("execution")
            except httpx.HTTPError:
                return None  # (not listening yet)
            return health if "trading state unknown" in health.text else None

        health = stack.wait_for(unknown, timeout=60, what="execution to say what it lacks")
        assert health.status_code == 503
        refused = order(stack, amount="0.001", client_order_id=new_cid("unknown-state"))
        assert refused.status_code == 503, refused.text
        detail = refused.json()["detail"]
        assert "trading state unknown" in detail and "risk" in detail, detail
    finally:
        stack.volex("start", "risk")
    stack.wait_for(stack.all_healthy, timeout=90, what="execution ready once risk is back")
    assert order(stack, amount="0.001", client_order_id=new_cid("known-state")).status_code == 201


def test_order_refused_with_503_while_the_database_is_down(stack: Stack) -> None:
    stack.volex("stop", "postgres")
    try:
        response = order(stack, amount="0.001", client_order_id=new_cid("nodb"))
        assert response.status_code == 503, response.text
        assert "database unavailable" in response.json()["detail"]
    finally:
        stack.volex("start", "postgres")
        stack.wait_for(stack.all_healthy, timeout=90, what="the fleet back with its database")
    assert order(stack, amount="0.001", client_order_id=new_cid("nodb")).status_code == 201


def test_paper_trading_goes_on_while_vault_is_down(stack: Stack) -> None:
    """Vault holds live keys only; the sim needs none, so its orders still trade."""
    stack.volex("stop", "vault")
    try:
        response = order(stack, amount="0.001", client_order_id=new_cid("novault"))
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "filled"
    finally:
        stack.volex("start", "vault")
        stack.wait_for(stack.all_healthy, timeout=90, what="the fleet back with Vault")


def test_halt_with_flatten_then_restart_then_resume(stack: Stack) -> None:
    assert order(stack, amount="0.003", client_order_id=new_cid()).status_code == 201
    bid = Decimal(stack.get("execution", "/ticker/sim/BTC-USDT").json()["bid"])
    below = (bid * Decimal("0.97")).quantize(Decimal("0.01"))  # inside risk's price collar
    resting = order(
        stack, type="limit", amount="0.001", price=str(below), client_order_id=new_cid()
    )
    assert resting.status_code == 201 and resting.json()["status"] == "open"
    halt = stack.post("risk", "/halt", {"reason": "drill", "flatten": True}, timeout=60)
    assert halt.status_code == 200, halt.text
    try:

        def flat() -> bool:
            live = [
                o
                for o in stack.get("execution", "/orders/sim?limit=1000").json()
                if o["status"] in ("open", "partially_filled")
            ]
            return not live and not stack.get("execution", "/positions/sim").json()

        stack.wait_for(flat, timeout=30, what="zero open orders and zero positions")
        refused = order(stack, amount="0.001", client_order_id=new_cid())
        assert refused.status_code == 409 and "drill" in refused.json()["detail"]
        # Every component, the servers first: the halt lives in PostgreSQL, not in a
        # process (and not in Redis, which only carries the news of it).
        for name in stack.state()["components"]:
            stack.volex("restart", name)
        stack.wait_for(stack.all_healthy, timeout=120, what="fleet back after restarts")
        assert stack.get("risk", "/state").json()["state"] == "HALTED"
        assert order(stack, amount="0.001", client_order_id=new_cid()).status_code == 409
    finally:
        stack.post("risk", "/resume", {"reason": "drill over"})
    assert order(stack, amount="0.001", client_order_id=new_cid()).status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": "NaN"}, "amount"),
        ({"amount": "Infinity"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"amount": "-1"}, "amount"),
        ({"amount": "0.01", "quote_amount": "10"}, "quote_amount"),
        ({"amount": "0.01", "type": "limit"}, "price"),
        ({"amount": "0.01", "symbol": "btcusdt"}, "symbol"),
        ({"amount": "0.01", "side": "hold"}, "side"),
        ({"amount": "0.01", "exchange": "Bad Exchange"}, "exchange"),
    ],
)
def test_bad_orders_get_422_naming_the_field(
    stack: Stack, body: dict[str, object], field: str
) -> None:
    response = order(stack, **body)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]


def test_unknown_symbol_and_exchange(stack: Stack) -> None:
    assert order(stack, amount="1", symbol="DOGE/EUR").status_code == 422
    assert order(stack, amount="1", exchange="nosuch").status_code == 404


def test_a_refused_order_keeps_its_client_id(stack: Stack) -> None:
    mid = Decimal(stack.get("execution", "/ticker/sim/BTC-USDT").json()["last"])
    cid = new_cid("bad-stop")
    above = str((mid * Decimal("1.5")).quantize(Decimal("0.01")))
    first = order(stack, amount="0.001", stop_loss=above, client_order_id=cid)
    assert first.status_code == 422 and "stop_loss" in first.json()["detail"]
    again = order(stack, amount="0.001", stop_loss=above, client_order_id=cid)
    assert again.status_code == 200, again.text  # the same (rejected) order, never a new one
    assert again.json()["status"] == "rejected" and "stop_loss" in again.json()["reason"]


def test_executions_own_gate_stops_an_order_risk_approved(stack: Stack) -> None:
    """Risk still says ACTIVE, but a halt reached execution first (the race between an
    approval and the kill switch): the approved order must not leave."""
    apply = "/trading-state/apply"
    halted = stack.post("execution", apply, {"state": "HALTED", "reason": "gate drill"})
    assert halted.status_code == 200, halted.text
    try:
        refused = order(stack, amount="0.001", client_order_id=new_cid("gate"))
        assert refused.status_code == 409 and "gate drill" in refused.json()["detail"]
        assert refused.json()["detail"].startswith("trading is HALTED")
    finally:
        stack.post("execution", apply, {"state": "ACTIVE", "reason": "drill over"})
    assert order(stack, amount="0.001", client_order_id=new_cid("gate")).status_code == 201


def test_an_audit_event_compliance_refuses_does_not_hold_back_the_trail(stack: Stack) -> None:
    """Execution's outbox delivers in order. An event compliance refuses (here a fill
    without a fill's fields) is set aside with the reason, and the events queued behind
    it still reach compliance."""

    tag = new_cid("aside")
    bad = {"kind": "order.filled", "actor": "execution", "subject": f"{tag}-bad", "data": {}}
    good = {"kind": "order.note", "actor": "execution", "subject": f"{tag}-good", "data": {}}
    with stack.engine().begin() as conn:
        for payload in (bad, good):
            conn.execute(
                text(
                    "INSERT INTO event_outbox (service, payload, attempts)"
                    " VALUES ('execution', CAST(:p AS jsonb), 0)"
                ),
                {"p": json.dumps(payload)},
            )
    try:

        def arrived() -> bool:
            page = stack.get("compliance", f"/audit?subject={tag}-good").json()
            return bool(page["items"])

        stack.wait_for(arrived, timeout=30, what="the event queued behind the refused one")
        with stack.engine().connect() as conn:
            [row] = conn.execute(
                text(
                    "SELECT attempts, last_error, next_attempt_at > now() AS later"
                    " FROM event_outbox WHERE payload->>'subject' = :s"
                ),
                {"s": f"{tag}-bad"},
            ).all()
        assert row.attempts >= 1 and "fill_id" in row.last_error and row.later
        refused = stack.get("compliance", f"/audit?subject={tag}-bad").json()["items"]
        assert refused == []
    finally:
        with stack.engine().begin() as conn:  # it would be retried (and refused) for ever
            conn.execute(
                text("DELETE FROM event_outbox WHERE payload->>'subject' LIKE :t"),
                {"t": f"{tag}%"},
            )


def test_an_audit_event_sent_again_is_appended_once(stack: Stack) -> None:
    """The relay sends what is queued until it hears back: an event whose answer was lost
    goes again. Each queued event carries its id, and compliance appends it once (here
    the same event queued twice, as after a crash between delivery and its removal)."""
    tag = new_cid("twice")
    with stack.engine().begin() as conn:
        with Session(bind=conn) as session:
            record(
                session,
                "execution",
                AuditEventIn(kind="order.note", actor="execution", subject=tag),
            )
            session.flush()
        payload = conn.execute(
            text("SELECT payload FROM event_outbox WHERE payload->>'subject' = :s"), {"s": tag}
        ).scalar_one()
        assert len(payload["event_id"]) == 32 and uuid.UUID(payload["event_id"])
        conn.execute(
            text(
                "INSERT INTO event_outbox (service, payload, attempts)"
                " VALUES ('execution', CAST(:p AS jsonb), 0)"
            ),
            {"p": json.dumps(payload)},
        )

    def delivered() -> bool:
        with stack.engine().connect() as conn:
            left = conn.execute(
                text("SELECT count(*) FROM event_outbox WHERE payload->>'subject' = :s"), {"s": tag}
            ).scalar_one()
        return left == 0

    stack.wait_for(delivered, timeout=30, what="both copies delivered")
    assert len(stack.get("compliance", f"/audit?subject={tag}").json()["items"]) == 1


def test_risk_counts_our_resting_orders(stack: Stack) -> None:
    """Execution sends its open orders with every check: a resting buy counts against the
    position a new buy would make (as if both filled); a reduce-only one would not."""
    bid = Decimal(stack.get("execution", "/ticker/sim/BTC-USDT").json()["bid"])
    below = (bid * Decimal("0.97")).quantize(Decimal("0.01"))  # inside risk's price collar
    rest = order(stack, type="limit", amount="0.0021", price=str(below), client_order_id=new_cid())
    assert rest.status_code == 201 and rest.json()["status"] == "open", rest.text
    try:
        open_buys = [
            o
            for o in stack.get("execution", "/orders/sim?symbol=BTC/USDT&status=open").json()
            if o["side"] == "buy" and not o["reduce_only"]
        ]
        resting = sum((Decimal(o["amount"]) - Decimal(o["filled"]) for o in open_buys), Decimal(0))
        assert resting >= Decimal("0.0021")  # ours, and any another test left resting
        cid = new_cid("worst")
        assert order(stack, amount="0.001", client_order_id=cid).status_code == 201
        with stack.engine().connect() as conn:
            checks = conn.execute(
                text("SELECT checks FROM risk_checks WHERE client_order_id = :c"), {"c": cid}
            ).scalar_one()
        position = next(c for c in checks if c["rule"] == "max_position_pct")
        shown = format(resting.normalize(), "f")
        assert f"({shown} of it in resting orders)" in position["detail"], position
    finally:
        cancelled = httpx.delete(
            stack.url("execution") + f"/orders/sim/{rest.json()['id']}",
            headers=stack.auth(),
            timeout=30,
        )
        assert cancelled.json()["status"] == "cancelled", cancelled.text


def _room_for_one(
    stack: Stack, symbol: str
) -> tuple[Decimal, dict[str, object], dict[str, object]]:
    """Close the position in `symbol`; then an amount of it of which one order fits under a
    tight max_position_pct and two do not (60 % of the room each), those limits, and the
    limits to put back."""
    from tests.agents.execution.conftest import _editable

    closed = close_position(stack, symbol)
    assert closed.status_code == 200, closed.text
    saved = stack.get("risk", "/limits").json()
    usdt = stack.get("execution", "/balance/sim").json()["balances"]["USDT"]["total"]
    held = stack.get("execution", "/positions/sim").json()
    equity = Decimal(usdt) + sum(Decimal(p["amount"]) * Decimal(p["mark_price"]) for p in held)
    path = symbol.replace("/", "-")
    mid = Decimal(stack.get("execution", f"/ticker/sim/{path}").json()["last"])
    limit = Decimal("0.02")  # of equity
    amount = (equity * limit * Decimal("0.6") / mid).quantize(Decimal("0.001"))
    return amount, _editable({**saved, "max_position_pct": str(limit)}), _editable(saved)


def _set_limits(stack: Stack, limits: dict[str, object]) -> None:
    url = stack.url("risk") + "/limits"
    httpx.put(url, json=limits, headers=stack.auth(), timeout=10).raise_for_status()


def test_concurrent_orders_are_judged_with_each_other(stack: Stack) -> None:
    """Orders sent at the same moment must not each be judged on a book without the
    others: with room for one of them under max_position_pct, one fills and the rest
    are refused naming the rule (each alone would pass)."""
    sol = "SOL/USDT"
    amount, tight, saved = _room_for_one(stack, sol)
    _set_limits(stack, tight)
    try:
        ids = [new_cid() for _ in range(6)]
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(
                pool.map(
                    lambda cid: order(stack, symbol=sol, amount=str(amount), client_order_id=cid),
                    ids,
                )
            )
        codes = sorted(a.status_code for a in answers)
        assert codes == [201, 422, 422, 422, 422, 422], [a.text for a in answers]
        refused = [a.json()["detail"] for a in answers if a.status_code == 422]
        assert all("max_position_pct" in r for r in refused), refused
        # Judged once each, whether alone or in a batch with the others.
        stored = [stack.get("risk", f"/checks/{cid}").json() for cid in ids]
        assert [len(checks) for checks in stored] == [1] * 6, stored
        assert sorted(checks[0]["approved"] for checks in stored) == [False] * 5 + [True]
    finally:
        _set_limits(stack, saved)
        close_position(stack, sol)


def test_an_order_the_exchange_took_but_we_could_not_record_still_counts(stack: Stack) -> None:
    """The exchange filled an order but recording its answer failed (here: the database
    refuses its fill): until the reconciler records it, risk still counts it, so the next
    order that only one of the two would fit under max_position_pct is refused."""
    bnb = "BNB/USDT"
    amount, tight, saved = _room_for_one(stack, bnb)
    first = new_cid("unrecorded")
    refuse = text(  # (new_cid("unrecorded"): this test's client ids only)
        "CREATE FUNCTION test_refuse_fill() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF (SELECT client_order_id FROM orders WHERE id = NEW.order_id) LIKE 'unrecorded-%' "
        "THEN RAISE EXCEPTION 'test: this fill is refused'; END IF; RETURN NEW; END $$; "
        "CREATE TRIGGER test_refuse_fill BEFORE INSERT ON fills "
        "FOR EACH ROW EXECUTE FUNCTION test_refuse_fill()"
    )
    engine = stack.engine()
    _set_limits(stack, tight)
    with engine.begin() as conn:
        conn.execute(refuse)
    try:
        taken = order(stack, symbol=bnb, amount=str(amount), client_order_id=first)
        assert taken.status_code == 503, taken.text
        assert "recording it failed" in taken.json()["detail"], taken.text
        second = order(stack, symbol=bnb, amount=str(amount), client_order_id=new_cid())
        assert second.status_code == 422, second.text
        assert "max_position_pct" in second.json()["detail"], second.text
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER IF EXISTS test_refuse_fill ON fills"))
            conn.execute(text("DROP FUNCTION IF EXISTS test_refuse_fill()"))
        _set_limits(stack, saved)

    def recorded() -> dict[str, object] | None:
        found = stack.get("execution", "/orders/sim", params={"symbol": bnb}).json()
        mine = [o for o in found if o["client_order_id"] == first]
        return mine[0] if mine and mine[0]["status"] == "filled" else None

    stack.wait_for(recorded, timeout=60, what="the reconciler to record the order")
    # Recorded now, it counts once (from the ledger): an order that fits beside it passes.
    small = (amount / 4).quantize(Decimal("0.001"))
    _set_limits(stack, tight)
    try:
        third = order(stack, symbol=bnb, amount=str(small), client_order_id=new_cid())
        assert third.status_code == 201, third.text
    finally:
        _set_limits(stack, saved)
        close_position(stack, bnb)


def test_orders_sent_together_are_each_recorded_once(stack: Stack) -> None:
    """Answers that arrive together are recorded together (one transaction per market):
    every order filled, one fill row per trade, and the position is the sum of them."""
    xrp = "XRP/USDT"
    closed = close_position(stack, xrp)
    assert closed.status_code == 200, closed.text
    engine = stack.engine()
    held = "SELECT amount, realized_pnl FROM positions WHERE exchange = 'sim' AND symbol = :s"
    with engine.connect() as conn:
        before = conn.execute(text(held), {"s": xrp}).one_or_none()
    realized_before = before.realized_pnl if before is not None else Decimal(0)
    assert before is None or before.amount == 0
    mid = Decimal(stack.get("execution", "/ticker/sim/XRP-USDT").json()["last"])
    smallest = (Decimal(15) / mid).to_integral_value() + 1  # over the 10 USDT minimum
    amounts = [smallest + i for i in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(
            pool.map(
                lambda a: order(stack, symbol=xrp, amount=str(a), client_order_id=new_cid()),
                amounts,
            )
        )
    try:
        assert [a.status_code for a in answers] == [201] * 12, [a.text for a in answers]
        placed = [a.json() for a in answers]
        assert all(p["status"] == "filled" for p in placed), placed
        with engine.connect() as conn:
            fills = conn.execute(
                text(
                    "SELECT order_id, amount, price, fee, realized_pnl FROM fills"
                    " WHERE order_id = ANY(:ids)"
                ),
                {"ids": [p["id"] for p in placed]},
            ).all()
            after = conn.execute(text(held), {"s": xrp}).one()
        assert sorted(f.order_id for f in fills) == sorted(p["id"] for p in placed)
        assert after.amount == sum(amounts)
        assert after.realized_pnl - realized_before == sum(f.realized_pnl for f in fills)
        assert sum(f.realized_pnl for f in fills) == -sum(f.fee for f in fills)  # fees in USDT
        average = sum(f.amount * f.price for f in fills) / sum(f.amount for f in fills)
        position = next(
            p for p in stack.get("execution", "/positions/sim").json() if p["symbol"] == xrp
        )
        assert abs(Decimal(position["entry_price"]) - average) < Decimal("0.000001"), position
    finally:
        close_position(stack, xrp)
        engine.dispose()
