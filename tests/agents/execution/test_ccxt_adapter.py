"""The CCXT adapter against a fake Binance on 127.0.0.1: real CCXT, real HTTP, our mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from agents.execution.exchange import (
    AuthenticationError,
    BadRequest,
    ExchangeOrder,
    ExchangeTimeout,
    InsufficientFunds,
    InvalidOrder,
    NetworkError,
    OrderNotFound,
    RateLimited,
)
from agents.execution.exchange.ccxt_adapter import CcxtExchange
from common.contracts import OrderSide, OrderType
from tests.agents.execution.fake_binance import NOW, FakeBinance

pytestmark = pytest.mark.anyio
D = Decimal


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    server = FakeBinance()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def binance(fake: FakeBinance) -> AsyncIterator[CcxtExchange]:
    exchange = CcxtExchange(
        "binance",
        api_key="test-key",
        secret="test-secret",
        api_host=fake.url,
        timeout_ms=1500,
        retry_delay=0.01,
    )
    yield exchange
    await exchange.close()


async def test_market_data_and_balance_come_back_as_our_types(
    binance: CcxtExchange, fake: FakeBinance
) -> None:
    markets = await binance.load_markets()
    btc = markets["BTC/USDT"]
    assert (btc.amount_step, btc.price_step) == (D("0.00001"), D("0.01"))
    assert (btc.min_amount, btc.min_notional) == (D("0.00001"), D(5))
    assert btc.rules().price_step == D("0.01")
    ticker = await binance.fetch_ticker("BTC/USDT")
    assert (ticker.bid, ticker.ask, ticker.last) == (D("42000.00"), D("42000.20"), D("42000.10"))
    book = await binance.fetch_order_book("BTC/USDT", 5)
    assert book.bids == [(D("42000.00"), D("1.5")), (D("41999.50"), D(3))]
    assert book.asks == [(D("42000.20"), D(2))]
    bars = await binance.fetch_ohlcv("BTC/USDT", "1m", since_ms=NOW, limit=3)
    assert [b.ts for b in bars] == [NOW, NOW + 60_000, NOW + 120_000]
    assert bars[0].high == 42010.5
    balance = await binance.fetch_balance()
    assert balance["BTC"].free == D("0.5") and balance["BTC"].used == D("0.1")
    assert balance["BTC"].total == D("0.6") and balance["USDT"].free == D("1000.25")
    # Only spot markets were loaded: no margin or currency calls.
    paths = {path for _, path, _ in fake.requests}
    assert not any(p.startswith("/sapi") for p in paths)


async def test_orders_carry_the_client_order_id_and_map_types(
    binance: CcxtExchange, fake: FakeBinance
) -> None:
    market = await binance.create_order(
        "BTC/USDT", "buy", "market", D("0.001"), client_order_id="volex-1"
    )
    assert market.status == "closed" and market.filled == D("0.001")
    assert market.client_order_id == "volex-1" and market.type == OrderType.market
    sent = fake.calls("POST", "/api/v3/order")[-1]
    assert sent["newClientOrderId"] == "volex-1" and sent["type"] == "MARKET"

    limit = await binance.create_order(
        "BTC/USDT", OrderSide.sell, OrderType.limit, D("0.002"), D("43000"), client_order_id="v2"
    )
    assert (limit.status, limit.price, limit.type) == ("open", D("43000"), OrderType.limit)
    stop = await binance.create_order(
        "BTC/USDT", "sell", "stop_loss", D("0.002"), D("39000"), D("39500"), client_order_id="v3"
    )
    sent = fake.calls("POST", "/api/v3/order")[-1]
    assert sent["type"] == "STOP_LOSS_LIMIT" and D(sent["stopPrice"]) == D("39500")
    assert stop.type == OrderType.stop_loss and stop.stop_price == D("39500")

    found = await binance.fetch_order_by_client_id("v2", "BTC/USDT")
    assert found is not None and found.id == limit.id
    assert await binance.fetch_order_by_client_id("nope", "BTC/USDT") is None
    assert {o.id for o in await binance.fetch_open_orders("BTC/USDT")} == {limit.id, stop.id}
    canceled = await binance.cancel_order(limit.id, "BTC/USDT")
    assert canceled.status == "canceled"
    trades = await binance.fetch_my_trades("BTC/USDT")
    assert trades[0].price == D("42000.20") and trades[0].fee == D("0.042") and trades[0].taker


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"code": -2010, "msg": "Account has insufficient balance for requested action."},
         InsufficientFunds),
        (400, {"code": -1013, "msg": "Filter failure: LOT_SIZE"}, InvalidOrder),
        (401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."},
         AuthenticationError),
        (429, {"code": -1003, "msg": "Too many requests."}, RateLimited),
    ],
)  # fmt: skip
async def test_refusals_on_create_map_to_our_errors_and_are_not_retried(
    binance: CcxtExchange, fake: FakeBinance, status: int, body: dict, error: type[Exception]
) -> None:
    await binance.load_markets()
    fake.fail("/api/v3/order", status, body)
    with pytest.raises(error) as caught:
        await binance.create_order("BTC/USDT", "buy", "market", D("0.001"), client_order_id="e")
    assert "binance" in str(caught.value)
    assert len(fake.calls("POST", "/api/v3/order")) == 1


async def test_requests_ccxt_cannot_express_are_refused_before_sending(
    binance: CcxtExchange, fake: FakeBinance
) -> None:
    for args, reason in [
        (("BTC/USDT", "buy", "twap", D(1)), "order type 'twap'"),
        (("BTC/USDT", "hold", "market", D(1)), "side 'hold'"),
        (("BTC/USDT", "sell", "take_profit", D(1)), "take_profit orders need stop_price"),
    ]:
        with pytest.raises(InvalidOrder, match=reason):
            await binance.create_order(*args, client_order_id="x")  # type: ignore[arg-type]
    assert fake.calls("POST", "/api/v3/order") == []


async def test_a_create_that_times_out_is_an_unknown_outcome_never_resent(
    binance: CcxtExchange, fake: FakeBinance
) -> None:
    await binance.load_markets()
    fake.fail("/api/v3/order", 200, {}, delay=3.0)  # longer than the 1.5 s client timeout
    with pytest.raises(ExchangeTimeout, match="reconcile by client order id"):
        await binance.create_order("BTC/USDT", "buy", "market", D("0.001"), client_order_id="t")
    assert len(fake.calls("POST", "/api/v3/order")) == 1
    fake.fail("/api/v3/order", 503, {"code": -1001, "msg": "Internal error; unable to process"})
    with pytest.raises(ExchangeTimeout):
        await binance.create_order("BTC/USDT", "buy", "market", D("0.001"), client_order_id="u")


async def test_reads_retry_network_errors_then_give_up(
    binance: CcxtExchange, fake: FakeBinance
) -> None:
    await binance.load_markets()
    fake.fail("/api/v3/account", 503, {"code": -1001, "msg": "Internal error"}, times=2)
    balance = await binance.fetch_balance()  # two failures, then an answer
    assert balance["USDT"].free == D("1000.25")
    assert len(fake.calls("GET", "/api/v3/account")) == 3
    fake.fail("/api/v3/account", 503, {"code": -1001, "msg": "Internal error"}, times=10)
    with pytest.raises(NetworkError):
        await binance.fetch_balance()
    assert len(fake.calls("GET", "/api/v3/account")) == 3 + 4
    with pytest.raises(OrderNotFound):  # not retried
        await binance.fetch_order("999", "BTC/USDT")
    assert len(fake.calls("GET", "/api/v3/order")) == 1


async def test_sandbox_and_unknown_exchanges() -> None:
    testnet = CcxtExchange("binance", sandbox=True)
    assert testnet.client.urls["api"]["public"].startswith("https://testnet.binance.vision")
    await testnet.close()
    with pytest.raises(BadRequest, match="no exchange 'nowhere'"):
        CcxtExchange("nowhere")


# --- one-cancels-the-other pairs on Binance (POST /api/v3/orderList/oco) -------------------
async def _pair(
    binance: CcxtExchange, tag: str, stop: str = "39000", target: str = "45000"
) -> tuple[ExchangeOrder, ExchangeOrder]:
    return await binance.create_oco(
        "BTC/USDT", "sell", D("0.002"), D(stop), D(target),
        client_order_ids=(f"sl-{tag}", f"tp-{tag}"),
    )  # fmt: skip


async def test_binance_places_a_long_s_brackets_as_one_oco_with_our_client_ids(
    binance: CcxtExchange, fake: FakeBinance
) -> None:
    assert binance.supports_oco
    stop, target = await binance.create_oco(
        "BTC/USDT", "sell", D("0.0123456"), D("39000.004"), D("45000.006"),
        client_order_ids=("sl-1", "tp-1"),
    )  # fmt: skip
    [sent] = fake.calls("POST", "/api/v3/orderList/oco")
    # Rounded to the market's steps as create_order is: the amount down, prices to a tick.
    assert sent["symbol"] == "BTCUSDT" and sent["side"] == "SELL"
    assert sent["quantity"] == "0.01234"
    assert (sent["aboveType"], sent["abovePrice"]) == ("LIMIT_MAKER", "45000.01")
    assert (sent["belowType"], sent["belowStopPrice"]) == ("STOP_LOSS", "39000.00")
    assert (sent["aboveClientOrderId"], sent["belowClientOrderId"]) == ("tp-1", "sl-1")
    assert sent["listClientOrderId"].startswith("oco-") and len(sent["listClientOrderId"]) <= 36
    assert "belowPrice" not in sent and "aboveStopPrice" not in sent
    assert fake.calls("POST", "/api/v3/order") == []  # one request, no separate orders

    assert (stop.client_order_id, stop.type, stop.side) == ("sl-1", OrderType.stop_loss, "sell")
    assert (stop.stop_price, stop.amount, stop.status) == (D("39000"), D("0.01234"), "open")
    assert (target.client_order_id, target.type) == ("tp-1", OrderType.take_profit)
    assert (target.price, target.stop_price, target.status) == (D("45000.01"),) * 2 + ("open",)
    pair = fake.pair_of("sl-1")
    assert {leg["orderId"] for leg in pair["legs"]} == {int(stop.id), int(target.id)}
    # Reconciliation finds each leg by the client order id execution chose.
    found = await binance.fetch_order_by_client_id("tp-1", "BTC/USDT")
    assert found is not None and found.id == target.id and found.type == OrderType.take_profit
    assert {o.id for o in await binance.fetch_open_orders("BTC/USDT")} == {stop.id, target.id}


async def test_a_short_s_brackets_put_the_stop_above_and_the_target_below(
    binance: CcxtExchange, fake: FakeBinance
) -> None:
    stop, target = await binance.create_oco(
        "BTC/USDT", OrderSide.buy, D("0.002"), D("45000"), D("39000"),
        client_order_ids=("sl-s", "tp-s"),
    )  # fmt: skip
    sent = fake.calls("POST", "/api/v3/orderList/oco")[-1]
    assert sent["side"] == "BUY"
    assert (sent["aboveType"], sent["aboveStopPrice"], sent["aboveClientOrderId"]) == (
        "STOP_LOSS",
        "45000.00",
        "sl-s",
    )
    assert (sent["belowType"], sent["belowPrice"], sent["belowClientOrderId"]) == (
        "LIMIT_MAKER",
        "39000.00",
        "tp-s",
    )
    assert (stop.stop_price, target.stop_price) == (D(45000), D(39000))


async def test_the_target_filling_expires_the_stop_and_each_leg_reports_so(
    binance: CcxtExchange, fake: FakeBinance
) -> None:
    stop, target = await _pair(binance, "a")
    fake.last = "45000.50"  # trades through the take-profit's limit price
    filled = await binance.fetch_order(target.id, "BTC/USDT")
    assert (filled.status, filled.filled, filled.remaining) == ("closed", D("0.002"), D(0))
    [trade] = filled.trades  # the fill itself, for the ledger, at the maker's price
    assert (trade.price, trade.amount, trade.taker) == (D(45000), D("0.002"), False)
    assert trade.client_order_id == "tp-a" and trade.fee == D("0.09")
    other = await binance.fetch_order(stop.id, "BTC/USDT")
    # Binance expires the other leg; to execution it is cancelled by its pair.
    assert (other.status, other.filled, other.trades) == ("canceled", D(0), [])
    assert other.reason is not None and "one-cancels-the-other" in other.reason
    assert [leg["status"] for leg in fake.pair_of("sl-a")["legs"]] == ["EXPIRED", "FILLED"]
    assert await binance.fetch_open_orders("BTC/USDT") == []


async def test_the_stop_triggering_sells_at_the_bid_and_cancels_the_target(
    binance: CcxtExchange, fake: FakeBinance
) -> None:
    await _pair(binance, "b")
    fake.bids, fake.last = [["38990.00", "4"]], "38995.00"
    hit = await binance.fetch_order_by_client_id("sl-b", "BTC/USDT")
    assert hit is not None and (hit.status, hit.filled) == ("closed", D("0.002"))
    assert [(t.price, t.taker) for t in hit.trades] == [(D("38990.00"), True)]
    other = await binance.fetch_order_by_client_id("tp-b", "BTC/USDT")
    assert other is not None and other.status == "canceled"


async def test_cancelling_one_leg_cancels_the_pair(
    binance: CcxtExchange, fake: FakeBinance
) -> None:
    stop, target = await _pair(binance, "c")
    cancelled = await binance.cancel_order(stop.id, "BTC/USDT")
    assert cancelled.status == "canceled"
    assert (await binance.fetch_order(target.id, "BTC/USDT")).status == "canceled"
    with pytest.raises(OrderNotFound):  # execution then fetches it: cancelled already
        await binance.cancel_order(target.id, "BTC/USDT")


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"code": -2010, "msg": "Account has insufficient balance for requested action."},
         InsufficientFunds),
        (400, {"code": -1013, "msg": "Filter failure: LOT_SIZE"}, InvalidOrder),
        (400, {"code": -1013, "msg": "Filter failure: NOTIONAL"}, BadRequest),
        (400, {"code": -2010, "msg": "Order would immediately match and take."}, InvalidOrder),
        (401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."},
         AuthenticationError),
        (429, {"code": -1003, "msg": "Too many requests."}, RateLimited),
    ],
)  # fmt: skip
async def test_refusals_of_a_pair_map_like_create_order_and_are_not_retried(
    binance: CcxtExchange, fake: FakeBinance, status: int, body: dict, error: type[Exception]
) -> None:
    await binance.load_markets()
    fake.fail("/api/v3/order", status, body)
    with pytest.raises(error) as single:
        await binance.create_order("BTC/USDT", "sell", "limit", D("0.002"), D(45000),
                                   client_order_id="single")  # fmt: skip
    fake.fail("/api/v3/orderList/oco", status, body)
    with pytest.raises(error, match="binance") as pair:
        await _pair(binance, "e")
    assert type(pair.value) is type(single.value)  # the same kind as a single order's
    assert len(fake.calls("POST", "/api/v3/orderList/oco")) == 1


async def test_the_fake_refuses_legs_on_the_wrong_side_of_the_price_as_binance_does(
    binance: CcxtExchange, fake: FakeBinance
) -> None:
    with pytest.raises(InvalidOrder, match="relationship of the prices"):
        await _pair(binance, "w", stop="42500", target="45000")  # the stop above the last price
    assert fake.lists == {}


async def test_a_pair_that_times_out_is_an_unknown_outcome_never_resent(
    binance: CcxtExchange, fake: FakeBinance
) -> None:
    await binance.load_markets()
    fake.fail("/api/v3/orderList/oco", 200, {}, delay=3.0)  # past the 1.5 s client timeout
    with pytest.raises(ExchangeTimeout, match="reconcile by client order id"):
        await _pair(binance, "t")
    assert len(fake.calls("POST", "/api/v3/orderList/oco")) == 1
    fake.fail("/api/v3/orderList/oco", 503, {"code": -1001, "msg": "Internal error"})
    with pytest.raises(ExchangeTimeout):
        await _pair(binance, "u")
    assert len(fake.calls("POST", "/api/v3/orderList/oco")) == 2


async def test_pairs_ccxt_cannot_express_are_refused_before_sending(
    binance: CcxtExchange, fake: FakeBinance
) -> None:
    for args, ids, reason in [
        ((D("0.002"), D("45000"), D("39000")), ("a", "b"), "stop_loss 45000 must be below"),
        ((D("0.000001"), D("39000"), D("45000")), ("a", "b"), "rounds to nothing"),
        ((D("0.002"), D("39000"), D("45000")), ("a", "a"), "two different client order ids"),
    ]:
        with pytest.raises(InvalidOrder, match=reason):
            await binance.create_oco("BTC/USDT", "sell", *args, client_order_ids=ids)
    assert fake.calls("POST", "/api/v3/orderList/oco") == []


async def test_only_exchanges_with_a_native_pair_say_they_take_one() -> None:
    for exchange_id in ("binanceus", "kraken"):
        other = CcxtExchange(exchange_id)
        try:
            assert not other.supports_oco
            with pytest.raises(BadRequest, match="one-cancels-the-other"):
                await other.create_oco(
                    "BTC/USDT", "sell", D(1), D(1), D(2), client_order_ids=("a", "b")
                )
        finally:
            await other.close()
