"""The simulated account: orders, trades and balances, and the JSON file they live in.

Every change is written with temp file + fsync + rename (+ fsync of the directory)
before the call that made it returns, so a crash loses nothing that was confirmed.
The state directory is locked (flock) while a `SimExchange` uses it: two processes
writing one account would silently lose orders.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import orjson

from agents.execution.exchange.base import Balance, ExchangeOrder, OrderStatus, Trade
from agents.execution.exchange.errors import ExchangeError
from common.contracts import OrderSide, OrderType
from common.money import quantize

STATE_FILE = "sim-account.json"
JOURNAL_FILE = "sim-account.journal"
LOCK_FILE = "sim-account.lock"
# Journal entries before the snapshot is rewritten: at least this many, and at least as
# many as the snapshot held orders, so that rewriting it (which costs what the ledger
# holds) costs a save a constant share however long the account has traded. (A fixed
# 500 made every save pay for a 500th of the whole history: 7 % of execution's CPU
# after a few thousand orders, and growing.)
COMPACT_EVERY = 500
STATE_VERSION = 1
ZERO = Decimal(0)


@dataclass
class SimOrder:
    """An order's full state in the sim, including what the public view hides:
    the balance it holds (`reserved` of `reserve_asset`) and where the price watch
    resumes (`watch_from`, ms)."""

    id: str
    client_order_id: str
    symbol: str
    side: OrderSide
    type: OrderType
    amount: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    timestamp: int
    watch_from: int
    reserve_asset: str
    status: OrderStatus = "open"
    filled: Decimal = ZERO
    cost: Decimal = ZERO
    fee: Decimal = ZERO
    fee_currency: str | None = None
    reserved: Decimal = ZERO
    triggered: bool = False
    trade_ids: list[str] = field(default_factory=list)
    last_trade_timestamp: int | None = None
    reason: str | None = None
    # The other leg of a one-cancels-the-other pair: when either triggers or is cancelled,
    # the other is cancelled. The pair holds one reservation, on the first leg.
    linked: str | None = None

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.filled

    @property
    def is_buy(self) -> bool:
        return self.side == OrderSide.buy

    @property
    def is_stop(self) -> bool:
        return self.type in (OrderType.stop_loss, OrderType.take_profit)

    def view(self, trades: list[Trade]) -> ExchangeOrder:
        average = quantize(self.cost / self.filled, 12) if self.filled else None
        return ExchangeOrder(
            id=self.id,
            client_order_id=self.client_order_id,
            symbol=self.symbol,
            side=self.side,
            type=self.type,
            amount=self.amount,
            price=self.price,
            stop_price=self.stop_price,
            status=self.status,
            filled=self.filled,
            remaining=self.remaining,
            average=average,
            fee=self.fee,
            fee_currency=self.fee_currency,
            timestamp=self.timestamp,
            trades=trades,
            cost=self.cost,
            last_trade_timestamp=self.last_trade_timestamp,
            reason=self.reason,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "symbol": self.symbol,
            "side": self.side.value,
            "type": self.type.value,
            "amount": str(self.amount),
            "price": _opt_str(self.price),
            "stop_price": _opt_str(self.stop_price),
            "timestamp": self.timestamp,
            "watch_from": self.watch_from,
            "reserve_asset": self.reserve_asset,
            "status": self.status,
            "filled": str(self.filled),
            "cost": str(self.cost),
            "fee": str(self.fee),
            "fee_currency": self.fee_currency,
            "reserved": str(self.reserved),
            "triggered": self.triggered,
            "trade_ids": list(self.trade_ids),
            "last_trade_timestamp": self.last_trade_timestamp,
            "reason": self.reason,
            "linked": self.linked,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SimOrder:
        return cls(
            id=d["id"],
            client_order_id=d["client_order_id"],
            symbol=d["symbol"],
            side=OrderSide(d["side"]),
            type=OrderType(d["type"]),
            amount=Decimal(d["amount"]),
            price=_opt_dec(d["price"]),
            stop_price=_opt_dec(d["stop_price"]),
            timestamp=d["timestamp"],
            watch_from=d["watch_from"],
            reserve_asset=d["reserve_asset"],
            status=cast(OrderStatus, d["status"]),
            filled=Decimal(d["filled"]),
            cost=Decimal(d["cost"]),
            fee=Decimal(d["fee"]),
            fee_currency=d["fee_currency"],
            reserved=Decimal(d["reserved"]),
            triggered=d["triggered"],
            trade_ids=list(d["trade_ids"]),
            last_trade_timestamp=d["last_trade_timestamp"],
            reason=d["reason"],
            linked=d.get("linked"),  # absent in accounts saved before pairs existed
        )


def trade_to_json(t: Trade) -> dict[str, Any]:
    return {
        "id": t.id,
        "order_id": t.order_id,
        "client_order_id": t.client_order_id,
        "symbol": t.symbol,
        "side": t.side.value,
        "amount": str(t.amount),
        "price": str(t.price),
        "fee": str(t.fee),
        "fee_currency": t.fee_currency,
        "timestamp": t.timestamp,
        "taker": t.taker,
    }


def trade_from_json(d: dict[str, Any]) -> Trade:
    return Trade(
        id=d["id"],
        order_id=d["order_id"],
        client_order_id=d["client_order_id"],
        symbol=d["symbol"],
        side=OrderSide(d["side"]),
        amount=Decimal(d["amount"]),
        price=Decimal(d["price"]),
        fee=Decimal(d["fee"]),
        fee_currency=d["fee_currency"],
        timestamp=d["timestamp"],
        taker=d["taker"],
    )


class Ledger:
    """Balances (totals per asset), orders and trades of the one sim account.
    What an open order holds is its `reserved`; free = total - sum of those."""

    def __init__(self, seed: int, balances: dict[str, Decimal]) -> None:
        self.seed = seed
        self.balances = dict(balances)
        self.orders: dict[str, SimOrder] = {}
        # Orders that were open when last seen: a superset of the open ones (an order
        # never reopens), so finding them does not scan every order ever placed.
        self._maybe_open: dict[str, SimOrder] = {}
        self.by_client_id: dict[str, str] = {}
        self.trades: dict[str, Trade] = {}
        self.next_order = 1
        self.next_trade = 1

    def used(self) -> dict[str, Decimal]:
        used: dict[str, Decimal] = {}
        for order in self.open_orders():
            if order.reserved:
                used[order.reserve_asset] = used.get(order.reserve_asset, ZERO) + order.reserved
        return used

    def balance_sheet(self) -> dict[str, Balance]:
        """Free, held (by open orders) and total per asset."""
        used = self.used()
        out = {}
        for asset in sorted(set(self.balances) | set(used)):
            total = self.balances.get(asset, Decimal(0))
            held = used.get(asset, Decimal(0))
            out[asset] = Balance(free=total - held, used=held, total=total)
        return out

    def free(self, asset: str) -> Decimal:
        return self.balances.get(asset, ZERO) - self.used().get(asset, ZERO)

    def open_orders(self) -> list[SimOrder]:
        """Open orders, oldest first."""
        still = [o for o in self._maybe_open.values() if o.status == "open"]
        if len(still) != len(self._maybe_open):
            self._maybe_open = {o.id: o for o in still}
        return still

    def add_order(self, order: SimOrder) -> None:
        """Add an order, or replace the stored one with the same id (a journal replay)."""
        self.orders[order.id] = order
        self.by_client_id[order.client_order_id] = order.id
        if order.status == "open":
            self._maybe_open[order.id] = order
        else:
            self._maybe_open.pop(order.id, None)

    def cancel(self, order: SimOrder) -> None:
        """Cancel an open order, and the other leg of its pair if it has one."""
        order.status, order.reserved = "canceled", ZERO
        self.cancel_partner(order, f"the other leg of its pair (order {order.id}) was cancelled")

    def cancel_partner(self, order: SimOrder, why: str) -> None:
        """One cancels the other: the open partner of `order`'s pair is cancelled."""
        partner = self.orders.get(order.linked) if order.linked else None
        if partner is not None and partner.status == "open":
            partner.status, partner.reserved, partner.reason = "canceled", ZERO, why

    def orders_from(self, first_id: int) -> list[SimOrder]:
        """Orders with an id of at least `first_id` (ids count up from 1)."""
        found = (self.orders.get(str(i)) for i in range(first_id, self.next_order))
        return [o for o in found if o is not None]

    def trades_from(self, first_id: int) -> list[Trade]:
        found = (self.trades.get(str(i)) for i in range(first_id, self.next_trade))
        return [t for t in found if t is not None]

    def new_order_id(self) -> str:
        self.next_order += 1
        return str(self.next_order - 1)

    def record_fill(
        self,
        order: SimOrder,
        assets: tuple[str, str],
        fill: tuple[Decimal, Decimal],
        fee_rate: Decimal,
        t_ms: int,
        taker: bool,
    ) -> Trade:
        """Book one fill of `amount` at `price`: move the money, fee in the quote asset."""
        base, quote = assets
        price, amount = fill
        cost = amount * price
        fee = cost * fee_rate
        if order.is_buy:
            self._add(quote, -(cost + fee))
            self._add(base, amount)
        else:
            self._add(base, -amount)
            self._add(quote, cost - fee)
        trade = Trade(
            id=str(self.next_trade),
            order_id=order.id,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            amount=amount,
            price=price,
            fee=fee,
            fee_currency=quote,
            timestamp=t_ms,
            taker=taker,
        )
        self.next_trade += 1
        self.trades[trade.id] = trade
        order.filled += amount
        order.cost += cost
        order.fee += fee
        order.fee_currency = quote
        order.trade_ids.append(trade.id)
        order.last_trade_timestamp = t_ms
        return trade

    def _add(self, asset: str, delta: Decimal) -> None:
        self.balances[asset] = self.balances.get(asset, ZERO) + delta

    def dumps(self) -> str:
        # orjson: the snapshot is dumped on the event loop under the account lock; with
        # json.dumps it was ~2 % of execution's CPU under load (bench/README.md).
        return orjson.dumps(
            {
                "version": STATE_VERSION,
                "seed": self.seed,
                "balances": {k: str(v) for k, v in sorted(self.balances.items())},
                "next_order": self.next_order,
                "next_trade": self.next_trade,
                "orders": [o.to_json() for o in self.orders.values()],
                "trades": [trade_to_json(t) for t in self.trades.values()],
            },
            option=orjson.OPT_INDENT_2,
        ).decode()

    @classmethod
    def loads(cls, text: str) -> Ledger:
        data = json.loads(text)
        if data.get("version") != STATE_VERSION:
            raise ExchangeError(f"sim state file has version {data.get('version')!r}, expected 1")
        ledger = cls(data["seed"], {k: Decimal(v) for k, v in data["balances"].items()})
        for raw in data["orders"]:
            ledger.add_order(SimOrder.from_json(raw))
        for raw in data["trades"]:
            trade = trade_from_json(raw)
            ledger.trades[trade.id] = trade
        ledger.next_order = data["next_order"]
        ledger.next_trade = data["next_trade"]
        return ledger


