"""All of execution's SQL: orders, fills, positions.

The order path's statements (claim, record) run on the event loop through asyncpg
(`LoopDatabase.transaction`: no worker thread, no ORM unit of work). They read and return
the same model objects, detached, so the rest of the code cannot tell where a row came
from. The other statements (the reconciler's reads, brackets, the endpoints) use the ORM.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy import inspect, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, configure_mappers

from common import outbox
from common.contracts import AuditEventIn
from common.models import Order, Position

FINAL = frozenset({"filled", "cancelled", "rejected", "expired"})
LIVE = frozenset({"open", "partially_filled"})
UNSETTLED = frozenset({"pending", "unknown"})
# Every status that is not final, listed rather than "not in FINAL", so the status index
# serves the reconciler's query (run every half second) instead of a scan of all orders.
NOT_FINAL = UNSETTLED | LIVE


# --- the order path, on the event loop (asyncpg) -------------------------------------------
# Rows read on the loop become model objects as the ORM makes those it loads: without
# `__init__` and its per-attribute change tracking (36 µs an order, ~1.5 µs this way).
# (The attributes of an object made so work once the mappers are configured, which the
# ORM's first use or `__init__` would otherwise do.)
configure_mappers()
_new_order = inspect(Order).class_manager.new_instance
_new_position = inspect(Position).class_manager.new_instance


def _order(row: asyncpg.Record) -> Order:
    order = _new_order()
    order.__dict__.update(row.items())
    return order


def _position(row: asyncpg.Record) -> Position:
    pos = _new_position()
    pos.__dict__.update(row.items())
    return pos


async def claim(
    connection: asyncpg.Connection,
    values: Sequence[dict[str, Any]],
    service: str,
    events: Sequence[AuditEventIn],
) -> list[Order | None]:
    """Insert pending orders (`values`: dicts with the same keys), each with `service`'s
    audit event for it, in one statement (its own transaction unless the caller's): the
    claimed order for each, or None where its client order id was already taken (by an
    earlier row of the same call too: the first one claims it). The rows come back with
    the insert; BEGIN, two INSERTs and COMMIT per order cost a tenth of execution's CPU,
    and a statement per order a round trip and a commit each under load."""
    rows = [{**one, "status": "pending", "filled": Decimal(0), "fee": Decimal(0)} for one in values]
    names = list(rows[0])
    width = len(names)
    args: list[Any] = [service]
    claimed_rows = []
    for row in rows:
        start = len(args) + 1
        claimed_rows.append("(" + ", ".join(f"${start + i}" for i in range(width)) + ")")
        args.extend(row[name] for name in names)
    queued_rows, first = [], set()
    for one, event in zip(values, events, strict=True):
        if one["client_order_id"] in first:  # (the first row with it claims it, or none)
            continue
        first.add(one["client_order_id"])
        queued_rows.append(f"(${len(args) + 1}::varchar, ${len(args) + 2}::jsonb)")
        args.extend((one["client_order_id"], outbox.queued(event)))
    # (A statement per batch size: asyncpg prepares each once per connection and keeps it.)
    found = await connection.fetch(
        f"WITH claimed AS (INSERT INTO orders ({', '.join(names)})"  # noqa: S608
        f" VALUES {', '.join(claimed_rows)}"
        " ON CONFLICT (client_order_id) DO NOTHING RETURNING *),"
        f" queued AS (INSERT INTO {outbox.QUEUE_COLUMNS}"
        " SELECT $1, q.payload, 0 FROM claimed"
        f" JOIN (VALUES {', '.join(queued_rows)}) AS q (client_order_id, payload)"
        " USING (client_order_id) ORDER BY claimed.id)"
        " SELECT * FROM claimed",
        *args,
    )
    by_id = {row["client_order_id"]: row for row in found}
    return [
        None if (row := by_id.pop(one["client_order_id"], None)) is None else _order(row)
        for one in values
    ]


async def lock_orders(connection: asyncpg.Connection, order_ids: Sequence[int]) -> dict[int, Order]:
    """These order rows, locked in id order, by id."""
    rows = await connection.fetch(
        "SELECT * FROM orders WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
        list(order_ids),
    )
    return {row["id"]: _order(row) for row in rows}


_RECORDED = ("exchange_order_id", "filled", "fee", "average_price", "status", "reason")


def recorded(order: Order) -> tuple[Any, ...]:
    """What recording an answer may change in an order (`save_recording` writes it)."""
    return tuple(getattr(order, name) for name in _RECORDED)


_LOCK_POSITION = "SELECT * FROM positions WHERE exchange = $1 AND symbol = $2 FOR UPDATE"


async def lock_position(connection: asyncpg.Connection, exchange: str, symbol: str) -> Position:
    """The position row, locked for update (created flat if new)."""
    found = await connection.fetchrow(_LOCK_POSITION, exchange, symbol)
    if found is None:
        await connection.execute(
            "INSERT INTO positions (exchange, symbol, amount, entry_price, realized_pnl)"
            " VALUES ($1, $2, 0, 0, 0) ON CONFLICT DO NOTHING",
            exchange,
            symbol,
        )
        found = await connection.fetchrow(_LOCK_POSITION, exchange, symbol)
        assert found is not None
    return _position(found)


_HELD = (
    "amount",
    "entry_price",
    "realized_pnl",
    "stop_loss",
    "take_profit",
    "trailing_stop_pct",
    "trail_extreme",
)


def held_state(pos: Position) -> tuple[Any, ...]:
    """What recording may change in a position (`save_recording` writes it)."""
    return tuple(getattr(pos, name) for name in _HELD)


async def recorded_trades(
    connection: asyncpg.Connection, trades: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which of these (exchange, trade id) are in the ledger already."""
    if not trades:
        return set()
    rows = await connection.fetch(
        "SELECT exchange, trade_id FROM fills WHERE (exchange, trade_id) IN"
        " (SELECT * FROM unnest($1::text[], $2::text[]))",
        [exchange for exchange, _ in trades],
        [trade_id for _, trade_id in trades],
    )
    return {(row["exchange"], row["trade_id"]) for row in rows}


_FILL_COLUMNS = (
    "order_id",
    "exchange",
    "trade_id",
    "symbol",
    "side",
    "amount",
    "price",
    "fee",
    "fee_currency",
    "realized_pnl",
    "filled_at",
)
_NUMERIC = ("amount", "price", "fee", "realized_pnl", "filled", "average_price", *_HELD)
# The arrays' types, by column (any other column is text).
_TYPES = {"order_id": "bigint", "id": "bigint", "filled_at": "timestamptz"}
_TYPES.update(dict.fromkeys(_NUMERIC, "numeric"))


def _rows(names: Sequence[str], first: int) -> str:
    """`unnest` of one array parameter per column, from `$first` on, typed."""
    arrays = ", ".join(f"${first + i}::{_TYPES.get(n, 'text')}[]" for i, n in enumerate(names))
    return f"unnest({arrays}) AS u ({', '.join(names)})"


def _set(names: Sequence[str]) -> str:
    return ", ".join(f"{name} = u.{name}" for name in names)


_MOVED = ("exchange", "symbol", *_HELD)
_CHANGED = ("id", *_RECORDED)
# The parameters' numbers: the fills' arrays, the time of the change, the positions',
# the orders', the service and the events.
_P = 1 + len(_FILL_COLUMNS) + 1
_O = _P + len(_MOVED)
_E = _O + len(_CHANGED)
# What recording a batch of answers writes, in one statement whatever the batch: the new
# fills, the positions and orders they changed, and the audit events, in that order.
_SAVE_RECORDING = (
    f"WITH added AS (INSERT INTO fills ({', '.join(_FILL_COLUMNS)})"  # noqa: S608 (our names)
    f" SELECT * FROM {_rows(_FILL_COLUMNS, 1)}),"
    f" moved AS (UPDATE positions AS p SET {_set(_HELD)}, updated_at = ${_P - 1}"
    f" FROM {_rows(_MOVED, _P)}"
    " WHERE p.exchange = u.exchange AND p.symbol = u.symbol),"
    f" changed AS (UPDATE orders AS o SET {_set(_RECORDED)}, updated_at = ${_P - 1}"
    f" FROM {_rows(_CHANGED, _O)} WHERE o.id = u.id),"
    f" queued AS (INSERT INTO {outbox.QUEUE_COLUMNS} SELECT ${_E}, u.payload, 0"
    f" FROM unnest(${_E + 1}::jsonb[]) WITH ORDINALITY AS u (payload, n) ORDER BY u.n)"
    " SELECT 1"
)


async def save_recording(
    connection: asyncpg.Connection,
    fills: Sequence[dict[str, Any]],
    positions: Sequence[Position],
    orders: Sequence[Order],
    service: str,
    events: Sequence[AuditEventIn],
) -> None:
    """Write what recording a batch of answers changed, in one round trip (a statement
    per table was three more, each waiting for a busy event loop): the new `fills`, what
    changed in `positions` and `orders`, and `service`'s audit `events` (queued in this
    order). No ON CONFLICT for the fills: the caller looked them up under the order and
    position locks (`recorded_trades`), so a trade recorded twice would be a bug, and
    fails the whole transaction rather than move a position twice."""
    now = datetime.now(UTC)
    for pos in positions:
        pos.updated_at = now
    for order in orders:
        order.updated_at = now
    await connection.execute(
        _SAVE_RECORDING,
        *_columns([tuple(fill[name] for name in _FILL_COLUMNS) for fill in fills], _FILL_COLUMNS),
        now,
        *_columns([(p.exchange, p.symbol, *held_state(p)) for p in positions], _MOVED),
        *_columns([(o.id, *recorded(o)) for o in orders], _CHANGED),
        service,
        [outbox.queued(event) for event in events],
    )


def _columns(rows: Sequence[tuple[Any, ...]], names: Sequence[str]) -> list[list[Any]]:
    """`rows` as one list per column (the arrays `unnest` takes)."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in names]


async def positions(connection: asyncpg.Connection, exchange: str) -> list[Position]:
    """The exchange's positions that hold something, by symbol."""
    rows = await connection.fetch(
        "SELECT * FROM positions WHERE exchange = $1 AND amount <> 0 ORDER BY symbol", exchange
    )
    return [_position(row) for row in rows]


async def live(
    connection: asyncpg.Connection, exchange: str | None = None, *, with_unknown: bool = False
) -> list[Order]:
    """Orders resting on an exchange (all exchanges: None), oldest first; `with_unknown`,
    also those whose fate we are still finding out (sent, no answer: they may be filled)."""
    statuses = sorted(LIVE | {"unknown"} if with_unknown else LIVE)
    rows = await connection.fetch(
        "SELECT * FROM orders WHERE status = ANY($1::text[])"
        " AND ($2::text IS NULL OR exchange = $2) ORDER BY id",
        statuses,
        exchange,
    )
    return [_order(row) for row in rows]


async def realized_on(connection: asyncpg.Connection, day: date) -> Decimal:
    """Realized PnL of the fills on UTC `day`, on every exchange: the day's rows (one per
    market traded), kept by the database as fills are written (`realized_pnl_days`)."""
    total = await connection.fetchval(
        "SELECT coalesce(sum(realized), 0) FROM realized_pnl_days WHERE day = $1", day
    )
    return Decimal(total)


# --- through the ORM session ------------------------------------------------------------------
def by_client_id(session: Session, client_order_id: str) -> Order | None:
    return session.scalars(select(Order).where(Order.client_order_id == client_order_id)).first()


def get(session: Session, order_id: int, *, lock: bool = False) -> Order | None:
    query = select(Order).where(Order.id == order_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def list_orders(
    session: Session, exchange: str, symbol: str | None, status: str | None, limit: int
) -> Sequence[Order]:
    query = select(Order).where(Order.exchange == exchange)
    if symbol:
        query = query.where(Order.symbol == symbol)
    if status:
        query = query.where(Order.status == status)
    return session.scalars(query.order_by(Order.id.desc()).limit(limit)).all()


def unsettled(session: Session, exchange: str | None = None) -> Sequence[Order]:
    """Orders not in a final state, oldest first: the reconciliation worklist."""
    query = select(Order).where(Order.status.in_(NOT_FINAL))
    if exchange:
        query = query.where(Order.exchange == exchange)
    return session.scalars(query.order_by(Order.id)).all()


def brackets(
    session: Session, exchange: str, roles: Sequence[str], symbol: str | None = None
) -> Sequence[Order]:
    """Protective legs (orders with one of `roles`) not yet final, oldest first."""
    query = select(Order).where(
        Order.exchange == exchange, Order.role.in_(roles), Order.status.in_(NOT_FINAL)
    )
    if symbol:
        query = query.where(Order.symbol == symbol)
    return session.scalars(query.order_by(Order.id)).all()


def position(session: Session, exchange: str, symbol: str) -> Position:
    """The position row, locked for update (created flat if new)."""
    locked = (
        select(Position)
        .where(Position.exchange == exchange, Position.symbol == symbol)
        .with_for_update()
    )
    found = session.scalars(locked).one_or_none()
    if found is not None:
        return found
    session.execute(
        insert(Position)
        .values(
            exchange=exchange,
            symbol=symbol,
            amount=Decimal(0),
            entry_price=Decimal(0),
            realized_pnl=Decimal(0),
        )
        .on_conflict_do_nothing()
    )
    return session.scalars(locked).one()


def held(session: Session, exchange: str, symbol: str) -> Decimal:
    """The position's amount now (0 when there is none); no lock."""
    amount = session.scalar(
        select(Position.amount).where(Position.exchange == exchange, Position.symbol == symbol)
    )
    return Decimal(amount or 0)
