"""One-cancels-the-other pairs in the sim: a stop_loss and a take_profit that protect
one position, hold its coins once, and leave with it together."""

from __future__ import annotations

from decimal import Decimal

import pytest

from agents.execution.exchange import (
    DuplicateOrder,
    ExchangeOrder,
    ExchangeTimeout,
    InsufficientFunds,
    InvalidOrder,
    SimExchange,
)
from tests.agents.execution.conftest import Clock, SimFactory

pytestmark = pytest.mark.anyio

D = Decimal
ETH = "ETH/USDT"


async def _long_eth(sim: SimExchange, amount: str = "1") -> tuple[Decimal, Decimal]:
    """Buy `amount` ETH; return a stop 1% under the bid and a target 1% over the ask."""
    await sim.create_order(ETH, "buy", "market", D(amount), client_order_id="entry")
    ticker = await sim.fetch_ticker(ETH)
    return (ticker.bid * D("0.99")).quantize(D("0.01")), (ticker.ask * D("1.01")).quantize(
        D("0.01")
    )


async def _pair(sim: SimExchange, stop: Decimal, target: Decimal) -> tuple[ExchangeOrder, ...]:
    return await sim.create_oco(ETH, "sell", D(1), stop, target, client_order_ids=("sl", "tp"))


async def test_a_pair_holds_the_coins_once(make_sim: SimFactory) -> None:
    sim = make_sim()
    stop, target = await _long_eth(sim)
    sl, tp = await _pair(sim, stop, target)
    assert (sl.type, sl.stop_price, sl.status) == ("stop_loss", stop, "open")
    assert (tp.type, tp.stop_price, tp.status) == ("take_profit", target, "open")
    eth = (await sim.fetch_balance())["ETH"]
    assert (eth.total, eth.used, eth.free) == (D(1), D(1), D(0))  # not 2: one reservation
    assert {o.id for o in await sim.fetch_open_orders(ETH)} == {sl.id, tp.id}
    with pytest.raises(InsufficientFunds, match="only 0 is free"):
        await sim.create_order(ETH, "sell", "market", D("0.5"), client_order_id="more")


async def test_the_first_leg_to_trigger_cancels_the_other(
    make_sim: SimFactory, clock: Clock
) -> None:
    sim = make_sim()
    stop, target = await _long_eth(sim)
    legs = {o.id for o in await _pair(sim, stop, target)}
    changed: dict[str, ExchangeOrder] = {}
    for _ in range(2000):
        clock.advance(900)
        changed.update({o.client_order_id: o for o in await sim.poll()})
        if changed:
            break
    assert set(changed) == {"sl", "tp"}  # the one that fired and the one it cancelled
    assert {o.id for o in changed.values()} == legs
    fired, other = sorted(changed.values(), key=lambda o: o.status != "closed")
    assert fired.status == "closed" and fired.filled == D(1)
    assert other.status == "canceled" and other.filled == 0
    assert other.reason == f"the other leg of its pair (order {fired.id}) triggered"
    eth = (await sim.fetch_balance())["ETH"]
    assert (eth.total, eth.used) == (D(0), D(0))
    assert await sim.fetch_open_orders() == []
    # What the pair did survives a restart, and nothing fires a second time.
    await sim.close()
    again = make_sim()
    clock.advance(86_400 * 30)
    assert await again.poll() == []
    assert (await again.fetch_order(other.id, ETH)).status == "canceled"
    assert len(await again.fetch_my_trades(ETH)) == len(fired.trades) + 1  # + the entry


@pytest.mark.parametrize("which", [0, 1])
async def test_cancelling_either_leg_cancels_both(make_sim: SimFactory, which: int) -> None:
    sim = make_sim()
    stop, target = await _long_eth(sim)
    legs = await _pair(sim, stop, target)
    cancelled = await sim.cancel_order(legs[which].id, ETH)
    assert cancelled.status == "canceled"
    other = await sim.fetch_order(legs[1 - which].id, ETH)
    assert other.status == "canceled" and f"order {legs[which].id}" in (other.reason or "")
    assert (await sim.fetch_balance())["ETH"].free == D(1)
    with pytest.raises(InvalidOrder, match="nothing to cancel"):
        await sim.cancel_order(other.id, ETH)
    await sim.close()
    reopened = make_sim()
    assert await reopened.fetch_open_orders() == []
    assert (await reopened.fetch_balance())["ETH"].used == 0


async def test_a_bad_pair_is_refused_whole(make_sim: SimFactory) -> None:
    sim = make_sim()
    stop, target = await _long_eth(sim)
    before = await sim.fetch_balance()
    refusals: list[tuple[type[Exception], str, tuple[Decimal, Decimal, Decimal]]] = [
        (InvalidOrder, "would trigger immediately", (D(1), stop, stop - D(100))),
        (InvalidOrder, "would trigger immediately", (D(1), target, target + D(100))),
        (InsufficientFunds, "needs 2", (D(2), stop, target)),
        (InvalidOrder, "amount step", (D("0.00001"), stop, target)),
    ]
    for error, message, (amount, sl_price, tp_price) in refusals:
        with pytest.raises(error, match=message):
            await sim.create_oco(
                ETH, "sell", amount, sl_price, tp_price, client_order_ids=("a", "b")
            )
    with pytest.raises(InvalidOrder, match="its own client_order_id"):
        await sim.create_oco(ETH, "sell", D(1), stop, target, client_order_ids=("a", "a"))
    with pytest.raises(DuplicateOrder, match="already used"):
        await sim.create_oco(ETH, "sell", D(1), stop, target, client_order_ids=("a", "entry"))
    assert await sim.fetch_open_orders() == []
    assert await sim.fetch_balance() == before
    assert await sim.fetch_order_by_client_id("a", ETH) is None


async def test_a_pair_accepted_before_a_timeout_is_found_by_client_id(
    make_sim: SimFactory,
) -> None:
    sim = make_sim()
    stop, target = await _long_eth(sim)
    sim.inject_fault("timeout_after_accept", "create_oco")
    with pytest.raises(ExchangeTimeout, match="accepted"):
        await _pair(sim, stop, target)
    found = [await sim.fetch_order_by_client_id(cid, ETH) for cid in ("sl", "tp")]
    assert [o.status if o else None for o in found] == ["open", "open"]
    with pytest.raises(DuplicateOrder):
        await _pair(sim, stop, target)
