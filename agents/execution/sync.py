"""Keeping our ledger true to the exchanges: reconciliation, protective exits, kill switch.

Runs in the background of the execution process. At start-up every order not in
a final state is reconciled with its exchange before /health reports ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from decimal import Decimal
from typing import Any

from agents.execution import repository as repo
from agents.execution.brackets import Brackets
from agents.execution.exchange.base import ExchangeOrder
from agents.execution.exchange.errors import ExchangeError, OrderNotFound
from agents.execution.service import SERVICE, STARTING, OrderService, audit
from common.contracts import ApplyTradingState, ApplyTradingStateResult, TradingState
from common.errors import VolexError
from common.models import Order, Position

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, orders: OrderService, brackets: Brackets, unknown_grace: float) -> None:
        self.orders = orders
        self.brackets = brackets
        self.unknown_grace = unknown_grace
        self.ready = False
        self.detail = STARTING
        self.kill_lock = asyncio.Lock()
        # Closing and keeping protective legs change the same coins: one at a time.
        self.close_lock = brackets.lock

    async def health(self) -> tuple[bool, str]:
        return self.ready, self.detail

    # --- reconciliation ---------------------------------------------------------------
    async def startup(self) -> None:
        """Reconcile every non-final order, whatever its age, then report ready."""
        for adapter in self.orders.exchanges.adapters.values():
            warm_up = getattr(adapter, "warm_up", None)
            if warm_up is not None:
                await warm_up()  # the sim builds its price history once per process
        while not self.ready:
            step = STARTING
            try:
                await self.sync_once(startup=True)
                step = "trading state unknown (risk has not told it)"
                state = await self.orders.agents.risk.get_model("/state", ApplyTradingState)
                if state.state == TradingState.HALTED:
                    step = "trading is HALTED and what was open is not cancelled yet"
                    await self.apply(state)
                self.ready, self.detail = True, "orders reconciled"
                self.orders.unready = None
            except (VolexError, ExchangeError) as exc:
                self.detail = self.orders.unready = f"{step}: {exc}"
                log.warning("start-up not done; retrying", extra={"reason": self.detail})
                await asyncio.sleep(1.0)

    async def sync_once(self, *, startup: bool = False) -> None:
        for exchange, adapter in self.orders.exchanges.adapters.items():
            poll = getattr(adapter, "poll", None)
            if poll is not None:
                await poll()
            for order in await self.orders.db(self._unsettled, exchange):
                if order.id in self.orders.in_flight:
                    continue  # its request is talking to the exchange right now
                try:
                    await self._reconcile(order, startup=startup)
                except (VolexError, ExchangeError) as exc:
                    if startup:
                        raise
                    log.warning("could not reconcile order %s: %s", order.id, exc)

    def _unsettled(self, exchange: str) -> list[Order]:
        with self.orders.sessions() as session:
            return list(repo.unsettled(session, exchange))

    async def _reconcile(self, order: Order, *, startup: bool) -> None:
        adapter = self.orders.exchanges.get(order.exchange)
        age = time.time() - order.updated_at.timestamp()
        if order.status in repo.UNSETTLED and not startup and age < self.unknown_grace / 4:
            return  # possibly still in flight in a request
        ex: ExchangeOrder | None
        try:
            if order.exchange_order_id:
                ex = await adapter.fetch_order(order.exchange_order_id, order.symbol)
            else:
                ex = await adapter.fetch_order_by_client_id(order.client_order_id, order.symbol)
        except OrderNotFound:
            ex = None
        if ex is not None:
            await self.orders.record(order.id, ex)
        elif order.status in repo.UNSETTLED and (startup or age >= self.unknown_grace):
            await self.orders.db(
                self.orders._finish,
                order.id,
                "rejected",
                "never reached the exchange (not found by client order id); not re-sent",
                SERVICE,
            )
        else:
            return
        self.orders.settled(order.id)
        self.orders.wake_relay()

    # --- protective exits ------------------------------------------------------------------
    async def check_exits(self) -> None:
        """Close a position once when its stop-loss, take-profit or trailing stop is hit.
        Stop-loss and take-profit resting on the exchange (brackets.py) are the
        exchange's to fire; the trailing stop is always watched here."""
        for exchange in self.orders.exchanges.adapters:
            rows = await self._armed(exchange)
            protected = await self.brackets.protected(exchange) if rows else set()
            for pos in rows:
                try:
                    await self._check_exit(exchange, pos, pos.symbol in protected)
                except (VolexError, ExchangeError) as exc:
                    log.error("protective exit failed for %s %s: %s", exchange, pos.symbol, exc)

    async def _check_exit(self, exchange: str, pos: Position, on_exchange: bool) -> None:
        legs = (pos.stop_loss, pos.take_profit, pos.trailing_stop_pct, pos.trail_extreme)
        if on_exchange and pos.trailing_stop_pct is None:
            return
        mark, _ = await self.orders.exchanges.mark(exchange, pos.symbol)
        trigger = await self.orders.db(
            self._trail_and_test, exchange, pos.symbol, mark, on_exchange
        )
        if not trigger:
            return
        try:
            closed, errors = await self.close(
                exchange, pos.symbol, f"{trigger} at {mark:.2f}", role=trigger
            )
        except (VolexError, ExchangeError) as exc:
            closed, errors = [], [str(exc)]
        if errors or not closed:
            # The exit did not go out: put the legs back so the next pass tries again.
            await self.orders.db(self._rearm, exchange, pos.symbol, legs)
            raise VolexError(f"{trigger} exit not sent: {'; '.join(errors) or 'nothing closed'}")

    def _rearm(self, exchange: str, symbol: str, legs: tuple[Any, ...]) -> None:
        with self.orders.sessions.begin() as session:
            pos = repo.position(session, exchange, symbol)
            if pos.amount != 0:
                pos.stop_loss, pos.take_profit, pos.trailing_stop_pct, pos.trail_extreme = legs

    async def _armed(self, exchange: str) -> list[Position]:
        return [
            p
            for p in await self.orders.positions(exchange)
            if p.stop_loss or p.take_profit or p.trailing_stop_pct
        ]

    def _trail_and_test(
        self, exchange: str, symbol: str, mark: Decimal, trailing_only: bool
    ) -> str | None:
        with self.orders.sessions.begin() as session:
            pos = repo.position(session, exchange, symbol)
            long = pos.amount > 0
            _trail(pos, mark, long)
            hit = _triggered(pos, mark, long, trailing_only)
            if hit:  # disarm in the same transaction: a second look finds nothing to fire
                pos.stop_loss = pos.take_profit = pos.trailing_stop_pct = None
                pos.trail_extreme = None
                audit(
                    session,
                    "position.exit_triggered",
                    SERVICE,
                    f"{exchange}:{symbol}",
                    trigger=hit,
                    mark=str(mark),
                )
            return hit

    # --- closing and the kill switch --------------------------------------------------------
    async def close(
        self, exchange: str, symbol: str | None, reason: str, role: str = "close"
    ) -> tuple[list[Order], list[str]]:
        """Market orders that take positions to zero (reduce-only; no new risk).

        One close at a time, reading positions afresh, so two closers (a stop and a halt,
        say) never both sell the same amount; our resting orders on the symbol are
        cancelled first, which also frees the coins they hold.
        """
        closed: list[Order] = []
        errors: list[str] = []
        async with self.close_lock:
            for pos in await self.orders.positions(exchange):
                if symbol is not None and pos.symbol != symbol:
                    continue
                try:
                    order = await self._close_one(exchange, pos, reason, role)
                except (VolexError, ExchangeError) as exc:
                    errors.append(f"{pos.symbol}: {exc}")
                    continue
                if order is not None:
                    closed.append(order)
        return closed, errors

    async def _close_one(
        self, exchange: str, pos: Position, reason: str, role: str
    ) -> Order | None:
        """Cancel the symbol's orders, then close what is left. The position is read again
        after the cancels: an order that filled meanwhile (a protective leg that fired as
        we cancelled it) has changed it. None when nothing is left to close."""
        _, cancel_errors = await self.cancel_all(exchange, pos.symbol)
        if cancel_errors:
            raise VolexError("; ".join(cancel_errors))
        held = await self.orders.db(self._held, exchange, pos.symbol)
        if held == 0:
            return None
        values = {
            "client_order_id": f"{role[:8]}-{int(time.time() * 1000)}-{pos.symbol}"[:64],
            "exchange": exchange,
            "symbol": pos.symbol,
            "side": "sell" if held > 0 else "buy",
            "type": "market",
            "amount": abs(held),
            "reduce_only": True,
            "role": role,
            "requested_by": SERVICE,
            "reason": reason,
        }
        order = await self.orders.claim(values, SERVICE)
        if order is None:
            raise VolexError(f"close order id {values['client_order_id']} already used")
        return await self.orders.send(order)

    def _held(self, exchange: str, symbol: str) -> Decimal:
        with self.orders.sessions() as session:
            return repo.held(session, exchange, symbol)

    async def cancel_all(
        self, exchange: str | None, symbol: str | None = None
    ) -> tuple[list[Order], list[str]]:
        cancelled, errors = [], []
        for order in await self.orders.live(exchange):
            if symbol is not None and order.symbol != symbol:
                continue
            try:
                cancelled.append(await self.orders.cancel(order))
            except (ExchangeError, VolexError) as exc:
                errors.append(f"order {order.id}: {exc}")
        return cancelled, errors

    async def apply(self, command: ApplyTradingState) -> ApplyTradingStateResult:
        """Take the new trading state. HALTED: close the gate first (nothing new leaves,
        even if risk approved it a moment ago), let orders already on their way land,
        cancel every open order on every exchange and, with flatten, close positions."""
        self.orders.gate, self.orders.gate_reason = command.state, command.reason
        if command.state != TradingState.HALTED:
            return ApplyTradingStateResult(cancelled_orders=0, closed_positions=0)
        async with self.kill_lock:
            await self._drain_in_flight()
            # Under the lock that keeps protective legs: none is placed behind our back.
            async with self.close_lock:
                cancelled, errors = await self.cancel_all(None)
            closed = 0
            if command.flatten:
                for exchange in self.orders.exchanges.adapters:
                    done, failed = await self.close(exchange, None, command.reason, "flatten")
                    closed += len(done)
                    errors += [f"flatten {exchange} {e}" for e in failed]
        log.warning("kill switch applied", extra={"cancelled": len(cancelled), "closed": closed})
        return ApplyTradingStateResult(
            cancelled_orders=len(cancelled), closed_positions=closed, errors=errors
        )

    async def _drain_in_flight(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.orders.idle.wait(), timeout)

    async def snapshot(self) -> None:
        """Tell risk what the account is worth: its drawdown breaker and VaR feed on this."""
        for exchange in self.orders.exchanges.adapters:
            portfolio, _ = await self.orders.portfolio(exchange)
            await self.orders.agents.risk.post(
                "/portfolio/snapshots", json=portfolio.model_dump(mode="json")
            )

    async def run(self, interval: float, snapshot_interval: float) -> None:
        await self.startup()
        next_snapshot = time.monotonic() + snapshot_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync_once()
            except (VolexError, ExchangeError) as exc:
                log.warning("sync failed", extra={"reason": str(exc)})
            try:
                for exchange in self.orders.exchanges.adapters:
                    await self.brackets.keep(exchange)
                await self.check_exits()
                if time.monotonic() >= next_snapshot:
                    next_snapshot = time.monotonic() + snapshot_interval
                    await self.snapshot()
            except (VolexError, ExchangeError) as exc:
                log.warning("sync failed", extra={"reason": str(exc)})
            except Exception:
                log.exception("sync crashed; continuing")


