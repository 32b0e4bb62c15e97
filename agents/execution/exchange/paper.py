"""`PaperExchange`: a real exchange's own prices, a simulated account.

Markets, tickers, order books and candles come from the exchange's public API (a keyless
`CcxtExchange`, or any `ExchangeAdapter` given as `source`). The account is the sim's:
the same `Ledger`, `SimOrder`s and durable `StateStore` (snapshot + fsync'd journal), the
same request validation (`sim_rules`) and the same matching code (`sim_engine.Engine`),
which here walks the book just fetched from the exchange instead of the sim's synthetic
one. Nothing is ever sent to the exchange but public reads.

Fills: a market order walks the fetched book (taker fee) and expires what its depth
cannot fill; a limit order takes what crosses now (taker) and rests; a resting limit
fills in full at its price (maker fee) once a later ticker reaches it (the last trade, or
the other side of the book); stop_loss / take_profit trigger on the last price, then
execute against a fresh book. `poll()` checks the resting orders against fresh tickers,
one per symbol with open orders. Fees are the market's as CCXT reports them, else the
sim's defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from agents.execution.exchange.base import (
    Balance,
    Bar,
    ExchangeAdapter,
    ExchangeOrder,
    Market,
    OrderBook,
    Ticker,
    Trade,
)
from agents.execution.exchange.errors import (
    BadSymbol,
    ExchangeError,
    InvalidOrder,
    OrderNotFound,
)
from agents.execution.exchange.sim_engine import Engine
from agents.execution.exchange.sim_markets import Fees, Level
from agents.execution.exchange.sim_rules import (
    OrderRequest,
    check_unused,
    parse_pair,
    parse_request,
    watched_level,
)
from agents.execution.exchange.sim_state import Ledger, SimOrder, StateStore
from common.contracts import OrderSide, OrderType

log = logging.getLogger(__name__)
BOOK_DEPTH = 100  # levels a side fetched for a taker order; what they cannot fill expires
PAPER_SEED = 0  # the ledger's seed field: a paper account has no price path


@dataclass(frozen=True)
class FetchedBook:
    """A real order book as the sim's engine walks it. `mid` is what a stop is compared
    with: the last trade price when known, else the middle of the spread."""

    bid: Decimal
    ask: Decimal
    mid: Decimal
    amount_step: Decimal
    bids: tuple[tuple[Decimal, Decimal], ...] = ()
    asks: tuple[tuple[Decimal, Decimal], ...] = ()

    @classmethod
    def of(cls, market: Market, book: OrderBook | None, ticker: Ticker | None) -> FetchedBook:
        bids, asks = (tuple(book.bids), tuple(book.asks)) if book else ((), ())
        bid = bids[0][0] if bids else (ticker.bid if ticker else None)
        ask = asks[0][0] if asks else (ticker.ask if ticker else None)
        if bid is None or ask is None:
            raise ExchangeError(f"{market.symbol} has an empty order book right now")
        mid = ticker.last if ticker else (bid + ask) / 2
        return cls(bid, ask, mid, market.amount_step, bids, asks)

    def levels(self, buy: bool) -> Iterator[Level]:
        for price, amount in self.asks if buy else self.bids:
            if amount > 0:
                yield Level(price, amount)


class PaperEngine(Engine):
    """The sim's matching for one symbol of a paper account, on a book fetched just now."""

    def __init__(self, ledger: Ledger, market: Market, fees: Fees, book: FetchedBook) -> None:
        super().__init__(ledger, {market.symbol: market}, {}, fees)
        self.fetched = book

    def book(self, symbol: str, t_ms: int) -> FetchedBook:
        return self.fetched

    def trigger(self, order: SimOrder, t_ms: int) -> None:
        self._trigger(order, t_ms)

    def maker_fill(self, order: SimOrder, t_ms: int) -> None:
        self._maker_fill(order, t_ms)


def reached(order: SimOrder, ticker: Ticker) -> bool:
    """Whether an open order's level has been reached: a stop by the last price; a resting
    limit by the last price or by the other side of the book (it would cross now)."""
    level, below = watched_level(order)
    if order.is_stop and not order.triggered:
        return ticker.last <= level if below else ticker.last >= level
    if below:  # a buy waiting for the price to fall to its limit
        return ticker.last <= level or ticker.ask <= level
    return ticker.last >= level or ticker.bid >= level