def ledger_delta(
    ledger: Ledger, since_order: int, since_trade: int, was_open: set[str]
) -> dict[str, Any]:
    """What changed since the last save: new orders and trades, and every order that was
    or is open (a closed order never changes again), plus the balances. Costs what
    changed, not what the ledger holds."""
    ids = {o.id for o in ledger.open_orders()} | was_open
    ids.update(o.id for o in ledger.orders_from(since_order))
    changed = [ledger.orders[i] for i in sorted(ids, key=int) if i in ledger.orders]
    trades = ledger.trades_from(since_trade)
    return {
        "balances": {k: str(v) for k, v in sorted(ledger.balances.items())},
        "next_order": ledger.next_order,
        "next_trade": ledger.next_trade,
        "orders": [o.to_json() for o in changed],
        "trades": [trade_to_json(t) for t in trades],
    }


def apply_delta(ledger: Ledger, delta: dict[str, Any]) -> None:
    ledger.balances = {k: Decimal(v) for k, v in delta["balances"].items()}
    ledger.next_order, ledger.next_trade = delta["next_order"], delta["next_trade"]
    for raw in delta["orders"]:
        ledger.add_order(SimOrder.from_json(raw))
    for raw in delta["trades"]:
        trade = trade_from_json(raw)
        ledger.trades[trade.id] = trade


