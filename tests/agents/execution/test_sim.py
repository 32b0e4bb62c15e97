"""The sim's paper account: orders, fills, fees, reservations, faults and persistence."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest

from agents.execution.exchange import (
    BadSymbol,
    Balance,
    Bar,
    DuplicateOrder,
    ExchangeError,
    ExchangeOrder,
    ExchangeTimeout,
    Fees,
    InsufficientFunds,
    InvalidOrder,
    MarketSpec,
    NetworkError,
    OrderNotFound,
    SimExchange,
)
from agents.execution.exchange.sim_markets import DEFAULT_MARKETS
from agents.execution.exchange.sim_prices import MINUTE_MS
from tests.agents.execution.conftest import Clock, SimFactory

pytestmark = pytest.mark.anyio

D = Decimal
FEE = D("0.001")
USDT = D(10000)


async def first_cross(
    sim: SimExchange, symbol: str, since_ms: int, level: float, below: bool
) -> Bar:
    """The first closed 1m candle from `since_ms` that reached `level` (from candles
    alone, independently of how the sim fills orders)."""
    for page in range(30):
        start = since_ms + page * 5000 * MINUTE_MS
        for bar in await sim.fetch_ohlcv(symbol, "1m", since_ms=start, limit=5000):
            if (bar.low <= level) if below else (bar.high >= level):
                return bar
    raise AssertionError("price never reached the level in the window")


async def until_done(
    sim: SimExchange, clock: Clock, order: ExchangeOrder, step_s: float
) -> ExchangeOrder:
    """Move the clock in steps until the order is no longer open."""
    for _ in range(2000):
        clock.advance(step_s)
        current = await sim.fetch_order(order.id, order.symbol)
        if current.status != "open":
            return current
    raise AssertionError("order never left 'open'")


async def test_market_buy_and_sell_move_balances_by_price_and_fee(make_sim: SimFactory) -> None:
    sim = make_sim()
    book = await sim.fetch_order_book("BTC/USDT", 3)
    ask, bid = book.asks[0][0], book.bids[0][0]
    assert book.asks[0][1] > D("0.01")  # fits on the best level: no slippage

    buy = await sim.create_order("BTC/USDT", "buy", "market", D("0.01"), client_order_id="b1")
    assert (buy.status, buy.filled, buy.remaining) == ("closed", D("0.01"), 0)
    assert buy.average == ask and buy.price is None
    assert len(buy.trades) == 1
    trade = buy.trades[0]
    assert (trade.price, trade.amount, trade.taker, trade.fee_currency) == (
        ask,
        D("0.01"),
        True,
        "USDT",
    )
    assert trade.fee == D("0.01") * ask * FEE == buy.fee
    balance = await sim.fetch_balance()
    usdt_after_buy = USDT - D("0.01") * ask - D("0.01") * ask * FEE
    assert balance["USDT"].total == usdt_after_buy == balance["USDT"].free
    assert balance["BTC"].total == D("0.01") and balance["BTC"].used == 0

    sell = await sim.create_order("BTC/USDT", "sell", "market", D("0.004"), client_order_id="s1")
    assert sell.average == bid
    balance = await sim.fetch_balance()
    assert balance["USDT"].total == usdt_after_buy + D("0.004") * bid * (1 - FEE)
    assert balance["BTC"].total == D("0.006")
    trades = await sim.fetch_my_trades("BTC/USDT")
    assert [t.order_id for t in trades] == [buy.id, sell.id]


async def test_large_market_order_walks_the_book_with_partial_fills(make_sim: SimFactory) -> None:
    sim = make_sim(starting_balances={"USDT": D(1_000_000)})
    book = await sim.fetch_order_book("ETH/USDT", 10)
    levels = book.asks
    amount = levels[0][1] + levels[1][1] + levels[2][1] // 2
    amount -= amount % D("0.0001")
    order = await sim.create_order("ETH/USDT", "buy", "market", amount, client_order_id="big")
    assert order.status == "closed" and order.filled == amount
    got = [(t.price, t.amount) for t in order.trades]
    assert got == [levels[0], levels[1], (levels[2][0], amount - levels[0][1] - levels[1][1])]
    assert got[0][0] < got[1][0] < got[2][0]  # each level worse than the last
    cost = sum((p * a for p, a in got), D(0))
    assert order.cost == cost and order.fee == cost * FEE
    assert order.average is not None and order.average > levels[0][0]  # slippage
    assert (await sim.fetch_balance())["USDT"].total == D(1_000_000) - cost * (1 + FEE)


async def test_market_order_larger_than_the_book_expires_the_rest(make_sim: SimFactory) -> None:
    sim = make_sim(starting_balances={"USDT": D(10**9), "SOL": D(10**6)})
    order = await sim.create_order("SOL/USDT", "sell", "market", D(500_000), client_order_id="x")
    assert order.status == "expired"
    assert 0 < order.filled < D(500_000) and order.remaining == D(500_000) - order.filled
    assert order.reason is not None and "ran out" in order.reason
    prices = [t.price for t in order.trades]
    assert prices == sorted(prices, reverse=True)
    balance = await sim.fetch_balance()
    assert balance["SOL"].total == D(10**6) - order.filled and balance["SOL"].used == 0


STRICT = MarketSpec(
    symbol="DOT/USDT",
    amount_step=D("0.01"),
    price_step=D("0.001"),
    min_amount=D("1"),
    min_notional=D("10"),
    model=DEFAULT_MARKETS[2].model,
    level_notional=D("1000"),
)
BTC, BUY, MKT = "BTC/USDT", "buy", "market"
REJECTIONS: list[tuple[tuple[object, ...], type[Exception], str]] = [
    ((BTC, BUY, MKT, D("0.000015")), InvalidOrder, "multiple of BTC/USDT amount step 0.00001"),
    ((BTC, BUY, "limit", D("0.001"), D("40000.005")), InvalidOrder, "price step 0.01"),
    (("DOT/USDT", BUY, MKT, D("0.5")), InvalidOrder, "below DOT/USDT minimum amount 1"),
    (("SOL/USDT", BUY, "limit", D("0.01"), D(100)), InvalidOrder, "minimum notional 5 USDT"),
    (("DOGE/USDT", BUY, MKT, D(1)), BadSymbol, "unknown symbol 'DOGE/USDT'"),
    ((BTC, BUY, MKT, D(1)), InsufficientFunds, "only 10000 is free"),
    ((BTC, "sell", MKT, D("0.01")), InsufficientFunds, "needs 0.01 BTC"),
    ((BTC, BUY, MKT, 0.01), InvalidOrder, "must be a Decimal"),
    ((BTC, BUY, MKT, D(-1)), InvalidOrder, "must be a positive number"),
    ((BTC, "hold", MKT, D("0.01")), InvalidOrder, "side 'hold' is not one of buy, sell"),
    ((BTC, BUY, "twap", D("0.01")), InvalidOrder, "type 'twap'"),
    ((BTC, BUY, MKT, D("0.01"), D(40000)), InvalidOrder, "market orders take no price"),
    ((BTC, BUY, "limit", D("0.01")), InvalidOrder, "limit orders need a price"),
    ((BTC, "sell", "stop_loss", D("0.01")), InvalidOrder, "need stop_price"),
]


@pytest.mark.parametrize(("args", "error", "reason"), REJECTIONS)
async def test_rejections_name_the_reason_and_change_nothing(
    make_sim: SimFactory, args: tuple[object, ...], error: type[Exception], reason: str
) -> None:
    sim = make_sim(markets=(*DEFAULT_MARKETS, STRICT))
    with pytest.raises(error) as caught:
        await sim.create_order(*args, client_order_id="r1")  # type: ignore[arg-type]
    assert reason in str(caught.value)
    assert await sim.fetch_order_by_client_id("r1", str(args[0])) is None
    assert await sim.fetch_open_orders() == [] and await sim.fetch_my_trades() == []
    assert (await sim.fetch_balance())["USDT"] == Balance(free=USDT, used=D(0), total=USDT)


async def test_stops_that_would_fire_at_once_and_bad_client_ids_are_refused(
    make_sim: SimFactory,
) -> None:
    sim = make_sim()
    ticker = await sim.fetch_ticker(BTC)
    cases = [
        ("stop_loss", "buy", ticker.ask - 100),
        ("stop_loss", "sell", ticker.bid + 100),
        ("take_profit", "sell", ticker.bid - 100),
        ("take_profit", "buy", ticker.ask + 100),
    ]
    for kind, side, stop in cases:
        with pytest.raises(InvalidOrder, match="would trigger immediately"):
            await sim.create_order(
                BTC, side, kind, D("0.001"), stop_price=stop, client_order_id="s"
            )
    for bad in ("has space", "", "x" * 65):
        with pytest.raises(InvalidOrder, match="client_order_id"):
            await sim.create_order(BTC, BUY, MKT, D("0.001"), client_order_id=bad)
    assert await sim.fetch_open_orders() == []


async def test_limit_order_rests_then_fills_as_maker_when_the_price_crosses(
    make_sim: SimFactory, clock: Clock
) -> None:
    maker, taker = D("0.0002"), D("0.0007")
    sim = make_sim(fees=Fees(maker=maker, taker=taker))
    created_ms = int(clock.t * 1000)
    bid = (await sim.fetch_ticker("BTC/USDT")).bid
    limit = (bid * D("0.996")).quantize(D("0.01"))
    order = await sim.create_order(
        "BTC/USDT", "buy", "limit", D("0.02"), limit, client_order_id="l"
    )
    assert (order.status, order.filled, order.trades) == ("open", 0, [])
    reserved = D("0.02") * limit * (1 + taker)  # the larger fee, in case it fills as taker
    balance = await sim.fetch_balance()
    assert balance["USDT"].used == reserved and balance["USDT"].free == USDT - reserved
    assert [o.id for o in await sim.fetch_open_orders("BTC/USDT")] == [order.id]

    done = await until_done(sim, clock, order, step_s=3 * 3600)  # big steps: the path decides
    assert done.status == "closed" and done.remaining == 0
    (trade,) = done.trades
    assert (trade.price, trade.amount, trade.taker) == (limit, D("0.02"), False)
    assert trade.fee == D("0.02") * limit * maker
    crossed = await first_cross(sim, "BTC/USDT", created_ms, float(limit), below=True)
    assert crossed.ts <= trade.timestamp <= crossed.ts + MINUTE_MS  # when it happened, not now
    assert trade.timestamp < clock.t * 1000
    balance = await sim.fetch_balance()
    assert balance["USDT"].total == USDT - D("0.02") * limit * (1 + maker)
    assert balance["USDT"].used == 0 and balance["BTC"].total == D("0.02")


async def test_marketable_limit_fills_what_the_book_allows_and_rests_the_rest(
    make_sim: SimFactory,
) -> None:
    sim = make_sim(starting_balances={"USDT": D(100_000)})
    asks = (await sim.fetch_order_book("BTC/USDT", 5)).asks
    limit = asks[1][0]
    amount = asks[0][1] + asks[1][1] + D("0.05")
    order = await sim.create_order("BTC/USDT", "buy", "limit", amount, limit, client_order_id="m")
    assert order.status == "open"
    assert [(t.price, t.amount, t.taker) for t in order.trades] == [
        (asks[0][0], asks[0][1], True),
        (asks[1][0], asks[1][1], True),
    ]
    assert order.remaining == D("0.05")
    spent = sum((t.price * t.amount for t in order.trades), D(0)) * (1 + FEE)
    balance = await sim.fetch_balance()
    assert balance["USDT"].used == D("0.05") * limit * (1 + FEE)
    assert balance["USDT"].total == D(100_000) - spent


async def test_stop_loss_triggers_and_sells_at_the_market_then(
    make_sim: SimFactory, clock: Clock, tmp_path: object
) -> None:
    sim = make_sim()
    await sim.create_order("ETH/USDT", "buy", "market", D("1"), client_order_id="entry")
    created_ms = int(clock.t * 1000)
    bid = (await sim.fetch_ticker("ETH/USDT")).bid
    stop = (bid * D("0.99")).quantize(D("0.01"))
    order = await sim.create_order(
        "ETH/USDT", "sell", "stop_loss", D("1"), stop_price=stop, client_order_id="stop"
    )
    assert order.status == "open" and order.stop_price == stop
    assert (await sim.fetch_balance())["ETH"].used == D("1")
    done = await until_done(sim, clock, order, step_s=1800)
    assert done.status == "closed"
    trade = done.trades[0]
    assert trade.taker and trade.price < stop  # sold at the bid once the stop was hit
    crossed = await first_cross(sim, "ETH/USDT", created_ms, float(stop), below=True)
    assert crossed.ts <= trade.timestamp <= crossed.ts + MINUTE_MS
    # The fills are the bids of the book at the trigger time, best first.
    replay = make_sim("replay", clock=Clock((trade.timestamp + 0.5) / 1000))
    bids = (await replay.fetch_order_book("ETH/USDT", 5)).bids
    fills = [(t.price, t.amount) for t in done.trades]
    assert fills[0] == bids[0] and fills[1] == (bids[1][0], D(1) - bids[0][1])
    assert all(t.timestamp == trade.timestamp for t in done.trades)
    assert done.fee == sum((p * a for p, a in fills), D(0)) * FEE
    balance = await sim.fetch_balance()
    assert balance["ETH"].total == 0 and balance["ETH"].used == 0


async def test_cancel_releases_what_the_order_held(make_sim: SimFactory) -> None:
    sim = make_sim()
    bid = (await sim.fetch_ticker("SOL/USDT")).bid
    price = (bid * D("0.9")).quantize(D("0.01"))
    order = await sim.create_order("SOL/USDT", "buy", "limit", D("10"), price, client_order_id="c")
    assert (await sim.fetch_balance())["USDT"].used == D(10) * price * (1 + FEE)
    canceled = await sim.cancel_order(order.id, "SOL/USDT")
    assert canceled.status == "canceled" and canceled.filled == 0
    balance = await sim.fetch_balance()
    assert balance["USDT"].used == 0 and balance["USDT"].free == USDT
    assert await sim.fetch_open_orders() == []
    with pytest.raises(InvalidOrder, match="is canceled"):
        await sim.cancel_order(order.id, "SOL/USDT")
    with pytest.raises(OrderNotFound):
        await sim.cancel_order("999", "SOL/USDT")
    with pytest.raises(OrderNotFound):
        await sim.fetch_order(order.id, "BTC/USDT")  # right id, wrong symbol


async def test_duplicate_client_order_id_never_creates_a_second_order(
    make_sim: SimFactory,
) -> None:
    sim = make_sim()
    first = await sim.create_order("BTC/USDT", "buy", "market", D("0.001"), client_order_id="k1")
    balance = await sim.fetch_balance()
    for args in (("BTC/USDT", "buy", "market", D("0.001")), ("ETH/USDT", "sell", "market", D("1"))):
        with pytest.raises(DuplicateOrder, match=f"already used by order {first.id}") as caught:
            await sim.create_order(*args, client_order_id="k1")
        assert caught.value.existing_order_id == first.id
    assert len(await sim.fetch_my_trades()) == 1
    assert await sim.fetch_balance() == balance
    await sim.close()
    reopened = make_sim()
    with pytest.raises(DuplicateOrder):
        await reopened.create_order("BTC/USDT", "buy", "market", D("0.001"), client_order_id="k1")


async def test_timeout_after_accept_leaves_the_order_findable_by_client_id(
    make_sim: SimFactory,
) -> None:
    sim = make_sim()
    sim.inject_fault("timeout_after_accept")
    with pytest.raises(ExchangeTimeout) as caught:
        await sim.create_order("BTC/USDT", "buy", "market", D("0.002"), client_order_id="t1")
    assert not caught.value.retryable
    found = await sim.fetch_order_by_client_id("t1", "BTC/USDT")
    assert found is not None and found.status == "closed" and found.filled == D("0.002")
    await sim.close()  # durable: the crash-equivalent reopen still has it
    again = make_sim()
    assert await again.fetch_order_by_client_id("t1", "BTC/USDT") == found
    # The fault fired once; the next create goes through normally.
    await again.create_order("BTC/USDT", "buy", "market", D("0.002"), client_order_id="t2")


async def test_network_error_and_reject_leave_nothing_behind(make_sim: SimFactory) -> None:
    sim = make_sim()
    sim.inject_fault("network_error", times=2)
    for _ in range(2):
        with pytest.raises(NetworkError) as caught:
            await sim.create_order("BTC/USDT", "buy", "market", D("0.002"), client_order_id="n")
        assert caught.value.retryable
    assert await sim.fetch_order_by_client_id("n", "BTC/USDT") is None
    sim.inject_fault("reject")
    with pytest.raises(InvalidOrder, match="injected reject"):
        await sim.create_order("BTC/USDT", "buy", "market", D("0.002"), client_order_id="n")
    assert await sim.fetch_order_by_client_id("n", "BTC/USDT") is None
    assert (await sim.fetch_balance())["USDT"].total == USDT
    sim.inject_fault("network_error", op="fetch_balance", times=5)
    sim.clear_faults()
    assert (await sim.fetch_balance())["USDT"].total == USDT
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.inject_fault("explode")
    with pytest.raises(ValueError, match="unknown operation"):
        sim.inject_fault("reject", op="withdraw")


async def test_every_call_waits_the_latency(make_sim: SimFactory) -> None:
    loop = asyncio.get_running_loop()
    slow = make_sim(latency_ms=150)
    started = loop.time()
    await slow.fetch_ticker("BTC/USDT")
    await slow.fetch_balance()
    assert loop.time() - started >= 0.3  # 150 ms each
    fast = make_sim("fast")
    started = loop.time()
    await fast.fetch_ticker("BTC/USDT")
    assert loop.time() - started < 0.15


async def test_armed_faults_are_listed_until_used_up(make_sim: SimFactory) -> None:
    sim = make_sim()
    sim.inject_fault("timeout_after_accept")
    sim.inject_fault("reject", times=2)
    sim.inject_fault("hang_after_accept", op="cancel_order", hang_s=3)
    assert [(f.kind, f.op, f.times) for f in sim.armed_faults()] == [
        ("timeout_after_accept", "create_order", 1),
        ("reject", "create_order", 2),
        ("hang_after_accept", "cancel_order", 1),
    ]
    assert sim.armed_faults()[2].hang_s == 3
    with pytest.raises(ExchangeTimeout):
        await sim.create_order("BTC/USDT", "buy", "market", D("0.002"), client_order_id="f1")
    with pytest.raises(InvalidOrder):
        await sim.create_order("BTC/USDT", "buy", "market", D("0.002"), client_order_id="f2")
    assert [(f.kind, f.times) for f in sim.armed_faults()] == [
        ("reject", 1),
        ("hang_after_accept", 1),
    ]
    sim.armed_faults()[0].times = 99  # a copy: the list cannot re-arm the sim
    sim.clear_faults()
    assert sim.armed_faults() == []


async def test_faults_on_any_call(make_sim: SimFactory) -> None:
    sim = make_sim()
    sim.inject_fault("rate_limited", op="*")
    with pytest.raises(NetworkError) as caught:  # RateLimited is a NetworkError
        await sim.fetch_ticker("BTC/USDT")
    assert type(caught.value).__name__ == "RateLimited" and caught.value.retryable
    sim.inject_fault("auth_error", op="fetch_open_orders")
    await sim.fetch_ticker("BTC/USDT")
    with pytest.raises(ExchangeError, match="auth_error") as auth:
        await sim.fetch_open_orders()
    assert not auth.value.retryable


async def test_a_hang_lasts_as_long_as_asked(make_sim: SimFactory) -> None:
    sim = make_sim()
    sim.inject_fault("hang_after_accept", hang_s=0.2)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ExchangeTimeout):
        await sim.create_order("BTC/USDT", "buy", "market", D("0.002"), client_order_id="h1")
    assert 0.2 <= asyncio.get_running_loop().time() - started < 5
    found = await sim.fetch_order_by_client_id("h1", "BTC/USDT")
    assert found is not None and found.filled == D("0.002")  # accepted before the silence
    with pytest.raises(ValueError, match="hang_s must be positive"):
        sim.inject_fault("hang_after_accept", hang_s=0)


async def test_state_survives_restart(make_sim: SimFactory, clock: Clock, tmp_path: object) -> None:
    sim = make_sim()
    await sim.create_order("BTC/USDT", "buy", "market", D("0.05"), client_order_id="a")
    bid = (await sim.fetch_ticker("BTC/USDT")).bid
    limit = (bid * D("0.997")).quantize(D("0.01"))
    resting = await sim.create_order(BTC, BUY, "limit", D("0.01"), limit, client_order_id="b")
    far = (bid * D("0.5")).quantize(D("0.01"))
    stop = await sim.create_order(
        BTC, "sell", "stop_loss", D("0.05"), stop_price=far, client_order_id="c"
    )
    canceled = await sim.cancel_order(stop.id, "BTC/USDT")
    before = (await sim.fetch_balance(), await sim.fetch_my_trades(), await sim.fetch_open_orders())
    orders = [await sim.fetch_order(o, "BTC/USDT") for o in ("1", resting.id, canceled.id)]
    await sim.close()
    with pytest.raises(ExchangeError, match="closed"):
        await sim.fetch_balance()

    again = make_sim()
    after = (
        await again.fetch_balance(),
        await again.fetch_my_trades(),
        await again.fetch_open_orders(),
    )
    assert after == before
    assert [await again.fetch_order(o.id, "BTC/USDT") for o in orders] == orders
    # The resting order keeps working after the restart.
    done = await until_done(again, clock, resting, step_s=6 * 3600)
    assert done.status == "closed" and not done.trades[0].taker


async def test_state_file_is_plain_json_and_guarded(make_sim: SimFactory, tmp_path: object) -> None:
    sim = make_sim()
    order = await sim.create_order("XRP/USDT", "buy", "market", D("100"), client_order_id="j")
    data = json.loads((sim._store.path).read_text())
    assert data["orders"][0]["client_order_id"] == "j" and data["orders"][0]["id"] == order.id
    assert D(data["balances"]["XRP"]) == D("100")
    with pytest.raises(ExchangeError, match="in use by another SimExchange"):
        make_sim()
    await sim.close()
    with pytest.raises(ExchangeError, match="created with seed 42"):
        make_sim(seed=43)


async def test_take_profit_and_stop_limit_orders(make_sim: SimFactory, clock: Clock) -> None:
    sim = make_sim(starting_balances={"USDT": D(20_000), "SOL": D(50)})
    ticker = await sim.fetch_ticker("SOL/USDT")
    target = (ticker.ask * D("1.01")).quantize(D("0.01"))
    take = await sim.create_order(
        "SOL/USDT", "sell", "take_profit", D(20), None, target, client_order_id="tp"
    )
    # A stop buy with a limit: once the price rises to the stop, buy at no more than limit.
    stop = (ticker.ask * D("1.005")).quantize(D("0.01"))
    limit = stop + D("0.5")
    stop_limit = await sim.create_order(
        "SOL/USDT", "buy", "stop_loss", D(30), limit, stop, client_order_id="sl"
    )
    balance = await sim.fetch_balance()
    assert balance["SOL"].used == D(20)
    assert balance["USDT"].used == D(30) * limit * (1 + FEE)  # a stop-limit holds its limit
    changed: dict[str, ExchangeOrder] = {}
    for _ in range(2000):
        clock.advance(900)
        changed.update({o.client_order_id: o for o in await sim.poll()})
        if {"tp", "sl"} <= {k for k, o in changed.items() if o.status != "open"}:
            break
    tp, sl = changed["tp"], changed["sl"]
    assert tp.status == "closed" and tp.trades[0].price >= target * D("0.999")
    assert all(t.taker for t in tp.trades)
    assert sl.status == "closed" and all(t.price <= limit for t in sl.trades)
    assert (
        sl.trades[0].timestamp
        >= (await first_cross(sim, "SOL/USDT", sl.timestamp, float(stop), False)).ts
    )
    assert (await sim.fetch_open_orders()) == []
    balance = await sim.fetch_balance()
    sol = D(50) - D(20) + D(30)
    assert balance["SOL"].total == sol and balance["USDT"].used == 0
    usdt = D(20_000) + sum((t.price * t.amount * (1 - FEE) for t in tp.trades), D(0))
    usdt -= sum((t.price * t.amount + t.fee for t in sl.trades), D(0))
    assert balance["USDT"].total == usdt
    assert take.id != stop_limit.id


async def test_stop_buy_at_market_holds_a_slippage_buffer(make_sim: SimFactory) -> None:
    sim = make_sim()
    ask = (await sim.fetch_ticker("ETH/USDT")).ask
    stop = (ask * D("1.02")).quantize(D("0.01"))
    await sim.create_order("ETH/USDT", "buy", "stop_loss", D(1), None, stop, client_order_id="b")
    used = (await sim.fetch_balance())["USDT"].used
    assert used == stop * D("1.02") * (1 + FEE)
    with pytest.raises(InsufficientFunds):  # what is held is not free for another order
        await sim.create_order("ETH/USDT", "buy", "market", D(4), client_order_id="c")


async def test_a_partly_filled_limit_keeps_resting_until_the_price_trades_through(
    make_sim: SimFactory, clock: Clock
) -> None:
    sim = make_sim(starting_balances={"USDT": D(100_000)})
    asks = (await sim.fetch_order_book("BTC/USDT", 2)).asks
    order = await sim.create_order(
        BTC, BUY, "limit", asks[0][1] + D("0.1"), asks[0][0], client_order_id="p"
    )
    assert order.status == "open" and order.filled == asks[0][1]
    assert (await sim.poll()) == []  # the rest waits: the price sits above it
    done = await until_done(sim, clock, order, step_s=600)
    assert done.filled == done.amount and [t.taker for t in done.trades] == [True, False]
    assert done.trades[1].price == asks[0][0] and done.trades[1].amount == D("0.1")
    assert done.average == asks[0][0]


async def test_journal_replays_and_compacts_to_the_same_state(
    make_sim: SimFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.execution.exchange import sim_state

    monkeypatch.setattr(sim_state, "COMPACT_EVERY", 7)
    sim = make_sim("journal")
    for i in range(20):  # crosses the compaction point twice
        side = "buy" if i % 2 == 0 else "sell"
        await sim.create_order(BTC, side, "market", D("0.001"), client_order_id=f"j{i}")
    before = (await sim.fetch_balance(), await sim.fetch_my_trades(), await sim.fetch_open_orders())
    await sim.close()
    again = make_sim("journal")
    assert (
        await again.fetch_balance(),
        await again.fetch_my_trades(),
        await again.fetch_open_orders(),
    ) == before
    assert (await again.fetch_order_by_client_id("j19", BTC)) is not None
    with pytest.raises(InvalidOrder):  # the client ids came back too: still no duplicates
        await again.create_order(BTC, "buy", "market", D("0.001"), client_order_id="j3")


async def test_resting_orders_closed_between_saves_stay_closed_after_replays(
    make_sim: SimFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger tracks its open orders without scanning every order ever placed: an
    order cancelled after its save, across journal replays and a compaction, is gone
    from the open ones and from what is held, and the others are still open."""
    from agents.execution.exchange import sim_state

    monkeypatch.setattr(sim_state, "COMPACT_EVERY", 4)
    sim = make_sim("resting")
    bid = (await sim.fetch_ticker("SOL/USDT")).bid
    price = (bid * D("0.8")).quantize(D("0.01"))
    placed = [
        await sim.create_order("SOL/USDT", "buy", "limit", D(1), price, client_order_id=f"r{i}")
        for i in range(6)
    ]
    for i in range(3):  # market orders in between: new orders and trades in each save
        await sim.create_order(BTC, "buy", "market", D("0.001"), client_order_id=f"m{i}")
    await sim.cancel_order(placed[1].id, "SOL/USDT")
    trades = await sim.fetch_my_trades()
    await sim.close()

    again = make_sim("resting")
    assert [o.id for o in await again.fetch_open_orders()] == [
        placed[i].id for i in (0, 2, 3, 4, 5)
    ]
    await again.cancel_order(placed[4].id, "SOL/USDT")
    await again.cancel_order(placed[0].id, "SOL/USDT")
    await again.close()

    third = make_sim("resting")
    still = [placed[i].id for i in (2, 3, 5)]
    assert [o.id for o in await third.fetch_open_orders()] == still
    assert (await third.fetch_balance())["USDT"].used == 3 * price * (1 + FEE)
    assert await third.fetch_my_trades() == trades and len(trades) >= 3