class PaperExchange(ExchangeAdapter):
    """Paper trading on exchange `exchange_id`: its public data, a simulated account in
    `state_dir` (created with `starting_balances`, durable before a changing call returns;
    one process owns it). `fees` are used where the exchange reports none."""

    supports_oco = True  # pairs live in the simulated account, like every paper order

    def __init__(
        self,
        exchange_id: str,
        source: ExchangeAdapter,
        state_dir: str | os.PathLike[str],
        starting_balances: Mapping[str, Decimal],
        fees: Fees | None = None,
        book_depth: int = BOOK_DEPTH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.id = exchange_id
        self.source = source
        self.default_fees = fees or Fees()
        self.book_depth = book_depth
        self._clock = clock
        self._markets: dict[str, Market] | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._store = StateStore(Path(state_dir))
        try:
            ledger = self._store.load()
            if ledger is None:
                ledger = Ledger(PAPER_SEED, {k: Decimal(v) for k, v in starting_balances.items()})
                self._store.write(ledger.dumps())
        except BaseException:
            self._store.close()
            raise
        self._ledger = ledger

    # --- market data: the exchange's own ---------------------------------------------------
    async def load_markets(self) -> dict[str, Market]:
        if self._markets is None:
            self._markets = await self.source.load_markets()
        return dict(self._markets)

    async def fetch_ticker(self, symbol: str) -> Ticker:
        return await self.source.fetch_ticker(symbol)

    async def fetch_order_book(self, symbol: str, limit: int = 20) -> OrderBook:
        return await self.source.fetch_order_book(symbol, limit)

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since_ms: int | None = None, limit: int = 500
    ) -> list[Bar]:
        return await self.source.fetch_ohlcv(symbol, timeframe, since_ms, limit)

    # --- the simulated account -------------------------------------------------------------
    async def fetch_balance(self) -> dict[str, Balance]:
        async with self._lock:
            return self._ledger.balance_sheet()

    async def create_order(
        self,
        symbol: str,
        side: OrderSide | str,
        type: OrderType | str,
        amount: Decimal,
        price: Decimal | None = None,
        stop_price: Decimal | None = None,
        *,
        client_order_id: str,
    ) -> ExchangeOrder:
        self._check_open()
        market = await self._market(symbol)
        with self._named_errors():
            request = parse_request(market, side, type, amount, price, stop_price, client_order_id)
            self._check_duplicate(client_order_id)  # before any network read
            book = await self._book_for(market, request)
            async with self._lock:
                self._check_duplicate(client_order_id)
                engine = PaperEngine(self._ledger, market, self.fees(market), book)
                order = engine.place(request, self.now_ms())
                await self._save()
                return self._view(order)

    async def create_oco(
        self,
        symbol: str,
        side: OrderSide | str,
        amount: Decimal,
        stop_loss: Decimal,
        take_profit: Decimal,
        *,
        client_order_ids: tuple[str, str],
    ) -> tuple[ExchangeOrder, ExchangeOrder]:
        self._check_open()
        market = await self._market(symbol)
        with self._named_errors():
            requests = parse_pair(market, side, amount, stop_loss, take_profit, client_order_ids)
            for cid in client_order_ids:
                self._check_duplicate(cid)
            book = await self._book_for(market, requests[0])
            async with self._lock:
                for cid in client_order_ids:
                    self._check_duplicate(cid)
                engine = PaperEngine(self._ledger, market, self.fees(market), book)
                legs = engine.place_pair(*requests, self.now_ms())
                await self._save()
                return self._view(legs[0]), self._view(legs[1])

    async def cancel_order(self, order_id: str, symbol: str) -> ExchangeOrder:
        self._check_open()
        async with self._lock:
            order = self._find(order_id, symbol)
            if order.status != "open":
                raise InvalidOrder(
                    f"order {order_id} is {order.status} (filled {order.filled} of "
                    f"{order.amount}); nothing to cancel",
                    exchange=self.id,
                    order_status=order.status,
                )
            self._ledger.cancel(order)  # and the other leg of its pair, if any
            await self._save()
            return self._view(order)

    async def fetch_order(self, order_id: str, symbol: str) -> ExchangeOrder:
        async with self._lock:
            return self._view(self._find(order_id, symbol))

    async def fetch_order_by_client_id(
        self, client_order_id: str, symbol: str
    ) -> ExchangeOrder | None:
        async with self._lock:
            order_id = self._ledger.by_client_id.get(client_order_id)
            order = self._ledger.orders.get(order_id) if order_id else None
            if order is None or order.symbol != symbol:
                return None
            return self._view(order)

    async def fetch_open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        async with self._lock:
            return [
                self._view(o)
                for o in self._ledger.open_orders()
                if symbol is None or o.symbol == symbol
            ]

    async def fetch_my_trades(
        self, symbol: str | None = None, since_ms: int | None = None
    ) -> list[Trade]:
        async with self._lock:
            trades = [
                t
                for t in self._ledger.trades.values()
                if (symbol is None or t.symbol == symbol)
                and (since_ms is None or t.timestamp >= since_ms)
            ]
            return sorted(trades, key=lambda t: (t.timestamp, int(t.id)))

    async def poll(self) -> list[ExchangeOrder]:
        """Check resting orders against fresh tickers (one per symbol with open orders);
        return the orders that filled or triggered. A symbol whose data cannot be read
        now is skipped until the next poll."""
        self._check_open()
        symbols = sorted({o.symbol for o in self._ledger.open_orders()})
        changed: list[SimOrder] = []
        for symbol in symbols:
            try:
                changed += await self._poll_symbol(symbol)
            except ExchangeError as exc:
                log.warning("paper %s: cannot check %s orders now: %s", self.id, symbol, exc)
        return [self._view(o) for o in changed]

    async def close(self) -> None:
        """Release the account (the source belongs to whoever opened it)."""
        async with self._lock:
            if not self._closed:
                self._closed = True
                self._store.close()

    # --- internals -----------------------------------------------------------------------
    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def fees(self, market: Market) -> Fees:
        """The market's fees as the exchange reports them; the sim's where it reports none."""
        return Fees(
            maker=market.maker_fee or self.default_fees.maker,
            taker=market.taker_fee or self.default_fees.taker,
        )

    async def _market(self, symbol: str) -> Market:
        markets = await self.load_markets()
        if symbol not in markets:
            raise BadSymbol(f"{symbol!r} is not listed on {self.id}", exchange=self.id)
        return markets[symbol]

    async def _book_for(self, market: Market, request: OrderRequest) -> FetchedBook:
        """What a new order is matched against: the book for market and limit orders, the
        ticker (its last price) for a stop."""
        if request.type in (OrderType.market, OrderType.limit):
            book = await self.source.fetch_order_book(market.symbol, self.book_depth)
            return FetchedBook.of(market, book, None)
        return FetchedBook.of(market, None, await self.source.fetch_ticker(market.symbol))

    async def _poll_symbol(self, symbol: str) -> list[SimOrder]:
        ticker = await self.source.fetch_ticker(symbol)
        market = await self._market(symbol)
        due = [o for o in self._ledger.open_orders() if o.symbol == symbol and reached(o, ticker)]
        if not due:
            return []
        triggers = any(o.is_stop and not o.triggered for o in due)
        book = await self.source.fetch_order_book(symbol, self.book_depth) if triggers else None
        async with self._lock:
            engine = PaperEngine(
                self._ledger, market, self.fees(market), FetchedBook.of(market, book, ticker)
            )
            now = self.now_ms()
            changed = []
            for order in sorted(due, key=lambda o: int(o.id)):
                if order.status != "open":
                    continue  # cancelled while the data was read
                if order.is_stop and not order.triggered:
                    engine.trigger(order, now)
                else:
                    engine.maker_fill(order, now)
                changed.append(order)
            if changed:
                await self._save()
            return changed

    @contextlib.contextmanager
    def _named_errors(self) -> Iterator[None]:
        """The sim's rules name the sim in their errors; here they are this exchange's."""
        try:
            yield
        except ExchangeError as exc:
            if exc.exchange in (None, "sim"):
                exc.exchange = self.id
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise ExchangeError(f"paper {self.id} is closed", exchange=self.id)

    def _check_duplicate(self, client_order_id: str) -> None:
        check_unused(self._ledger.by_client_id, client_order_id, self.id)

    def _find(self, order_id: str, symbol: str) -> SimOrder:
        order = self._ledger.orders.get(order_id)
        if order is None or order.symbol != symbol:
            raise OrderNotFound(f"no order {order_id!r} for {symbol}", exchange=self.id)
        return order

    def _view(self, order: SimOrder) -> ExchangeOrder:
        return order.view([self._ledger.trades[t] for t in order.trade_ids])

    async def _save(self) -> None:
        await asyncio.to_thread(self._store.save, self._ledger)
