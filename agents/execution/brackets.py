"""Attached stop-loss and take-profit placed on the exchange itself.

A position armed by an entry's `stop_loss`/`take_profit` is protected by orders resting
on the exchange when its adapter takes one-cancels-the-other pairs (`supports_oco`: the
sim, paper accounts and live Binance spot): a `bracket_sl` stop_loss and a `bracket_tp`
take_profit for the whole position, reduce-only, executing at market when triggered. The
exchange fires them even while execution is down, and the first to fire cancels the other
there.

`keep` brings the legs in line with the position: placed right after an arming entry
fills, and checked again on every reconciler pass (the position grew or shrank, a limit
entry filled later, the legs were cancelled by a halt, a restart). Legs are replaced
whole: cancel, then place anew. Execution's own monitor (sync.py) still watches a
position whose legs are not on the exchange (an exchange without pairs, a refusal,
a halt) and every trailing stop.

One `lock` serialises keeping with closing positions, so a close never races a fresh
pair for the same coins; a symbol with an order in flight is left until it lands.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from agents.execution import repository as repo
from agents.execution.exchange.base import ExchangeAdapter, ExchangeOrder
from agents.execution.exchange.errors import (
    AuthenticationError,
    ExchangeError,
    ExchangeTimeout,
    InsufficientFunds,
    InvalidOrder,
    NetworkError,
)
from agents.execution.service import SERVICE, OrderService
from common.contracts import OrderType, TradingState
from common.errors import VolexError
from common.models import Order, Position

log = logging.getLogger(__name__)
STOP_LEG, TARGET_LEG = "bracket_sl", "bracket_tp"
ROLES = (STOP_LEG, TARGET_LEG)


@dataclass(frozen=True)
class Legs:
    """What protects a position on the exchange: the closing side, the amount, and the
    trigger of each leg (None: no such leg)."""

    side: str
    amount: Decimal
    stop_loss: Decimal | None
    take_profit: Decimal | None


def wanted(pos: Position | None) -> Legs | None:
    """The legs a position asks for: its whole amount, on the closing side."""
    if pos is None or pos.amount == 0 or (pos.stop_loss is None and pos.take_profit is None):
        return None
    side = "sell" if pos.amount > 0 else "buy"
    return Legs(side, abs(pos.amount), pos.stop_loss, pos.take_profit)


def standing(legs: Sequence[Order]) -> Legs | None:
    """The legs on the exchange as one `Legs`, or None if they do not form one set."""
    if not legs or len({(o.side, o.amount) for o in legs}) != 1:
        return None
    by_role = {o.role: o for o in legs}
    if len(by_role) != len(legs):
        return None
    stop, target = by_role.get(STOP_LEG), by_role.get(TARGET_LEG)
    return Legs(
        legs[0].side,
        legs[0].amount,
        stop.stop_price if stop else None,
        target.stop_price if target else None,
    )


class Brackets:
    def __init__(self, orders: OrderService) -> None:
        self.orders = orders
        self.lock = asyncio.Lock()
        # Legs an exchange refused, per (exchange, symbol): not asked again until the
        # position wants different legs (execution's monitor protects it meanwhile).
        self.refused: dict[tuple[str, str], Legs] = {}
        self.halt_reason: str | None = None  # set while the lock is held, acted on after

    # --- hooks of the order path -------------------------------------------------------
    async def after_fill(self, order: Order) -> None:
        """An entry with brackets is done: protect its position before the caller hears."""
        if order.role != "entry" or order.filled <= 0 or order.status not in repo.FINAL:
            return
        if order.stop_loss is None and order.take_profit is None:
            return
        self.refused.pop((order.exchange, order.symbol), None)  # asked anew: try again
        await self.keep(order.exchange, order.symbol)

    async def make_way(self, order: Order) -> bool:
        """`order` was refused for funds: cancel our legs that hold what it would sell
        (they follow the smaller position on the next pass). True if any were."""
        cancelled = False
        async with self.lock:
            for leg in await self.orders.db(self._legs, order.exchange, order.symbol):
                if leg.side == order.side and leg.status in repo.LIVE:
                    await self.orders.cancel(leg)
                    cancelled = True
        if cancelled:
            log.info(
                "protective legs cancelled to make way for an order",
                extra={"exchange": order.exchange, "symbol": order.symbol, "order": order.id},
            )
        return cancelled

    # --- keeping -------------------------------------------------------------------------
    async def keep(self, exchange: str, symbol: str | None = None) -> None:
        adapter = self.orders.exchanges.get(exchange)
        if not adapter.supports_oco:
            return
        async with self.lock:
            if self.orders.gate == TradingState.HALTED:
                return  # a halt cancelled them; the monitor protects until resume
            positions, legs = await self._book(exchange, symbol)
            for key in [k for k in self.refused if k[0] == exchange and k[1] not in positions]:
                if symbol in (None, key[1]):
                    del self.refused[key]  # that position is gone
            busy = set(self.orders.in_flight.values())
            for name in sorted(set(positions) | set(legs)):
                if (exchange, name) in busy:
                    continue  # an order on its way changes the position: after it lands
                try:
                    await self._keep_one(
                        adapter, exchange, name, positions.get(name), legs.get(name, [])
                    )
                except (VolexError, ExchangeError) as exc:
                    log.warning(
                        "could not keep protective legs",
                        extra={"exchange": exchange, "symbol": name, "reason": str(exc)},
                    )
        if self.halt_reason is not None:
            reason, self.halt_reason = self.halt_reason, None
            await self.orders.halt(reason)

    async def _keep_one(
        self,
        adapter: ExchangeAdapter,
        exchange: str,
        symbol: str,
        pos: Position | None,
        legs: list[Order],
    ) -> None:
        if any(leg.status in repo.UNSETTLED for leg in legs):
            return  # the reconciler finds out first what the exchange has
        want, have = wanted(pos), standing(legs)
        if want == have:
            return
        if want is not None and self.refused.get((exchange, symbol)) == want:
            return
        for leg in legs:
            cancelled = await self.orders.cancel(leg)
            if cancelled.filled > leg.filled:
                return  # it filled as we cancelled it: the position changed; next pass
        if want is not None:
            await self._place(adapter, exchange, symbol, want)

    async def _place(
        self, adapter: ExchangeAdapter, exchange: str, symbol: str, want: Legs
    ) -> None:
        token = uuid.uuid4().hex[:20]
        values = [
            _leg_values(exchange, symbol, want, role, kind, trigger, token)
            for role, kind, trigger in (
                (STOP_LEG, OrderType.stop_loss, want.stop_loss),
                (TARGET_LEG, OrderType.take_profit, want.take_profit),
            )
            if trigger is not None
        ]
        claimed = await self.orders.claim_all(values, SERVICE)
        with self.orders.flying(claimed):
            answers = await self._create(adapter, claimed, want)
        if answers is None:
            return
        # Both legs in one transaction: a reader sees the pair open, never one leg of it.
        await self.orders.record_all(
            [(leg.id, ex) for leg, ex in zip(claimed, answers, strict=True)]
        )
        self.refused.pop((exchange, symbol), None)
        self.orders.wake_relay()

    async def _create(
        self, adapter: ExchangeAdapter, claimed: list[Order], want: Legs
    ) -> Sequence[ExchangeOrder] | None:
        """Send the claimed legs; None when the exchange did not take them (recorded)."""
        first = claimed[0]
        try:
            if len(claimed) == 2:
                assert want.stop_loss is not None and want.take_profit is not None
                return await adapter.create_oco(
                    first.symbol,
                    want.side,
                    want.amount,
                    want.stop_loss,
                    want.take_profit,
                    client_order_ids=(first.client_order_id, claimed[1].client_order_id),
                )
            return [
                await adapter.create_order(
                    first.symbol,
                    want.side,
                    first.type,
                    want.amount,
                    stop_price=first.stop_price,
                    client_order_id=first.client_order_id,
                )
            ]
        except (ExchangeTimeout, NetworkError) as exc:
            await self._finish_all(claimed, "unknown", str(exc))  # reconciled by client id
        except (InvalidOrder, InsufficientFunds) as exc:  # the monitor protects instead
            self.refused[(first.exchange, first.symbol)] = want
            await self._finish_all(claimed, "rejected", str(exc))
            log.warning(
                "exchange refused protective legs; execution watches the position instead",
                extra={"exchange": first.exchange, "symbol": first.symbol, "reason": str(exc)},
            )
        except AuthenticationError as exc:
            await self._finish_all(claimed, "rejected", str(exc))
            # Halted once the lock is released: the kill switch takes it too.
            self.halt_reason = f"{first.exchange} rejected our credentials: {exc}"
        except ExchangeError as exc:  # anything else: not taken; the monitor protects
            self.refused[(first.exchange, first.symbol)] = want
            await self._finish_all(claimed, "rejected", str(exc))
            log.warning(
                "protective legs not placed; execution watches the position instead",
                extra={"exchange": first.exchange, "symbol": first.symbol, "reason": str(exc)},
            )
        return None

    async def _finish_all(self, claimed: list[Order], status: str, reason: str) -> None:
        for leg in claimed:
            await self.orders.db(self.orders._finish, leg.id, status, reason, SERVICE)

    # --- reads -----------------------------------------------------------------------------
    async def _book(
        self, exchange: str, symbol: str | None
    ) -> tuple[dict[str, Position], dict[str, list[Order]]]:
        """Armed positions and the legs not yet final, by symbol."""
        positions = {
            p.symbol: p
            for p in await self.orders.positions(exchange)
            if (symbol is None or p.symbol == symbol)
            and (p.stop_loss is not None or p.take_profit is not None)
        }
        legs: dict[str, list[Order]] = {}
        for leg in await self.orders.db(self._legs, exchange, symbol):
            legs.setdefault(leg.symbol, []).append(leg)
        return positions, legs

    def _legs(self, exchange: str, symbol: str | None) -> list[Order]:
        with self.orders.sessions() as session:
            return list(repo.brackets(session, exchange, ROLES, symbol))

    async def protected(self, exchange: str) -> set[str]:
        """The symbols with legs the exchange has confirmed. Legs not yet settled (no
        answer yet) do not count: the monitor keeps watching meanwhile."""
        legs = await self.orders.db(self._legs, exchange, None)
        return {leg.symbol for leg in legs if leg.status in repo.LIVE}


def _leg_values(
    exchange: str,
    symbol: str,
    want: Legs,
    role: str,
    kind: OrderType,
    trigger: Decimal | None,
    token: str,
) -> dict[str, Any]:
    return {
        "client_order_id": f"{'sl' if role == STOP_LEG else 'tp'}-{token}",
        "exchange": exchange,
        "symbol": symbol,
        "side": want.side,
        "type": kind.value,
        "amount": want.amount,
        "stop_price": trigger,
        "reduce_only": True,
        "role": role,
        "requested_by": SERVICE,
    }