async def test_the_snapshot_is_rewritten_less_often_as_the_account_grows(
    make_sim: SimFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rewriting the snapshot costs what the ledger holds, so it waits for as many journal
    lines as the snapshot has orders: rewrites grow with the log of the orders placed, not
    with their number, and the account replays the same across them and a restart."""
    from agents.execution.exchange import sim_state

    monkeypatch.setattr(sim_state, "COMPACT_EVERY", 2)
    rewrites: list[int] = []
    write = sim_state.StateStore.write

    def counted(store: sim_state.StateStore, text: str) -> None:
        rewrites.append(len(text))
        write(store, text)

    monkeypatch.setattr(sim_state.StateStore, "write", counted)
    sim = make_sim("growing")
    for i in range(40):
        side = "buy" if i % 2 == 0 else "sell"
        await sim.create_order(BTC, side, "market", D("0.001"), client_order_id=f"g{i}")
    before = (await sim.fetch_balance(), await sim.fetch_my_trades())
    await sim.close()
    assert 3 <= len(rewrites) <= 8, rewrites  # a fixed 2 rewrote it 15 times
    again = make_sim("growing")
    assert (await again.fetch_balance(), await again.fetch_my_trades()) == before
    for i in range(40, 50):  # the journal goes on after the restart, then compacts
        await again.create_order(BTC, "buy", "market", D("0.001"), client_order_id=f"g{i}")
    assert len(await again.fetch_my_trades()) == 50
    await again.close()
    third = make_sim("growing")
    assert len(await third.fetch_my_trades()) == 50


async def test_orders_placed_together_share_a_journal_write_and_return_once_on_disk(
    make_sim: SimFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changes staged while a write is under way go out together in the next one (group
    commit), and no call returns before its own change is on disk."""
    from agents.execution.exchange import sim_state

    written: list[str] = []
    write = sim_state.StateStore.write_staged

    def recorded(store: sim_state.StateStore, staged: list[tuple[bool, str]]) -> None:
        write(store, staged)
        written.append("".join(text for _, text in staged))

    monkeypatch.setattr(sim_state.StateStore, "write_staged", recorded)
    sim = make_sim("together")

    async def place(i: int) -> None:
        side = "buy" if i % 2 == 0 else "sell"
        await sim.create_order(BTC, side, "market", D("0.001"), client_order_id=f"t{i}")
        assert any(f'"t{i}"' in text for text in written), f"t{i} returned before its write"

    await asyncio.gather(*(place(i) for i in range(20)))
    assert len(written) < 20, len(written)  # some of them shared a write
    await sim.close()
    again = make_sim("together")
    for i in range(20):
        assert await again.fetch_order_by_client_id(f"t{i}", BTC) is not None


async def test_a_failed_journal_write_loses_nothing_once_the_next_one_succeeds(
    make_sim: SimFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the disk refuses a write, that call's outcome is unknown (its order may stand:
    the caller reconciles it by client id, as after a timeout) and the next write is a
    whole snapshot, so the account on disk is the account in memory again."""
    from agents.execution.exchange import sim_state

    write = sim_state.StateStore.write_staged
    failures = [OSError("disk full")]

    def flaky(store: sim_state.StateStore, staged: list[tuple[bool, str]]) -> None:
        if failures:
            raise failures.pop()
        write(store, staged)

    sim = make_sim("flaky")
    await sim.create_order(BTC, "buy", "market", D("0.002"), client_order_id="f0")
    monkeypatch.setattr(sim_state.StateStore, "write_staged", flaky)
    with pytest.raises(ExchangeTimeout, match="could not write its journal"):
        await sim.create_order(BTC, "buy", "market", D("0.001"), client_order_id="f1")
    await sim.create_order(BTC, "sell", "market", D("0.001"), client_order_id="f2")
    before = (await sim.fetch_balance(), await sim.fetch_my_trades())
    await sim.close()
    again = make_sim("flaky")
    assert (await again.fetch_balance(), await again.fetch_my_trades()) == before
    assert await again.fetch_order_by_client_id("f1", BTC) is not None
