"""Claims (the order row and its `order.requested` event, committed before anything else
happens to an order), several in one statement, against the real database."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from agents.execution import repository as repo
from agents.execution.service import OrderService, _requested
from common.db import LoopDatabase
from common.errors import Conflict, ServiceUnavailable
from common.models import Order
from tests.agents.execution.fleet import new_cid
from tests.conftest import Stack

# Claims made through the repository queue their events under this name: ours to read,
# no relay sends them. (Through OrderService they are execution's, relayed to compliance
# as any; the order rows are deleted after each test.)
SERVICE = "test-claims"


def values(cid: str, **changes: Any) -> dict[str, Any]:
    return {
        "client_order_id": cid,
        "exchange": "sim",
        "symbol": "BTC/USDT",
        "side": "buy",
        "type": "market",
        "amount": Decimal("0.0001"),
        "price": None,
        "stop_price": None,
        "reduce_only": False,
        "stop_loss": None,
        "take_profit": None,
        "trailing_stop_pct": None,
        "role": "entry",
        "requested_by": "tester",
        **changes,
    }


def stored(stack: Stack, cids: list[str]) -> tuple[list[tuple[int, str]], list[str]]:
    """(id, client order id) of the order rows, and the subjects of the queued events."""
    with stack.engine().connect() as conn:
        rows = conn.execute(
            text("SELECT id, client_order_id FROM orders WHERE client_order_id = ANY(:c)"),
            {"c": cids},
        ).all()
        events = conn.execute(
            text("SELECT payload FROM event_outbox WHERE service = :s ORDER BY id"),
            {"s": SERVICE},
        ).scalars()
        subjects = [e["subject"] for e in events if e["subject"] in cids]
    return sorted((r.id, r.client_order_id) for r in rows), subjects


def forget(stack: Stack, cids: list[str]) -> None:
    with stack.engine().begin() as conn:
        conn.execute(text("DELETE FROM orders WHERE client_order_id = ANY(:c)"), {"c": cids})
        conn.execute(text("DELETE FROM event_outbox WHERE service = :s"), {"s": SERVICE})


def test_a_batch_claims_each_new_client_id_once_with_its_event(stack: Stack) -> None:
    """One statement for the batch: a client id taken before, or earlier in the same batch,
    gets None and no event; the others are claimed in the batch's order, padded to the
    ledger's scale as a row read back would be."""
    taken, first, second = new_cid("taken"), new_cid("first"), new_cid("second")
    batch = [values(first), values(taken), values(first, amount=Decimal(2)), values(second)]

    async def claim() -> list[Order | None]:
        db = LoopDatabase(stack.settings.resolved_database_url(), size=1)
        await db.open()
        try:
            async with db.connection() as connection:
                [earlier] = await repo.claim(
                    connection, [values(taken)], SERVICE, [_requested(values(taken), "x")]
                )
                assert earlier is not None
                events = [_requested(one, "tester") for one in batch]
                return await repo.claim(connection, batch, SERVICE, events)
        finally:
            await db.close()

    cids = [taken, first, second]
    try:
        claimed = asyncio.run(claim())
        rows, subjects = stored(stack, cids)
    finally:
        forget(stack, cids)
    assert [o is None for o in claimed] == [False, True, True, False]
    one, two = claimed[0], claimed[3]
    assert one is not None and two is not None
    assert (one.client_order_id, one.status, one.amount) == (first, "pending", Decimal("0.0001"))
    assert str(one.amount) == "0.000100000000000000"  # as the column holds it
    assert one.id < two.id and two.client_order_id == second
    assert [cid for _, cid in rows] == [taken, first, second]
    assert subjects == [taken, first, second]  # one event per claimed order, in order


def test_one_order_the_database_refuses_does_not_take_its_batch_with_it(stack: Stack) -> None:
    """The batch goes one by one after a refusal: the others are claimed, the refused
    one's caller gets the error, and nothing of it is stored."""
    ok, bad, also_ok = new_cid("ok"), new_cid("bad"), new_cid("ok")
    cids = [ok, bad, also_ok]
    too_long = "x" * 65  # requested_by is VARCHAR(64): the database refuses the row

    async def claim_together() -> list[Order | BaseException | None]:
        db = LoopDatabase(stack.settings.resolved_database_url(), size=2)
        await db.open()
        service = OrderService(None, db, None, None)  # type: ignore[arg-type]
        try:
            return await asyncio.gather(
                service.claim(values(ok), "tester"),
                service.claim(values(bad, requested_by=too_long), "tester"),
                service.claim(values(also_ok), "tester"),
                return_exceptions=True,
            )
        finally:
            await db.close()

    try:
        first, refused, third = asyncio.run(claim_together())
        rows, _ = stored(stack, cids)
    finally:
        forget(stack, cids)
    assert isinstance(first, Order) and first.client_order_id == ok
    assert isinstance(third, Order) and third.client_order_id == also_ok
    assert isinstance(refused, Exception) and not isinstance(refused, ServiceUnavailable)
    assert [cid for _, cid in rows] == [ok, also_ok]


def test_claims_fail_closed_when_the_database_is_out_of_reach(stack: Stack) -> None:
    db = LoopDatabase(stack.settings.resolved_database_url(), size=1)  # never opened
    service = OrderService(None, db, None, None)  # type: ignore[arg-type]
    with pytest.raises(ServiceUnavailable, match="database unavailable"):
        asyncio.run(service.claim(values(new_cid()), "tester"))


def test_legs_claimed_together_are_all_claimed_or_none(stack: Stack) -> None:
    """`claim_all` (a pair of protective legs): one client id taken → a 409 and the other
    leg is not stored either."""
    taken, fresh = new_cid("taken"), new_cid("leg")

    async def claim_legs() -> None:
        db = LoopDatabase(stack.settings.resolved_database_url(), size=1)
        await db.open()
        service = OrderService(None, db, None, None)  # type: ignore[arg-type]
        try:
            assert await service.claim(values(taken), "tester") is not None
            await service.claim_all([values(fresh), values(taken)], "tester")
        finally:
            await db.close()

    try:
        with pytest.raises(Conflict, match=taken):
            asyncio.run(claim_legs())
        rows, _ = stored(stack, [taken, fresh])
    finally:
        forget(stack, [taken, fresh])
    assert [cid for _, cid in rows] == [taken]
