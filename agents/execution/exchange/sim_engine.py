"""The sim's matching engine: places orders on the synthetic book and fills resting
orders from the price path.

Market orders and the marketable part of limit orders walk the book as taker. The rest
of a limit order rests and fills in full at its limit price, as maker, once the price
trades through it (an order resting on the far side of its level, such as a buy above
the price, waits until the price has moved a tick past it and comes back). Stops
trigger when the price reaches them and then execute at market, or as a limit order
when they carry a price. Events are applied in time order along the whole path since
each order was last checked, so a big jump of the clock gives the same fills as many
small ones.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from decimal import Decimal

from agents.execution.exchange.errors import InsufficientFunds
from agents.execution.exchange.sim_markets import Depth, Fees, MarketSpec, make_book, walk_book
from agents.execution.exchange.sim_prices import SymbolPath
from agents.execution.exchange.sim_rules import (
    Listing,
    OrderRequest,
    check_against_market,
    reservation,
    watched_level,
)
from agents.execution.exchange.sim_state import Ledger, SimOrder
from common.contracts import OrderSide, OrderType


class Engine:
    """Matching for one sim account. Not locked: the caller serialises calls."""

    def __init__(
        self,
        ledger: Ledger,
        specs: Mapping[str, Listing],
        paths: Mapping[str, SymbolPath],
        fees: Fees,
    ) -> None:
        self.ledger = ledger
        self.specs = specs
        self.paths = paths
        self.fees = fees

    def book(self, symbol: str, t_ms: int) -> Depth:
        path, spec = self.paths[symbol], self.specs[symbol]
        assert isinstance(spec, MarketSpec)  # the sim's own listings have a price model
        return make_book(spec, path.price_at(t_ms), path.sigma_ratio_at(t_ms))

    def place(self, request: OrderRequest, now: int) -> SimOrder:
        """Accept an order at `now` (or raise InvalidOrder/InsufficientFunds) and execute
        what it can at once."""
        spec = self.specs[request.symbol]
        book = self.book(request.symbol, now)
        check_against_market(spec, request, book)
        order = self._new_order(spec, request, now)
        self._check_funds(spec, order, book)
        self.ledger.add_order(order)
        if order.type == OrderType.market:
            self._take(order, book, now, budget=None)
            self._finish_taker(order, "the book ran out of depth")
        elif order.type == OrderType.limit:
            self._take_then_rest(order, book, now)
        else:
            order.reserved = reservation(order, self.fees)
        return order

    def place_pair(
        self, stop: OrderRequest, target: OrderRequest, now: int
    ) -> tuple[SimOrder, SimOrder]:
        """Accept a one-cancels-the-other pair (from `parse_pair`): a stop_loss and a
        take_profit for the same amount on the same side. Both wait; the first to trigger
        cancels the other, and so does cancelling either. The pair holds one reservation,
        the larger leg's, on its stop."""
        spec = self.specs[stop.symbol]
        book = self.book(stop.symbol, now)
        for request in (stop, target):
            check_against_market(spec, request, book)
        legs = self._new_order(spec, stop, now), self._new_order(spec, target, now)
        need = max(reservation(leg, self.fees) for leg in legs)
        self._require_free(spec, legs[0], need)
        legs[0].linked, legs[1].linked = legs[1].id, legs[0].id
        for leg in legs:
            self.ledger.add_order(leg)
        legs[0].reserved = need
        return legs

    def cancel(self, order: SimOrder) -> None:
        self.ledger.cancel(order)

    def _new_order(self, spec: Listing, request: OrderRequest, now: int) -> SimOrder:
        buy = request.side == OrderSide.buy
        return SimOrder(
            id=self.ledger.new_order_id(),
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

    def _check_funds(self, spec: Listing, order: SimOrder, book: Depth) -> None:
        if order.type == OrderType.market and order.is_buy:
            fills = walk_book(book, True, order.amount)
            need = sum((f.amount * f.price for f in fills), Decimal(0)) * (1 + self.fees.taker)
        else:
            need = reservation(order, self.fees)
        self._require_free(spec, order, need)

    def _require_free(self, spec: Listing, order: SimOrder, need: Decimal) -> None:
        free = self.ledger.free(order.reserve_asset)
        if need > free:
            raise InsufficientFunds(
                f"{order.side.value} {order.amount} {spec.symbol} needs {need} "
                f"{order.reserve_asset} (including fees), but only {free} is free",
                exchange="sim",
            )

    def _take(self, order: SimOrder, book: Depth, t_ms: int, budget: Decimal | None) -> None:
        spec = self.specs[order.symbol]
        fills = walk_book(book, order.is_buy, order.remaining, order.price, budget, self.fees.taker)
        for fill in fills:
            assets = (spec.base, spec.quote)
            fee = self.fees.taker
            self.ledger.record_fill(order, assets, (fill.price, fill.amount), fee, t_ms, True)

    def _take_then_rest(self, order: SimOrder, book: Depth, t_ms: int) -> None:
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
        # First the other leg of a pair: what it held is then free for this one to spend.
        self.ledger.cancel_partner(order, f"the other leg of its pair (order {order.id}) triggered")
        order.triggered = True
        book = self.book(order.symbol, t_ms)
        if order.price is not None:
            self._take_then_rest(order, book, t_ms)
            return
        order.reserved = Decimal(0)  # what it held is now free to spend
        budget = self.ledger.free(order.reserve_asset) if order.is_buy else None
        self._take(order, book, t_ms, budget=budget)
        short = order.is_buy and budget is not None and order.remaining > 0
        self._finish_taker(order, "not enough free funds" if short else "the book ran out")

    def _maker_fill(self, order: SimOrder, t_ms: int) -> None:
        spec = self.specs[order.symbol]
        assert order.price is not None
        fill = (order.price, order.remaining)
        fee = self.fees.maker
        self.ledger.record_fill(order, (spec.base, spec.quote), fill, fee, t_ms, False)
        order.status = "closed"
        order.reserved = Decimal(0)

    def evaluate(self, now: int) -> list[SimOrder]:
        """Apply every fill and trigger due between each open order's last check and
        `now`, in time order (a trigger can spend what an earlier fill paid)."""
        heap: list[tuple[int, int, str]] = []
        for order in self.ledger.open_orders():
            self._schedule(heap, order, now)
        changed: dict[str, SimOrder] = {}
        while heap:
            t_ms, _, order_id = heapq.heappop(heap)
            order = self.ledger.orders[order_id]
            if order.status != "open":
                continue  # the other leg of its pair triggered first
            if order.is_stop and not order.triggered:
                self._trigger(order, t_ms)
                if order.linked:
                    changed[order.linked] = self.ledger.orders[order.linked]
            else:
                self._maker_fill(order, t_ms)
            changed[order.id] = order
            if order.status == "open":
                self._schedule(heap, order, now)
        for order in self.ledger.open_orders():
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
        path = self.paths[order.symbol]
        start: int | None = order.watch_from
        if start is None or start > now:
            return None
        price = path.price_at(start)
        if price <= level if below else price >= level:
            tick = float(self.specs[order.symbol].price_step)
            away = level + tick if below else level - tick
            start = path.first_touch(start, now, away, not below)
            if start is None:
                return None
        return path.first_touch(start, now, level, below)
