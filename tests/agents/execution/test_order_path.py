"""The guarded order path over HTTP: execution → risk + compliance → sim → ledger."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import Stack


def _cid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def order(stack: Stack, **body: object) -> httpx.Response:
    body.setdefault("symbol", "BTC/USDT")
    body.setdefault("side", "buy")
    body.setdefault("type", "market")
    return httpx.post(
        stack.url("execution") + "/orders", json=body, headers=stack.auth(), timeout=30
    )


@pytest.fixture(scope="module", autouse=True)
def _repeatable_orders(stack: Stack) -> Iterator[None]:
    """These tests send many small look-alike orders on purpose: relax the duplicate and
    rate rules (risk's own tests cover them), and put the limits back afterwards."""
    url = stack.url("risk") + "/limits"
    saved = httpx.get(url, headers=stack.auth(), timeout=10).json()
    relaxed = {**saved, "duplicate_window_s": 0, "max_orders_per_minute": 100_000}
    httpx.put(url, json=_editable(relaxed), headers=stack.auth(), timeout=10).raise_for_status()
    yield
    httpx.put(url, json=_editable(saved), headers=stack.auth(), timeout=10).raise_for_status()


def _editable(limits: dict[str, object]) -> dict[str, object]:
    from agents.risk.schemas import Limits

    return {k: v for k, v in limits.items() if k in Limits.model_fields}


@pytest.fixture(autouse=True)
def _active(stack: Stack) -> None:
    # Risk's own tests leave a synthetic 100,000 equity peak; the sim account is ~10,000.
    httpx.post(
        stack.url("risk") + "/drawdown/reset",
        json={"reason": "test setup", "equity": "1"},
        headers=stack.auth(),
        timeout=30,
    ).raise_for_status()
    # Always: a halt risk could not record (its database-outage test) still closed
    # execution's own gate, and only a resume opens it again.
    httpx.post(
        stack.url("risk") + "/resume",
        json={"reason": "test setup"},
        headers=stack.auth(),
        timeout=30,
    ).raise_for_status()
    httpx.delete(stack.url("execution") + "/exchanges/sim/faults", headers=stack.auth(), timeout=10)


def test_market_buy_fills_and_opens_a_position(stack: Stack) -> None:
    before = stack.get("execution", "/balance/sim").json()["balances"]["USDT"]["total"]
    cid = _cid()
    response = order(stack, amount="0.01", client_order_id=cid)
    assert response.status_code == 201, response.text
    placed = response.json()
    assert placed["status"] == "filled" and Decimal(placed["filled"]) == Decimal("0.01")
    assert Decimal(placed["average_price"]) > 0 and Decimal(placed["fee"]) > 0
    after = stack.get("execution", "/balance/sim").json()["balances"]["USDT"]["total"]
    spent = Decimal(before) - Decimal(after)
    cost = Decimal(placed["average_price"]) * Decimal("0.01") + Decimal(placed["fee"])
    assert abs(spent - cost) < Decimal("0.0001")
    positions = {p["symbol"]: p for p in stack.get("execution", "/positions/sim").json()}
    assert Decimal(positions["BTC/USDT"]["amount"]) >= Decimal("0.01")

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
    cid = _cid("dup")
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
    assert fills >= 1
    trades = stack.get("execution", "/orders/sim?limit=1000").json()
    assert [o["client_order_id"] for o in trades].count(cid) == 1


def test_same_client_id_for_a_different_order_is_a_conflict(stack: Stack) -> None:
    cid = _cid()
    assert order(stack, amount="0.001", client_order_id=cid).status_code == 201
    clash = order(stack, amount="0.001", client_order_id=cid, symbol="ETH/USDT")
    assert clash.status_code == 409 and cid in clash.json()["detail"]


def test_timeout_after_accept_is_reconciled_without_a_second_create(stack: Stack) -> None:
    httpx.post(
        stack.url("execution") + "/exchanges/sim/faults",
        json={"kind": "timeout_after_accept"},
        headers=stack.auth(),
        timeout=10,
    )
    cid = _cid("tmo")
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


def test_killed_between_accept_and_record_recovers_exactly_once(stack: Stack) -> None:
    httpx.post(
        stack.url("execution") + "/exchanges/sim/faults",
        json={"kind": "hang_after_accept"},
        headers=stack.auth(),
        timeout=10,
    )
    cid = _cid("kill")
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


@pytest.mark.parametrize("agent", ["risk", "compliance"])
def test_order_refused_with_503_when_a_guard_is_down(stack: Stack, agent: str) -> None:
    stack.volex("stop", agent)
    try:
        response = order(stack, amount="0.001", client_order_id=_cid())
        assert response.status_code == 503
        assert agent in response.json()["detail"]
    finally:
        stack.volex("start", agent)
        stack.wait_for(lambda: stack.healthy(agent), timeout=60, what=f"{agent} back")


def test_halt_with_flatten_then_restart_then_resume(stack: Stack) -> None:
    assert order(stack, amount="0.003", client_order_id=_cid()).status_code == 201
    bid = Decimal(stack.get("execution", "/ticker/sim/BTC-USDT").json()["bid"])
    below = (bid * Decimal("0.97")).quantize(Decimal("0.01"))  # inside risk's price collar
    resting = order(stack, type="limit", amount="0.001", price=str(below), client_order_id=_cid())
    assert resting.status_code == 201 and resting.json()["status"] == "open"
    halt = httpx.post(
        stack.url("risk") + "/halt",
        json={"reason": "drill", "flatten": True},
        headers=stack.auth(),
        timeout=60,
    )
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
        refused = order(stack, amount="0.001", client_order_id=_cid())
        assert refused.status_code == 409 and "drill" in refused.json()["detail"]
        for name in ("risk", "execution"):
            stack.volex("restart", name)
        stack.wait_for(stack.all_healthy, timeout=90, what="fleet back after restarts")
        assert stack.get("risk", "/state").json()["state"] == "HALTED"
        assert order(stack, amount="0.001", client_order_id=_cid()).status_code == 409
    finally:
        httpx.post(
            stack.url("risk") + "/resume",
            json={"reason": "drill over"},
            headers=stack.auth(),
            timeout=30,
        )
    assert order(stack, amount="0.001", client_order_id=_cid()).status_code == 201


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


def test_brackets_close_the_position_once_when_a_leg_fires(stack: Stack) -> None:
    stack.get("execution", "/positions/sim")
    httpx.post(
        stack.url("execution") + "/positions/sim/close",
        json={"symbol": "ETH/USDT"},
        headers=stack.auth(),
        timeout=30,
    )
    mid = Decimal(stack.get("execution", "/ticker/sim/ETH-USDT").json()["last"])
    # Legs a hair either side of the price: one of them fires within seconds.
    stop, target = (
        (mid * Decimal("0.9998")).quantize(Decimal("0.01")),
        (mid * Decimal("1.0002")).quantize(Decimal("0.01")),
    )
    cid = _cid("brk")
    placed = order(
        stack,
        symbol="ETH/USDT",
        amount="0.01",
        stop_loss=str(stop),
        take_profit=str(target),
        client_order_id=cid,
    )
    assert placed.status_code == 201, placed.text
    armed = {p["symbol"]: p for p in stack.get("execution", "/positions/sim").json()}
    assert "ETH/USDT" in armed

    def closed() -> bool:
        return "ETH/USDT" not in {
            p["symbol"] for p in stack.get("execution", "/positions/sim").json()
        }

    stack.wait_for(closed, timeout=120, what="a bracket leg to fire and close the position")
    with stack.engine().connect() as conn:
        exits = conn.execute(
            text(
                "SELECT role, status FROM orders WHERE symbol = 'ETH/USDT'"
                " AND role IN ('stop_loss', 'take_profit', 'trailing_stop') AND id > :i"
            ),
            {"i": placed.json()["id"]},
        ).all()
        armed_after = conn.execute(
            text(
                "SELECT stop_loss, take_profit FROM positions WHERE exchange = 'sim'"
                " AND symbol = 'ETH/USDT'"
            )
        ).one()
    assert len(exits) == 1 and exits[0].status == "filled"  # closed once
    assert armed_after == (None, None)  # the other leg is gone with it


def test_a_refused_order_keeps_its_client_id(stack: Stack) -> None:
    mid = Decimal(stack.get("execution", "/ticker/sim/BTC-USDT").json()["last"])
    cid = _cid("bad-stop")
    above = str((mid * Decimal("1.5")).quantize(Decimal("0.01")))
    first = order(stack, amount="0.001", stop_loss=above, client_order_id=cid)
    assert first.status_code == 422 and "stop_loss" in first.json()["detail"]
    again = order(stack, amount="0.001", stop_loss=above, client_order_id=cid)
    assert again.status_code == 200, again.text  # the same (rejected) order, never a new one
    assert again.json()["status"] == "rejected" and "stop_loss" in again.json()["reason"]


def test_executions_own_gate_stops_an_order_risk_approved(stack: Stack) -> None:
    """Risk still says ACTIVE, but a halt reached execution first (the race between an
    approval and the kill switch): the approved order must not leave."""
    apply = stack.url("execution") + "/trading-state/apply"
    halted = httpx.post(
        apply, json={"state": "HALTED", "reason": "gate drill"}, headers=stack.auth(), timeout=30
    )
    assert halted.status_code == 200, halted.text
    try:
        refused = order(stack, amount="0.001", client_order_id=_cid("gate"))
        assert refused.status_code == 409 and "gate drill" in refused.json()["detail"]
        assert refused.json()["detail"].startswith("trading is HALTED")
    finally:
        httpx.post(
            apply,
            json={"state": "ACTIVE", "reason": "drill over"},
            headers=stack.auth(),
            timeout=30,
        )
    assert order(stack, amount="0.001", client_order_id=_cid("gate")).status_code == 201


def test_an_audit_event_compliance_refuses_does_not_hold_back_the_trail(stack: Stack) -> None:
    """Execution's outbox delivers in order. An event compliance refuses (here a fill
    without a fill's fields) is set aside with the reason, and the events queued behind
    it still reach compliance."""
    import json

    tag = _cid("aside")
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