def _trail(pos: Position, mark: Decimal, long: bool) -> None:
    """A trailing stop follows the best price since entry: the highest of a long, the
    lowest of a short. It never moves back."""
    if pos.trailing_stop_pct is None or pos.trail_extreme is None:
        return
    if mark > pos.trail_extreme if long else mark < pos.trail_extreme:
        pos.trail_extreme = mark


def _triggered(pos: Position, mark: Decimal, long: bool, trailing_only: bool) -> str | None:
    """The protective exit `mark` reaches, if any. With `trailing_only` the stop-loss and
    take-profit rest on the exchange, which fires them: only the trailing stop is ours."""
    if pos.amount == 0:
        return None
    if not trailing_only:
        if pos.stop_loss is not None and (mark <= pos.stop_loss if long else mark >= pos.stop_loss):
            return "stop_loss"
        if pos.take_profit is not None and (
            mark >= pos.take_profit if long else mark <= pos.take_profit
        ):
            return "take_profit"
    if pos.trailing_stop_pct is not None and pos.trail_extreme is not None:
        distance = pos.trail_extreme * pos.trailing_stop_pct
        if (
            (mark <= pos.trail_extreme - distance)
            if long
            else (mark >= pos.trail_extreme + distance)
        ):
            return "trailing_stop"
    return None
