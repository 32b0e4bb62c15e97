"""`sim`: the offline simulated exchange, a paper account on a synthetic market.

Prices come from `sim_prices` (a pure function of seed, symbol and time), the book
from `sim_markets`, the order rules from `sim_rules`, matching from `sim_engine`, the
durable account from `sim_state`. This module is the exchange's API: the boundary
every call crosses (closed check, latency, injected faults), one asyncio lock around
the account, and a durable save before any call that changed the account returns.
Resting orders are brought up to the present at the start of every call and on
`poll()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
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
    ExchangeError,
    ExchangeTimeout,
    InvalidOrder,
    NetworkError,
    OrderNotFound,
    RateLimited,
)
from agents.execution.exchange.sim_engine import Engine
from agents.execution.exchange.sim_markets import DEFAULT_MARKETS, Fees, MarketSpec
from agents.execution.exchange.sim_prices import EPOCH_MS, MINUTE_MS, TIMEFRAMES, shared_path
from agents.execution.exchange.sim_rules import check_unused, parse_pair, parse_request
from agents.execution.exchange.sim_state import Ledger, SimOrder, StateStore
from common.contracts import OrderSide, OrderType
from common.money import to_step

P = ParamSpec("P")
R = TypeVar("R")
FAULT_KINDS = (
    "reject",
    "timeout_after_accept",
    "hang_after_accept",
    "network_error",
    "rate_limited",
    "auth_error",
)
AFTER_ACCEPT = ("timeout_after_accept", "hang_after_accept")
HANG_SECONDS = 120.0
OPERATIONS = (
    "load_markets",
    "fetch_ticker",
    "fetch_order_book",
    "fetch_ohlcv",
    "fetch_balance",
    "create_order",
    "create_oco",
    "fetch_order",
    "fetch_order_by_client_id",
    "fetch_open_orders",
    "cancel_order",
    "fetch_my_trades",
    "poll",
)
MAX_OHLCV_LIMIT = 5000


@dataclass
class Fault:
    """A fault armed on the sim: the next `times` calls of `op` fail with `kind`."""

    kind: str
    op: str
    times: int
    hang_s: float = HANG_SECONDS


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
        taken = self._take_fault(op)
        fault = taken.kind if taken is not None else None
        if fault is not None and fault not in AFTER_ACCEPT:
            raise _fault_error(fault, op)
        result = await fn(self, *args, **kwargs)
        if taken is not None and fault == "hang_after_accept":
            # Accepted and saved, then no answer for a long time: the window in which a
            # crash of the caller leaves an order it never heard about (crash drills), or
            # in which the order is on its way for everything else that happens meanwhile.
            await asyncio.sleep(taken.hang_s)
        if fault in AFTER_ACCEPT:
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
    (done and persisted, then ExchangeTimeout), "hang_after_accept" (done and persisted,
    then silence, HANG_SECONDS unless told otherwise, before the timeout), "rate_limited",
    "auth_error".
    """

    id = "sim"
    supports_oco = True

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
        self._faults: list[Fault] = []
        self._lock = asyncio.Lock()
        self._changes = self._written = 0  # changes staged, and those on disk
        self._writing: asyncio.Future[None] | None = None
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
        self._engine = Engine(ledger, self._specs, self._paths, self.fees)

    # --- faults and time ---------------------------------------------------------------
    def inject_fault(
        self, kind: str, op: str = "create_order", times: int = 1, hang_s: float = HANG_SECONDS
    ) -> None:
        """Make the next `times` calls of `op` ("*" for any call) fail with `kind`
        (`hang_after_accept`: silent for `hang_s` seconds before its timeout)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        if op != "*" and op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}; one of {', '.join(OPERATIONS)} or *")
        if times < 1:
            raise ValueError("times must be at least 1")
        if hang_s <= 0:
            raise ValueError("hang_s must be positive")
        self._faults.append(Fault(kind, op, times, hang_s))

    def clear_faults(self) -> None:
        self._faults.clear()

    def armed_faults(self) -> list[Fault]:
        """The faults still armed, in the order they apply (copies)."""
        return [replace(fault) for fault in self._faults]

    def _take_fault(self, op: str) -> Fault | None:
        for fault in self._faults:
            if fault.op in (op, "*"):
                fault.times -= 1
                if fault.times == 0:
                    self._faults.remove(fault)
                return fault
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
        book = self._engine.book(symbol, now)
        last = to_step(Decimal(repr(book.mid)), spec.price_step, ROUND_HALF_EVEN)
        return Ticker(symbol=symbol, bid=book.bid, ask=book.ask, last=last, timestamp=now)

    @_boundary
    async def fetch_order_book(self, symbol: str, limit: int = 20) -> OrderBook:
        self._spec(symbol)
        now = await self._sync()
        book = self._engine.book(symbol, now)
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
        async with self._account():
            self._sync_locked()
            return self._ledger.balance_sheet()

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
        async with self._account():
            now = self._sync_locked()
            check_unused(self._ledger.by_client_id, client_order_id, "sim")
            order = self._engine.place(request, now)
            self._save()
            return self._view(order)

    @_boundary
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
        spec = self._spec(symbol)
        stop, target = parse_pair(spec, side, amount, stop_loss, take_profit, client_order_ids)
        async with self._account():
            now = self._sync_locked()
            for cid in client_order_ids:
                check_unused(self._ledger.by_client_id, cid, "sim")
            legs = self._engine.place_pair(stop, target, now)
            self._save()
            return self._view(legs[0]), self._view(legs[1])

    @_boundary
    async def cancel_order(self, order_id: str, symbol: str) -> ExchangeOrder:
        async with self._account():
            self._sync_locked()
            order = self._find(order_id, symbol)
            if order.status != "open":
                raise InvalidOrder(
                    f"order {order_id} is {order.status} (filled {order.filled} of "
                    f"{order.amount}); nothing to cancel",
                    exchange="sim",
                    order_status=order.status,
                )
            self._engine.cancel(order)
            self._save()
            return self._view(order)

    @_boundary
    async def fetch_order(self, order_id: str, symbol: str) -> ExchangeOrder:
        async with self._account():
            self._sync_locked()
            return self._view(self._find(order_id, symbol))

    @_boundary
    async def fetch_order_by_client_id(
        self, client_order_id: str, symbol: str
    ) -> ExchangeOrder | None:
        async with self._account():
            self._sync_locked()
            order_id = self._ledger.by_client_id.get(client_order_id)
            order = self._ledger.orders.get(order_id) if order_id else None
            if order is None or order.symbol != symbol:
                return None
            return self._view(order)

    @_boundary
    async def fetch_open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        async with self._account():
            self._sync_locked()
            return [
                self._view(o)
                for o in self._ledger.open_orders()
                if symbol is None or o.symbol == symbol
            ]

    @_boundary
    async def fetch_my_trades(
        self, symbol: str | None = None, since_ms: int | None = None
    ) -> list[Trade]:
        async with self._account():
            self._sync_locked()
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
        async with self._account():
            changed = self._engine.evaluate(self.now_ms())
            if changed:
                self._save()
            return [self._view(o) for o in changed]

    async def close(self) -> None:
        async with self._lock:
            if not self._closed:
                self._closed = True
                await self._durable()  # (under the lock: nothing is staged meanwhile)
                self._store.close()

    # --- internals: lookups --------------------------------------------------------------
    def _spec(self, symbol: str) -> MarketSpec:
        spec = self._specs.get(symbol)
        if spec is None:
            raise BadSymbol(
                f"unknown symbol {symbol!r}; sim lists {', '.join(self._specs)}", exchange="sim"
            )
        return spec

    def _find(self, order_id: str, symbol: str) -> SimOrder:
        order = self._ledger.orders.get(order_id)
        if order is None or order.symbol != symbol:
            raise OrderNotFound(f"no order {order_id!r} for {symbol}", exchange="sim")
        return order

    def _view(self, order: SimOrder) -> ExchangeOrder:
        return order.view([self._ledger.trades[t] for t in order.trade_ids])

    def _save(self) -> None:
        """Stage what changed (under the lock); `_durable` puts it on disk."""
        self._store.stage(self._ledger)
        self._changes += 1

    @contextlib.asynccontextmanager
    async def _account(self) -> AsyncIterator[None]:
        """The account, one call at a time; on the way out, whatever the call changed or
        read is on disk before its caller hears of it (`_durable`)."""
        async with self._lock:
            yield
        await self._durable()

    async def _durable(self) -> None:
        """Return once every change made so far is on disk. One write at a time takes all
        that was staged meanwhile, so calls made together share one fsync (group commit,
        as a database does); the lock is not held while the disk works. (An fsync per
        order under the lock made the sim the order path's slowest stage under load.)"""
        target = self._changes
        while self._written < target:
            if self._writing is None:
                self._writing = asyncio.ensure_future(self._write())
            await asyncio.shield(self._writing)

    async def _write(self) -> None:
        upto, staged = self._changes, self._store.take()
        try:
            await asyncio.to_thread(self._store.write_staged, staged)
        except OSError as exc:
            self._store.lost()  # the next write is a whole snapshot
            # Taken in memory, not on disk: for the callers, an outcome unknown.
            raise ExchangeTimeout(
                f"sim could not write its journal ({exc}); the change may stand: "
                "reconcile by client order id",
                exchange="sim",
            ) from exc
        except BaseException:
            self._store.lost()
            raise
        finally:
            self._writing = None
        self._written = upto

    async def _sync(self) -> int:
        async with self._account():
            return self._sync_locked()

    def _sync_locked(self) -> int:
        now = self.now_ms()
        if self._engine.evaluate(now):
            self._save()
        return now
