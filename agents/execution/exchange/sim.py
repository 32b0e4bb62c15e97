"""`sim`: the offline simulated exchange, a paper account on a synthetic market.

Prices come from `sim_prices` (a pure function of seed, symbol and time), the book
from `sim_markets`, the order rules from `sim_rules`, the durable account from
`sim_state`. Market orders and the marketable part of limit orders walk the book as
taker; the rest of a limit order rests and fills in full at its limit price, as maker,
once the price trades through it; stops trigger when the price reaches them. Resting
orders are checked against the whole price path since the last check, at the start of
every call and on `poll()`. Faults and latency can be injected for tests.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import os
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

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
    AuthenticationError,
    BadRequest,
    BadSymbol,
    DuplicateOrder,
    ExchangeError,
    ExchangeTimeout,
    InsufficientFunds,
    InvalidOrder,
    NetworkError,
    OrderNotFound,
    RateLimited,
)
from agents.execution.exchange.sim_markets import (
    DEFAULT_MARKETS,
    Book,
    Fees,
    MarketSpec,
    make_book,
    walk_book,
)
from agents.execution.exchange.sim_prices import EPOCH_MS, MINUTE_MS, TIMEFRAMES, shared_path
from agents.execution.exchange.sim_rules import (
    OrderRequest,
    check_against_market,
    parse_request,
    reservation,
    watched_level,
)
from agents.execution.exchange.sim_state import Ledger, SimOrder, StateStore
from common.contracts import OrderSide, OrderType
from common.money import to_step

P = ParamSpec("P")
R = TypeVar("R")
FAULT_KINDS = ("reject", "timeout_after_accept", "network_error", "rate_limited", "auth_error")
OPERATIONS = (
    "load_markets",
    "fetch_ticker",
    "fetch_order_book",
    "fetch_ohlcv",
    "fetch_balance",
    "create_order",
    "fetch_order",
    "fetch_order_by_client_id",
    "fetch_open_orders",
    "cancel_order",
    "fetch_my_trades",
    "poll",
)
MAX_OHLCV_LIMIT = 5000


@dataclass
class _Fault:
    kind: str
    op: str
    times: int


def _boundary(
    fn: Callable[Concatenate[SimExchange, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[SimExchange, P], Coroutine[Any, Any, R]]:
    """Every public call: refuse when closed, wait the latency, apply injected faults."""
    op = fn.__name__

    @functools.wraps(fn)
    async def call(self: SimExchange, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._closed:
            raise ExchangeError("the sim exchange is closed", exchange="sim")
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)
        fault = self._take_fault(op)
        if fault is not None and fault != "timeout_after_accept":
            raise _fault_error(fault, op)
        result = await fn(self, *args, **kwargs)
        if fault == "timeout_after_accept":
            raise ExchangeTimeout(
                f"sim: {op} timed out (injected) after the exchange accepted it; "
                "reconcile by client order id",
                exchange="sim",
            )
        return result

    return call


def _fault_error(kind: str, op: str) -> ExchangeError:
    message = f"sim: injected {kind} on {op}"
    if kind == "reject":
        return InvalidOrder(f"{message}: request rejected by the exchange", exchange="sim")
    if kind == "rate_limited":
        return RateLimited(message, exchange="sim")
    if kind == "auth_error":
        return AuthenticationError(message, exchange="sim")
    return NetworkError(message, exchange="sim")


class SimExchange(ExchangeAdapter):
    """The simulated exchange. Deterministic for a seed: prices depend only on (seed,
    symbol, time) and the account only on the calls made. State lives in
    `state_dir/sim-account.json` and is durable before any call that changed it returns.

    `clock` returns unix seconds (inject one to move time in tests). `latency_ms` delays
    every call. `inject_fault(kind, op, times)` makes the next `times` calls of `op` fail:
    "reject" (InvalidOrder), "network_error" (nothing done), "timeout_after_accept"
    (done and persisted, then ExchangeTimeout), "rate_limited", "auth_error".
    """

    id = "sim"

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        seed: int = 42,
        starting_balances: Mapping[str, Decimal] | None = None,
        latency_ms: float = 0,
        fees: Fees | None = None,
        clock: Callable[[], float] = time.time,
        markets: Sequence[MarketSpec] = DEFAULT_MARKETS,
    ) -> None:
        self.seed = seed
        self.latency_ms = latency_ms
        self.fees = fees or Fees()
        self._clock = clock
        self._specs = {spec.symbol: spec for spec in markets}
        self._markets = {s: spec.market(self.fees) for s, spec in self._specs.items()}
        self._paths = {s: shared_path(seed, s, spec.model) for s, spec in self._specs.items()}
        self._faults: list[_Fault] = []
        self._lock = asyncio.Lock()
        self._closed = False
        self._store = StateStore(Path(state_dir))
        try:
            ledger = self._store.load()
            if ledger is None:
                balances = starting_balances or {"USDT": Decimal(10000)}
                ledger = Ledger(seed, {k: Decimal(v) for k, v in balances.items()})
                self._store.write(ledger.dumps())
            elif ledger.seed != seed:
                raise ExchangeError(
                    f"the sim account in {state_dir} was created with seed {ledger.seed}, "
                    f"not {seed}; use that seed or another directory",
                    exchange="sim",
                )
        except BaseException:
            self._store.close()
            raise
        self._ledger = ledger

    # --- faults and time ---------------------------------------------------------------
    def inject_fault(self, kind: str, op: str = "create_order", times: int = 1) -> None:
        """Make the next `times` calls of `op` ("*" for any call) fail with `kind`."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        if op != "*" and op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}; one of {', '.join(OPERATIONS)} or *")
        if times < 1:
            raise ValueError("times must be at least 1")
        self._faults.append(_Fault(kind, op, times))

    def clear_faults(self) -> None:
        self._faults.clear()

    def _take_fault(self, op: str) -> str | None:
        for fault in self._faults:
            if fault.op in (op, "*"):
                fault.times -= 1
                if fault.times == 0:
                    self._faults.remove(fault)
                return fault.kind
        return None

    def now_ms(self) -> int:
        now = int(self._clock() * 1000)
        if now < EPOCH_MS:
            raise ExchangeError("the sim clock is before 2024-01-01, where prices start")
        return now

    async def warm_up(self) -> None:
        """Generate the price history up to now for every symbol (in a thread, ~0.2 s per
        symbol for three years), so that the first real call is fast."""
        now = self.now_ms()
        for path in self._paths.values():
            await asyncio.to_thread(path.ensure, now)

    # --- market data ---------------------------------------------------------------------
    @_boundary
    async def load_markets(self) -> dict[str, Market]:
        return dict(self._markets)

    @_boundary
    async def fetch_ticker(self, symbol: str) -> Ticker:
        spec = self._spec(symbol)
        now = await self._sync()
        book = self._book(symbol, now)
        last = to_step(Decimal(repr(book.mid)), spec.price_step, ROUND_HALF_EVEN)
        return Ticker(symbol=symbol, bid=book.bid, ask=book.ask, last=last, timestamp=now)

    @_boundary
    async def fetch_order_book(self, symbol: str, limit: int = 20) -> OrderBook:
        self._spec(symbol)
        now = await self._sync()
        book = self._book(symbol, now)
        sides = [
            [(lv.price, lv.amount) for lv, _ in zip(book.levels(buy), range(limit), strict=False)]
            for buy in (False, True)
        ]
        return OrderBook(symbol=symbol, bids=sides[0], asks=sides[1], timestamp=now)

    @_boundary
    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since_ms: int | None = None, limit: int = 500
    ) -> list[Bar]:
        self._spec(symbol)
        minutes = TIMEFRAMES.get(timeframe)
        if minutes is None:
            raise BadRequest(
                f"timeframe {timeframe!r} is not one of {', '.join(TIMEFRAMES)}", exchange="sim"
            )
        if not 1 <= limit <= MAX_OHLCV_LIMIT:
            raise BadRequest(f"limit must be 1..{MAX_OHLCV_LIMIT}, got {limit}", exchange="sim")
        now = await self._sync()
        path = self._paths[symbol]
        step = minutes * MINUTE_MS
        current = EPOCH_MS + (now - EPOCH_MS) // step * step  # the still-forming candle
        if since_ms is None:
            first = current - (limit - 1) * step
        else:
            first = EPOCH_MS + -(-(since_ms - EPOCH_MS) // step) * step
        first = max(first, EPOCH_MS)
        last = min(current, first + (limit - 1) * step)
        if last < first:
            return []
        closed = (min(last, current - step) - first) // step + 1
        rows = path.candles(minutes, first, closed)
        if last == current:
            rows.append((current, *path.window(current, now)))
        return list(map(Bar._make, rows))

    # --- account -------------------------------------------------------------------------
    @_boundary
    async def fetch_balance(self) -> dict[str, Balance]:
        async with self._lock:
            await self._sync_locked()
            used = self._ledger.used()
            assets = sorted(set(self._ledger.balances) | set(used))
            out = {}
            for asset in assets:
                total = self._ledger.balances.get(asset, Decimal(0))
                held = used.get(asset, Decimal(0))
                out[asset] = Balance(free=total - held, used=held, total=total)
            return out

    @_boundary
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
        spec = self._spec(symbol)
        request = parse_request(spec, side, type, amount, price, stop_price, client_order_id)
        async with self._lock:
            now = await self._sync_locked()
            existing = self._ledger.by_client_id.get(client_order_id)
            if existing is not None:
                raise DuplicateOrder(
                    f"client_order_id {client_order_id!r} is already used by order {existing}; "
                    "no new order was created",
                    existing_order_id=existing,
                    exchange="sim",
                )
            book = self._book(symbol, now)
            check_against_market(spec, request, book)
            order = self._new_order(spec, request, now)
            self._check_funds(spec, order, book)
            self._ledger.add_order(order)
            self._place(order, book, now)
            await self._save()
            return self._view(order)

    @_boundary
    async def cancel_order(self, order_id: str, symbol: str) -> ExchangeOrder:
        async with self._lock:
            await self._sync_locked()
            order = self._find(order_id, symbol)
            if order.status != "open":
                raise InvalidOrder(
                    f"order {order_id} is {order.status} (filled {order.filled} of "
                    f"{order.amount}); nothing to cancel",
                    exchange="sim",
                    order_status=order.status,
                )
            order.status = "canceled"
            order.reserved = Decimal(0)
            await self._save()
            return self._view(order)

    @_boundary
    async def fetch_order(self, order_id: str, symbol: str) -> ExchangeOrder:
        async with self._lock:
            await self._sync_locked()
            return self._view(self._find(order_id, symbol))

    @_boundary
    async def fetch_order_by_client_id(
        self, client_order_id: str, symbol: str
    ) -> ExchangeOrder | None:
        async with self._lock:
            await self._sync_locked()
            order_id = self._ledger.by_client_id.get(client_order_id)
            order = self._ledger.orders.get(order_id) if order_id else None
            if order is None or order.symbol != symbol:
                return None
            return self._view(order)

    @_boundary
    async def fetch_open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        async with self._lock:
            await self._sync_locked()
            return [
                self._view(o)
                for o in self._ledger.open_orders()
                if symbol is None or o.symbol == symbol
            ]

    @_boundary
    async def fetch_my_trades(
        self, symbol: str | None = None, since_ms: int | None = None
    ) -> list[Trade]:
        async with self._lock:
            await self._sync_locked()
            trades = [
                t
                for t in self._ledger.trades.values()
                if (symbol is None or t.symbol == symbol)
                and (since_ms is None or t.timestamp >= since_ms)
            ]
            return sorted(trades, key=lambda t: (t.timestamp, int(t.id)))

    @_boundary
    async def poll(self) -> list[ExchangeOrder]:
        """Bring resting orders up to now; return the orders that filled or triggered."""
        async with self._lock:
            changed = self._evaluate(self.now_ms())
            if changed:
                await self._save()
            return [self._view(o) for o in changed]

    async def close(self) -> None:
        async with self._lock:
            if not self._closed:
                self._closed = True
                self._store.close()

    # --- internals: lookups --------------------------------------------------------------
    def _spec(self, symbol: str) -> MarketSpec:
        spec = self._specs.get(symbol)
        if spec is None:
            raise BadSymbol(
                f"unknown symbol {symbol!r}; sim lists {', '.join(self._specs)}", exchange="sim"
            )
        return spec

    def _book(self, symbol: str, t_ms: int) -> Book:
        path = self._paths[symbol]
        return make_book(self._specs[symbol], path.price_at(t_ms), path.sigma_ratio_at(t_ms))

    def _find(self, order_id: str, symbol: str) -> SimOrder:
        order = self._ledger.orders.get(order_id)
        if order is None or order.symbol != symbol:
            raise OrderNotFound(f"no order {order_id!r} for {symbol}", exchange="sim")
        return order

    def _view(self, order: SimOrder) -> ExchangeOrder:
        return order.view([self._ledger.trades[t] for t in order.trade_ids])

    async def _save(self) -> None:
        await asyncio.to_thread(self._store.write, self._ledger.dumps())

    async def _sync(self) -> int:
        async with self._lock:
            return await self._sync_locked()

    async def _sync_locked(self) -> int:
        now = self.now_ms()
        if self._evaluate(now):
            await self._save()
        return now

    # --- internals: placing and filling --------------------------------------------------
    def _new_order(self, spec: MarketSpec, request: OrderRequest, now: int) -> SimOrder:
        buy = request.side == OrderSide.buy
        return SimOrder(
            id=self._ledger.new_order_id(),
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=request.side,
            type=request.type,
            amount=request.amount,
            price=request.price,
            stop_price=request.stop_price,
            timestamp=now,
            watch_from=now,
            reserve_asset=spec.quote if buy else spec.base,
        )

    def _check_funds(self, spec: MarketSpec, order: SimOrder, book: Book) -> None:
        if order.type == OrderType.market and order.is_buy:
            fills = walk_book(book, True, order.amount)
            need = sum((f.amount * f.price for f in fills), Decimal(0)) * (1 + self.fees.taker)
        else:
            need = reservation(order, self.fees)
        free = self._ledger.free(order.reserve_asset)
        if need > free:
            raise InsufficientFunds(
                f"{order.side.value} {order.amount} {spec.symbol} needs {need} "
                f"{order.reserve_asset} (including fees), but only {free} is free",
                exchange="sim",
            )

    def _place(self, order: SimOrder, book: Book, now: int) -> None:
        if order.type == OrderType.market:
            self._take(order, book, now, budget=None)
            self._finish_taker(order, "the book ran out of depth")
        elif order.type == OrderType.limit:
            self._take_then_rest(order, book, now)
        else:
            order.reserved = reservation(order, self.fees)

    def _take(self, order: SimOrder, book: Book, t_ms: int, budget: Decimal | None) -> None:
        spec = self._specs[order.symbol]
        fills = walk_book(book, order.is_buy, order.remaining, order.price, budget, self.fees.taker)
        for fill in fills:
            assets = (spec.base, spec.quote)
            fee = self.fees.taker
            self._ledger.record_fill(order, assets, (fill.price, fill.amount), fee, t_ms, True)

    def _take_then_rest(self, order: SimOrder, book: Book, t_ms: int) -> None:
        self._take(order, book, t_ms, budget=None)
        if order.remaining == 0:
            order.status = "closed"
        order.reserved = reservation(order, self.fees)
        order.watch_from = t_ms

    def _finish_taker(self, order: SimOrder, why: str) -> None:
        """A market execution is over: closed if complete, else the rest expires."""
        order.reserved = Decimal(0)
        if order.remaining == 0:
            order.status = "closed"
        else:
            order.status = "expired"
            order.reason = f"{why}; {order.remaining} of {order.amount} not filled"

    def _trigger(self, order: SimOrder, t_ms: int) -> None:
        order.triggered = True
        book = self._book(order.symbol, t_ms)
        if order.price is not None:
            self._take_then_rest(order, book, t_ms)
            return
        order.reserved = Decimal(0)  # what it held is now free to spend
        budget = self._ledger.free(order.reserve_asset) if order.is_buy else None
        self._take(order, book, t_ms, budget=budget)
        short = order.is_buy and budget is not None and order.remaining > 0
        self._finish_taker(order, "not enough free funds" if short else "the book ran out")

    def _maker_fill(self, order: SimOrder, t_ms: int) -> None:
        spec = self._specs[order.symbol]
        assert order.price is not None
        fill = (order.price, order.remaining)
        fee = self.fees.maker
        self._ledger.record_fill(order, (spec.base, spec.quote), fill, fee, t_ms, False)
        order.status = "closed"
        order.reserved = Decimal(0)

    # --- internals: watching the price ---------------------------------------------------
    def _evaluate(self, now: int) -> list[SimOrder]:
        """Apply every fill and trigger due between each open order's last check and
        `now`, in time order (a trigger can spend what an earlier fill paid)."""
        heap: list[tuple[int, int, str]] = []
        for order in self._ledger.open_orders():
            self._schedule(heap, order, now)
        changed: dict[str, SimOrder] = {}
        while heap:
            t_ms, _, order_id = heapq.heappop(heap)
            order = self._ledger.orders[order_id]
            if order.is_stop and not order.triggered:
                self._trigger(order, t_ms)
            else:
                self._maker_fill(order, t_ms)
            changed[order.id] = order
            if order.status == "open":
                self._schedule(heap, order, now)
        for order in self._ledger.open_orders():
            order.watch_from = max(order.watch_from, now)
        return list(changed.values())

    def _schedule(self, heap: list[tuple[int, int, str]], order: SimOrder, now: int) -> None:
        t_ms = self._next_event(order, now)
        if t_ms is not None:
            heapq.heappush(heap, (t_ms, int(order.id), order.id))

    def _next_event(self, order: SimOrder, now: int) -> int | None:
        """When the price next reaches the order's level. An order resting on the far
        side of its level (a buy above the price) waits until the price has moved one
        tick past it and comes back: it fills when the price trades through it."""
        level_dec, below = watched_level(order)
        level = float(level_dec)
        path = self._paths[order.symbol]
        start: int | None = order.watch_from
        if start is None or start > now:
            return None
        price = path.price_at(start)
        if price <= level if below else price >= level:
            tick = float(self._specs[order.symbol].price_step)
            away = level + tick if below else level - tick
            start = path.first_touch(start, now, away, not below)
            if start is None:
                return None
        return path.first_touch(start, now, level, below)
