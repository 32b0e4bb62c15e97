"""Realized PnL per UTC day and market (`realized_pnl_days`): every order's approval
reads today's from the day's rows, kept by the database as fills are written, changed or
removed (a sum over the day's fills grew with every fill: 8.5 ms at 100,000,
bench/README.md)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Connection, text

from tests.agents.execution.fleet import close_position, new_cid, order
from tests.conftest import Stack

DAYS = "SELECT day, sum(realized) AS realized FROM realized_pnl_days GROUP BY day ORDER BY day"
SUMS_BY_MARKET = (
    "SELECT (filled_at AT TIME ZONE 'UTC')::date, exchange, symbol, sum(realized_pnl)"
    " FROM fills GROUP BY 1, 2, 3"
)
SUMS = (
    "SELECT (filled_at AT TIME ZONE 'UTC')::date AS day, sum(realized_pnl) AS realized"
    " FROM fills GROUP BY 1 ORDER BY 1"
)


@pytest.fixture
def conn(stack: Stack) -> Iterator[Connection]:
    """A transaction that is rolled back: what a test writes is never seen by the fleet."""
    engine = stack.engine()
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            transaction.rollback()
    engine.dispose()


def _days(conn: Connection) -> dict[object, Decimal]:
    return {row.day: row.realized for row in conn.execute(text(DAYS))}


def _sums(conn: Connection) -> dict[object, Decimal]:
    return {row.day: row.realized for row in conn.execute(text(SUMS))}


def _nonzero(days: dict[object, Decimal]) -> dict[object, Decimal]:
    """The days with something realized (a day whose fills cancel out, or went, keeps a
    row of zero)."""
    return {day: value for day, value in days.items() if value != 0}


def _fill(conn: Connection, order_id: int, trade: str, pnl: str, at: datetime) -> int:
    return int(
        conn.execute(
            text(
                "INSERT INTO fills (order_id, exchange, trade_id, symbol, side, amount, price,"
                " fee, fee_currency, realized_pnl, filled_at) VALUES (:o, 'test-days', :t,"
                " 'BTC/USDT', 'sell', 1, 100, 0, 'USDT', :p, :at) RETURNING id"
            ),
            {"o": order_id, "t": trade, "p": Decimal(pnl), "at": at},
        ).scalar_one()
    )


def _an_order(conn: Connection) -> int:
    return int(
        conn.execute(
            text(
                "INSERT INTO orders (client_order_id, exchange, symbol, side, type, amount,"
                " status, filled, fee, reduce_only, role, requested_by)"
                " VALUES (:c, 'test-days', 'BTC/USDT', 'sell', 'market', 3, 'filled', 3, 0,"
                " false, 'entry', 'tester') RETURNING id"
            ),
            {"c": new_cid("days")},
        ).scalar_one()
    )


def test_each_fill_counts_on_its_own_utc_day_however_it_is_written(conn: Connection) -> None:
    before = _days(conn)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day, yesterday = today.date(), (today - timedelta(days=1)).date()
    oid = _an_order(conn)
    # Just before midnight is yesterday's, just after it today's (UTC).
    late = _fill(conn, oid, "t1", "7.5", today - timedelta(microseconds=1))
    _fill(conn, oid, "t2", "-2.25", today)
    _fill(conn, oid, "t3", "1", today + timedelta(seconds=5))

    def moved() -> dict[object, Decimal]:
        after = _days(conn)
        return {d: after[d] - before.get(d, Decimal(0)) for d in after if d in (day, yesterday)}

    assert moved() == {yesterday: Decimal("7.5"), day: Decimal("-1.25")}
    conn.execute(text("UPDATE fills SET realized_pnl = 10 WHERE id = :i"), {"i": late})
    assert moved() == {yesterday: Decimal(10), day: Decimal("-1.25")}
    conn.execute(  # a fill moved to another day leaves the first
        text("UPDATE fills SET filled_at = :at WHERE id = :i"), {"i": late, "at": today}
    )
    assert moved() == {yesterday: Decimal(0), day: Decimal("8.75")}
    conn.execute(text("DELETE FROM fills WHERE exchange = 'test-days' AND trade_id = 't3'"))
    assert moved() == {yesterday: Decimal(0), day: Decimal("7.75")}
    assert _nonzero(_days(conn)) == _nonzero(_sums(conn))


@pytest.mark.usefixtures("repeatable_orders", "active")
def test_trading_keeps_every_day_equal_to_its_fills(stack: Stack, conn: Connection) -> None:
    symbol = "XRP/USDT"
    assert close_position(stack, symbol).status_code == 200
    for side in ("buy", "sell", "buy"):
        placed = order(stack, symbol=symbol, side=side, amount="20", client_order_id=new_cid())
        assert placed.status_code == 201, placed.text
    assert close_position(stack, symbol).status_code == 200
    days = _nonzero(_days(conn))
    assert days == _nonzero(_sums(conn))
    kept = conn.execute(text("SELECT day, exchange, symbol, realized FROM realized_pnl_days"))
    summed = conn.execute(text(SUMS_BY_MARKET))
    assert {tuple(r) for r in kept if r[3]} == {tuple(r) for r in summed if r[3]}
    assert datetime.now(UTC).date() in days  # the trades above made (or lost) something
