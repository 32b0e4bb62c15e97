"""Paper trading on a real exchange's prices: matching against a canned book (unit), then
the real CCXT client against the fake Binance over HTTP, and the registry's mode switch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agents.execution.exchange import (
    Balance,
    Bar,
    DuplicateOrder,
    ExchangeAdapter,
    ExchangeOrder,
    InsufficientFunds,
    InvalidOrder,
    Market,
    NetworkError,
    OrderBook,
    Ticker,
    Trade,
)
from agents.execution.exchange.ccxt_adapter import CcxtExchange
from agents.execution.exchange.paper import PaperExchange
from agents.execution.exchanges import ExchangeRegistry
from agents.execution.settings import ExecutionSettings
from common.errors import ServiceUnavailable
from tests.agents.execution.fake_binance import FakeBinance

pytestmark = pytest.mark.anyio
D = Decimal
BTC = "BTC/USDT"
T0 = 1_709_546_400.0


def _market(maker: str = "0.0005", taker: str = "0.001") -> Market:
    return Market(
        symbol=BTC, base="BTC", quote="USDT", amount_step=D("0.001"), price_step=D("0.5"),
        min_amount=D("0.001"), min_notional=D(5), maker_fee=D(maker), taker_fee=D(taker),
    )  # fmt: skip


class CannedSource(ExchangeAdapter):
    """Public market data from the test: one market, a book and a last price it moves."""

    id = "canned"

    def __init__(self, market: Market) -> None:
        self.market = market
        self.bids: list[tuple[Decimal, Decimal]] = [(D(99), D(1)), (D(98), D(2))]
        self.asks: list[tuple[Decimal, Decimal]] = [(D(100), D(1)), (D(101), D(2))]
        self.last = D("99.5")
        self.calls: list[str] = []
        self.down = False

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise NetworkError("canned: unreachable", exchange=self.id)

    async def load_markets(self) -> dict[str, Market]:
        self._call("load_markets")
        return {BTC: self.market}

    async def fetch_ticker(self, symbol: str) -> Ticker:
        self._call("fetch_ticker")
        return Ticker(symbol, self.bids[0][0], self.asks[0][0], self.last, int(T0 * 1000))

    async def fetch_order_book(self, symbol: str, limit: int = 20) -> OrderBook:
        self._call("fetch_order_book")
        return OrderBook(symbol, self.bids[:limit], self.asks[:limit], int(T0 * 1000))

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since_ms: int | None = None, limit: int = 500
    ) -> list[Bar]:
        return []

    async def fetch_balance(self) -> dict[str, Balance]:
        raise AssertionError("a paper account never asks the exchange for balances")

    async def create_order(self, *args: Any, **kwargs: Any) -> ExchangeOrder:
        raise AssertionError("a paper account never sends orders")

    async def fetch_order(self, order_id: str, symbol: str) -> ExchangeOrder:
        raise AssertionError("private call")

    async def fetch_order_by_client_id(
        self, client_order_id: str, symbol: str
    ) -> ExchangeOrder | None:
        raise AssertionError("private call")

    async def fetch_open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        raise AssertionError("private call")

    async def cancel_order(self, order_id: str, symbol: str) -> ExchangeOrder:
        raise AssertionError("private call")

    async def fetch_my_trades(
        self, symbol: str | None = None, since_ms: int | None = None
    ) -> list[Trade]:
        raise AssertionError("private call")

    async def close(self) -> None:
        pass


PaperFactory = Callable[..., PaperExchange]


@pytest.fixture
def source() -> CannedSource:
    return CannedSource(_market())


@pytest.fixture
async def make_paper(tmp_path: Path, source: CannedSource) -> AsyncIterator[PaperFactory]:
    made: list[PaperExchange] = []

    def make(**kwargs: Any) -> PaperExchange:
        kwargs.setdefault("source", source)
        kwargs.setdefault("starting_balances", {"USDT": D(1000)})
        paper = PaperExchange("canned", state_dir=tmp_path / "paper", clock=lambda: T0, **kwargs)
        made.append(paper)
        return paper

    yield make
    for paper in made:
        await paper.close()


async def test_a_market_buy_walks_the_fetched_book_at_the_taker_fee(
    make_paper: PaperFactory,
) -> None:
    paper = make_paper()
    order = await paper.create_order(BTC, "buy", "market", D("1.5"), client_order_id="m-1")
    assert order.status == "closed" and order.filled == D("1.5")
    assert [(t.price, t.amount, t.taker) for t in order.trades] == [
        (D(100), D(1), True),
        (D(101), D("0.5"), True),
    ]
    assert order.cost == D("150.5") and order.fee == D("0.1505")  # 0.1 % taker
    balance = await paper.fetch_balance()
    assert balance["USDT"].total == D(1000) - D("150.5") - D("0.1505")
    assert balance["BTC"] == Balance(free=D("1.5"), used=D(0), total=D("1.5"))


async def test_what_the_fetched_depth_cannot_fill_expires(make_paper: PaperFactory) -> None:
    paper = make_paper()
    order = await paper.create_order(BTC, "buy", "market", D(5), client_order_id="m-2")
    assert order.status == "expired" and order.filled == D(3)
    assert order.reason is not None and "2 of 5 not filled" in order.reason
    with pytest.raises(InsufficientFunds) as err:
        await paper.create_order(BTC, "sell", "market", D(4), client_order_id="m-3")
    assert err.value.exchange == "canned"


async def test_a_limit_takes_what_crosses_then_rests_and_fills_at_the_maker_fee_on_poll(
    make_paper: PaperFactory, source: CannedSource
) -> None:
    paper = make_paper()
    order = await paper.create_order(BTC, "buy", "limit", D(2), D("100.5"), client_order_id="l-1")
    assert order.status == "open" and order.filled == D(1)  # 1 @ 100 taken, 1 rests
    held = (await paper.fetch_balance())["USDT"].used
    assert held == D("100.5") * D("1.001")  # the rest at its limit, with the larger fee
    source.last, source.asks = D(101), [(D(101), D(2))]  # the price moves away
    source.calls.clear()
    assert await paper.poll() == []
    assert source.calls == ["fetch_ticker"]  # one ticker per symbol with open orders


async def test_a_resting_limit_fills_when_the_price_reaches_it(
    make_paper: PaperFactory, source: CannedSource
) -> None:
    paper = make_paper()
    source.last = D(100)
    order = await paper.create_order(BTC, "buy", "limit", D(1), D(97), client_order_id="l-2")
    assert order.status == "open" and order.filled == 0
    assert await paper.poll() == []
    source.last = D("96.5")
    (filled,) = await paper.poll()
    assert filled.status == "closed" and filled.average == D(97)
    (trade,) = filled.trades
    assert not trade.taker and trade.fee == D("0.0485")  # 97 x 0.05 % maker
    assert (await paper.fetch_balance())["USDT"].used == 0
    source.calls.clear()
    assert await paper.poll() == []
    assert source.calls == []  # no open orders: no ticker fetched


async def test_a_stop_loss_triggers_on_the_last_price_and_sells_into_the_bids(
    make_paper: PaperFactory, source: CannedSource
) -> None:
    paper = make_paper()
    await paper.create_order(BTC, "buy", "market", D(1), client_order_id="s-0")
    stop_loss = ("sell", "stop_loss", D(1), None)
    with pytest.raises(InvalidOrder, match="would trigger immediately"):
        await paper.create_order(BTC, *stop_loss, D(100), client_order_id="x")
    stop = await paper.create_order(BTC, *stop_loss, D(95), client_order_id="s-1")
    assert stop.status == "open"
    source.last = D(96)
    assert await paper.poll() == []
    source.last, source.bids = D(95), [(D("94.5"), D(5))]
    (fired,) = await paper.poll()
    assert fired.status == "closed" and fired.average == D("94.5")


async def test_a_pair_triggers_one_leg_and_cancels_the_other(
    make_paper: PaperFactory, source: CannedSource
) -> None:
    paper = make_paper()
    await paper.create_order(BTC, "buy", "market", D(1), client_order_id="p-0")
    assert paper.supports_oco
    sl, tp = await paper.create_oco(
        BTC, "sell", D(1), D(95), D(105), client_order_ids=("p-sl", "p-tp")
    )
    assert (await paper.fetch_balance())["BTC"].used == D(1)
    with pytest.raises(InvalidOrder, match="would trigger immediately"):
        await paper.create_oco(BTC, "sell", D(1), D(99), D(99), client_order_ids=("x", "y"))
    source.last, source.bids = D(106), [(D("105.5"), D(5))]
    (fired,) = await paper.poll()
    assert fired.id == tp.id and fired.status == "closed" and fired.average == D("105.5")
    other = await paper.fetch_order(sl.id, BTC)
    assert other.status == "canceled" and f"order {tp.id}" in (other.reason or "")
    balance = await paper.fetch_balance()
    assert balance["BTC"].total == 0 and balance["BTC"].used == 0
    # Cancelling one leg of a pair cancels the other.
    await paper.create_order(BTC, "buy", "market", D(1), client_order_id="p-1")
    legs = await paper.create_oco(
        BTC, "sell", D(1), D(95), D(110), client_order_ids=("q-sl", "q-tp")
    )
    await paper.cancel_order(legs[1].id, BTC)
    assert (await paper.fetch_order(legs[0].id, BTC)).status == "canceled"
    assert (await paper.fetch_balance())["BTC"].free == D(1)


async def test_a_client_order_id_makes_one_order_and_the_account_is_durable(
    make_paper: PaperFactory, source: CannedSource
) -> None:
    paper = make_paper()
    order = await paper.create_order(BTC, "buy", "limit", D(1), D(90), client_order_id="c-1")
    with pytest.raises(DuplicateOrder) as err:
        await paper.create_order(BTC, "buy", "limit", D(1), D(90), client_order_id="c-1")
    assert err.value.existing_order_id == order.id
    assert len(await paper.fetch_open_orders()) == 1
    await paper.close()
    again = make_paper()
    found = await again.fetch_order_by_client_id("c-1", BTC)
    assert found is not None and found.id == order.id and found.status == "open"
    assert (await again.fetch_balance())["USDT"].used == D(90) * D("1.001")
    # The exchange unreachable: the poll skips and the order keeps resting.
    source.down = True
    assert await again.poll() == []
    cancelled = await again.cancel_order(order.id, BTC)
    assert cancelled.status == "canceled"


async def test_a_market_without_fees_uses_the_sims_default(
    make_paper: PaperFactory, source: CannedSource
) -> None:
    source.market = _market(maker="0", taker="0")
    paper = make_paper()
    order = await paper.create_order(BTC, "buy", "market", D(1), client_order_id="f-1")
    assert order.fee == D("0.100")  # the sim's 0.1 %


# --- the real CCXT client against the fake Binance over HTTP ---------------------------------
@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    server = FakeBinance()
    await server.start()
    yield server
    await server.stop()


def _private(fake: FakeBinance) -> list[str]:
    public = {"/api/v3/exchangeInfo", "/api/v3/depth", "/api/v3/ticker/24hr", "/api/v3/klines"}
    return [path for _, path, _ in fake.requests if path not in public]


async def test_paper_binance_fills_at_the_fake_books_prices_with_fees(
    tmp_path: Path, fake: FakeBinance
) -> None:
    source = CcxtExchange("binance", api_host=fake.url, retry_delay=0.01)  # no keys
    paper = PaperExchange("binance", source, tmp_path / "paper", {"USDT": D(10000)})
    try:
        order = await paper.create_order(BTC, "buy", "market", D("0.001"), client_order_id="p-1")
        assert order.status == "closed" and order.average == D("42000.20")
        assert order.fee == D("0.0420002")  # CCXT's binance taker fee, 0.1 %
        balance = await paper.fetch_balance()
        assert balance["BTC"].total == D("0.001")
        assert balance["USDT"].total == D(10000) - D("42.0002") - D("0.0420002")

        limit = ("buy", "limit", D("0.001"), D(41000))
        rest = await paper.create_order(BTC, *limit, client_order_id="p-2")
        assert rest.status == "open"
        assert await paper.poll() == []
        fake.last, fake.asks = "40990.00", [["40995.00", "1"]]
        fake.bids = [["40985.00", "1"]]
        (filled,) = await paper.poll()
        assert filled.id == rest.id and filled.status == "closed"
        assert filled.average == D(41000) and not filled.trades[0].taker
        assert _private(fake) == []  # nothing but public reads reached the exchange
    finally:
        await paper.close()
        await source.close()


# --- the registry: paper while live trading is off, live (Vault, fail closed) when on ------
def _settings(tmp_path: Path, fake: FakeBinance, live: bool) -> ExecutionSettings:
    return ExecutionSettings(
        home=tmp_path, live_trading=live, exchange_api_hosts={"binance": fake.url}
    )


async def test_live_off_opens_a_real_exchange_in_paper_mode_without_vault(
    tmp_path: Path, fake: FakeBinance
) -> None:
    registry = ExchangeRegistry(_settings(tmp_path, fake, live=False), vault=None)
    try:
        adapter = await registry.ensure("binance")
        assert registry.modes["binance"] == "paper" and isinstance(adapter, PaperExchange)
        assert await registry.data_source("binance") is adapter
        assert "BTC/USDT" in await registry.markets("binance")
        mid, _ = await registry.mark("binance", BTC)
        assert mid == D("42000.10")
        limit = ("buy", "limit", D("0.001"), D(40000))
        await adapter.create_order(BTC, *limit, client_order_id="r-1")
    finally:
        await registry.close()
    # A restart reopens the paper account from disk, its resting order with it.
    registry = ExchangeRegistry(_settings(tmp_path, fake, live=False), vault=None)
    try:
        assert registry.modes == {"sim": "simulated", "binance": "paper"}
        (order,) = await registry.get("binance").fetch_open_orders()
        assert order.client_order_id == "r-1"
    finally:
        await registry.close()


async def test_live_on_still_needs_vault_and_fails_closed(
    tmp_path: Path, fake: FakeBinance
) -> None:
    registry = ExchangeRegistry(_settings(tmp_path, fake, live=True), vault=None)
    try:
        with pytest.raises(ServiceUnavailable, match="needs Vault"):
            await registry.ensure("binance")
        assert "binance" not in registry.modes
        assert (await (await registry.ensure("sim")).fetch_ticker(BTC)).bid > 0
    finally:
        await registry.close()
