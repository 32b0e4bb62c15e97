"""The CCXT adapter against a fake Binance on 127.0.0.1: real CCXT, real HTTP, our mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from agents.execution.exchange import (
    AuthenticationError,
    BadRequest,
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
