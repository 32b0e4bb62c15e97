"""Position arithmetic: what a fill does to a net position. Pure and exact (Decimal)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

ZERO = Decimal(0)


@dataclass(frozen=True)
class PositionState:
    amount: Decimal  # signed: > 0 long, < 0 short
    entry_price: Decimal  # average entry of the open amount
    realized_pnl: Decimal


def apply_fill(
    position: PositionState, side: str, amount: Decimal, price: Decimal, fee_in_quote: Decimal
) -> tuple[PositionState, Decimal]:
    """Return the position after a fill and the PnL this fill realised (net of its fee).

    Increasing a position moves the average entry; reducing realises PnL against the
    average entry; a fill larger than the position closes it and opens the other side
    at the fill price.
    """
    signed = amount if side == "buy" else -amount
    current = position.amount
    realized = -fee_in_quote
    if current == ZERO or (current > 0) == (signed > 0):
        new_amount = current + signed
        entry = (abs(current) * position.entry_price + amount * price) / abs(new_amount)
        return PositionState(new_amount, entry, position.realized_pnl + realized), realized
    closing = min(abs(signed), abs(current))
    direction = Decimal(1) if current > 0 else Decimal(-1)
    realized += (price - position.entry_price) * closing * direction
    new_amount = current + signed
    if new_amount == ZERO:
        entry = ZERO
    elif (new_amount > 0) == (current > 0):
        entry = position.entry_price
    else:
        entry = price  # flipped: the remainder opened at this fill's price
    return PositionState(new_amount, entry, position.realized_pnl + realized), realized


def coins_moved(
    side: str,
    amount: Decimal,
    price: Decimal,
    fee: Decimal,
    fee_currency: str | None,
    base: str,
    quote: str,
) -> tuple[Decimal, Decimal]:
    """What a trade does to the coins the account holds, and its fee in the quote currency
    (for `apply_fill`). A fee taken in the coin itself (Binance takes a buy's fee in the
    coin bought unless it is paid in BNB) leaves fewer coins: a buy adds `amount - fee`, a
    sell gives away `amount + fee`; its value at the fill's price is the cost. A fee in a
    third currency (BNB) is not part of this market's ledger."""
    if fee_currency == base:
        return (amount - fee if side == "buy" else amount + fee), fee * price
    if fee_currency == quote:
        return amount, fee
    return amount, ZERO


def unrealized_pnl(position: PositionState, mark: Decimal) -> Decimal:
    return (mark - position.entry_price) * position.amount