class StateStore:
    """The account under `directory`, locked for this process while open.

    A snapshot (`sim-account.json`) plus an append-only journal of changes: each change
    is one line (those staged together are written with one fsync), so a change costs
    the same with ten orders or a million;
    once the journal has as many lines as the snapshot has orders (COMPACT_EVERY at
    least), the snapshot is rewritten and the journal emptied.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / STATE_FILE
        self._lock_fd: int | None = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise ExchangeError(
                f"sim state in {directory} is in use by another SimExchange; "
                "close it first (one process owns a sim account)"
            ) from None
        self._entries = 0
        self._compact_at = COMPACT_EVERY
        self._staged: list[tuple[bool, str]] = []
        # Closing the descriptor releases the lock, also when the owner is just dropped.
        self._finalizer = weakref.finalize(self, os.close, self._lock_fd)

    def load(self) -> Ledger | None:
        if not self.path.exists():
            return None
        ledger = Ledger.loads(self.path.read_text(encoding="utf-8"))
        self._compact_at = max(COMPACT_EVERY, len(ledger.orders))
        journal = self.path.with_name(JOURNAL_FILE)
        if journal.exists():
            for line in journal.read_text(encoding="utf-8").splitlines():
                try:
                    apply_delta(ledger, json.loads(line))
                except ValueError:
                    break  # a torn last line from a crash mid-write: its call never returned
                self._entries += 1  # (the journal goes on where it was)
        self._mark_saved(ledger)
        return ledger

    def _mark_saved(self, ledger: Ledger) -> None:
        self._since = (ledger.next_order, ledger.next_trade)
        self._open = {o.id for o in ledger.open_orders()}

    def stage(self, ledger: Ledger) -> None:
        """Queue what changed in the ledger since the last stage (call it where nothing
        changes the ledger meanwhile): one journal line, or a fresh snapshot now and then
        (it stands for every line queued before it). `take` and `write_staged` make them
        durable, those of many changes with one fsync."""
        if not hasattr(self, "_since") or self._entries >= self._compact_at:
            self._staged = [(True, ledger.dumps())]
            self._entries = 0
            self._compact_at = max(COMPACT_EVERY, len(ledger.orders))
        else:
            line = orjson.dumps(ledger_delta(ledger, *self._since, self._open)).decode() + "\n"
            self._staged.append((False, line))
            self._entries += 1
        self._mark_saved(ledger)

    def save(self, ledger: Ledger) -> None:
        """Stage the ledger's changes and write them now (one caller at a time)."""
        self.stage(ledger)
        staged = self.take()
        try:
            self.write_staged(staged)
        except BaseException:
            self.lost()
            raise

    def take(self) -> list[tuple[bool, str]]:
        """What is staged (snapshot?, text), in order; the stage starts empty again."""
        taken, self._staged = self._staged, []
        return taken

    def lost(self) -> None:
        """What was taken did not reach the disk: the next stage writes a whole snapshot
        (the ledger in memory has every change), so nothing is left out."""
        del self._since

    def write_staged(self, staged: list[tuple[bool, str]]) -> None:
        """Write what `take` returned, in order: a snapshot replaces the file and empties
        the journal; the lines after it are appended with one fsync."""
        lines: list[str] = []
        for snapshot, text in staged:
            if snapshot:
                self.write(text)
                self.path.with_name(JOURNAL_FILE).unlink(missing_ok=True)
                lines = []
            else:
                lines.append(text)
        if not lines:
            return
        fd = os.open(
            self.path.with_name(JOURNAL_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        try:
            os.write(fd, "".join(lines).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, text: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".sim-account.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        if self._lock_fd is not None:
            self._lock_fd = None
            self._finalizer()


def _opt_str(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _opt_dec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)
