"""Execution's own watch over attached exits (sync.py): where a trailing stop follows the
price and when a stop-loss, take-profit or trailing stop fires. Over HTTP in
test_brackets.py."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from agents.execution.sync import _trail, _triggered
from common.models import Position


def _position(amount: str, **legs: str) -> Position:
    return Position(
        exchange="sim",
        symbol="BTC/USDT",
        amount=D(amount),
        entry_price=D(100),
        realized_pnl=D(0),
        **{name: D(value) for name, value in legs.items()},
    )


def _walk(pos: Position, marks: list[int]) -> list[str | None]:
    """Each mark in turn as the watcher sees it: follow, then test."""
    long = pos.amount > 0
    fired = []
    for mark in marks:
        _trail(pos, D(mark), long)
        fired.append(_triggered(pos, D(mark), long, trailing_only=False))
    return fired


def test_a_long_trailing_stop_follows_the_high_and_fires_below_it() -> None:
    pos = _position("1", trailing_stop_pct="0.05", trail_extreme="100")
    assert _walk(pos, [104, 110, 106]) == [None, None, None]
    assert pos.trail_extreme == D(110)  # the high, not the last mark
    assert _walk(pos, [105]) == [None]  # 110 * 0.95 = 104.5: not yet
    assert _walk(pos, [104]) == ["trailing_stop"]
    assert pos.trail_extreme == D(110)


def test_a_short_trailing_stop_follows_the_low_and_fires_above_it() -> None:
    pos = _position("-1", trailing_stop_pct="0.1", trail_extreme="100")
    assert _walk(pos, [95, 80, 87]) == [None, None, None]
    assert pos.trail_extreme == D(80)
    assert _walk(pos, [88]) == ["trailing_stop"]  # 80 * 1.1


def test_without_a_trailing_stop_nothing_is_followed() -> None:
    pos = _position("1", stop_loss="90")
    assert _walk(pos, [120, 95]) == [None, None]
    assert pos.trail_extreme is None
    assert _walk(pos, [90]) == ["stop_loss"]


@pytest.mark.parametrize(
    ("amount", "mark", "fired"),
    [
        ("1", 90, "stop_loss"),
        ("1", 91, None),
        ("1", 120, "take_profit"),
        ("-1", 110, "stop_loss"),
        ("-1", 80, "take_profit"),
        ("0", 50, None),  # nothing held: nothing to close
    ],
)
def test_stop_loss_and_take_profit_by_side(amount: str, mark: int, fired: str | None) -> None:
    short = amount.startswith("-")
    legs = (
        {"stop_loss": "110", "take_profit": "80"}
        if short
        else {"stop_loss": "90", "take_profit": "120"}
    )
    pos = _position(amount, **legs)
    assert _triggered(pos, D(mark), pos.amount > 0, trailing_only=False) == fired


def test_legs_on_the_exchange_are_left_to_it_but_the_trailing_stop_is_ours() -> None:
    pos = _position("1", stop_loss="90", trailing_stop_pct="0.05", trail_extreme="100")
    assert _triggered(pos, D(89), True, trailing_only=True) == "trailing_stop"
    pos.trailing_stop_pct = None
    assert _triggered(pos, D(89), True, trailing_only=True) is None  # the exchange fires it
