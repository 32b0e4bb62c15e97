"""Trade reports: realized PnL by FIFO lots per exchange and symbol (pure, Decimal only).

Fees paid in the pair's quote currency are part of PnL: a buy's fee joins the
cost of the lot it opens, a sell's fee comes off its proceeds, each split in
proportion to the amount matched. Fees in any other currency (BNB, or the base
asset) cannot be priced here, so they are listed and left out of PnL. A sell
with no long lot to close opens a short lot, closed FIFO by later buys.
"""

from __future__ import annotations

import csv
import io
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext

from agents.compliance.schemas import OtherFees, SymbolTotals, TradeLine
from common.contracts import FillEvent, OrderSide
from common.money import SCALE

ZERO = Decimal(0)
EXACT = Decimal(1).scaleb(-SCALE)
# Amounts and prices go up to 1e15 with 18 places: products need far more than 28 digits.
WIDE = Context(prec=80, rounding=ROUND_HALF_EVEN)

CSV_COLUMNS = (
    "filled_at",
    "exchange",
    "symbol",
    "side",
    "amount",
    "price",
    "notional",
    "fee",
    "fee_currency",
    "quote_currency",
    "closed_amount",
    "realized_pnl",
    "fill_id",
    "client_order_id",
    "audit_id",
)


@dataclass
class _Lot:
    amount: Decimal  # still open, > 0
    price: Decimal
    fee: Decimal  # quote-currency fee still attached to the open amount
    long: bool


def _round(value: Decimal) -> Decimal:
    return value.quantize(EXACT, rounding=ROUND_HALF_EVEN).normalize() + ZERO


def _share(total: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """`total * part / whole`, exactly `total` when the part is the whole (no drift)."""
    return total if part == whole else total * part / whole


def _close(book: deque[_Lot], fill: FillEvent, fee: Decimal) -> tuple[Decimal, Decimal, Decimal]:
    """Match `fill` against opposite lots; return (amount left, fee left, realized PnL)."""
    remaining, fee_left, pnl = fill.amount, fee, ZERO
    buying = fill.side is OrderSide.buy
    while remaining > 0 and book and book[0].long != buying:
        lot = book[0]
        matched = min(remaining, lot.amount)
        lot_fee = _share(lot.fee, matched, lot.amount)
        own_fee = _share(fee_left, matched, remaining)
        move = (fill.price - lot.price) if lot.long else (lot.price - fill.price)
        pnl += move * matched - lot_fee - own_fee
        lot.amount -= matched
        lot.fee -= lot_fee
        remaining -= matched
        fee_left -= own_fee
        if lot.amount == 0:
            book.popleft()
    return remaining, fee_left, pnl


def _line(
    audit_id: int, fill: FillEvent, quote: str, remaining: Decimal, pnl: Decimal
) -> TradeLine:
    return TradeLine(
        audit_id=audit_id,
        fill_id=fill.fill_id,
        client_order_id=fill.client_order_id,
        filled_at=fill.filled_at,
        exchange=fill.exchange,
        symbol=fill.symbol,
        side=fill.side,
        amount=fill.amount,
        price=fill.price,
        notional=_round(fill.amount * fill.price),
        fee=fill.fee,
        fee_currency=fill.fee_currency,
        quote_currency=quote,
        closed_amount=_round(fill.amount - remaining),
        realized_pnl=_round(pnl),
    )


def fifo_lines(fills: Iterable[tuple[int, FillEvent]]) -> list[TradeLine]:
    """One line per fill, in fill-time order, each with the PnL it realized.

    `fills` are (audit id, fill); a fill seen twice (same exchange and fill id, e.g. a
    retried audit post) counts once.
    """
    seen: set[tuple[str, str]] = set()
    unique = []
    for audit_id, fill in sorted(fills, key=lambda f: f[0]):
        if (fill.exchange, fill.fill_id) not in seen:
            seen.add((fill.exchange, fill.fill_id))
            unique.append((audit_id, fill))
    books: dict[tuple[str, str], deque[_Lot]] = {}
    lines = []
    with localcontext(WIDE):
        for audit_id, fill in sorted(unique, key=lambda f: (f[1].filled_at, f[0])):
            quote = fill.symbol.split("/")[1]
            fee = fill.fee if fill.fee_currency.upper() == quote else ZERO
            book = books.setdefault((fill.exchange, fill.symbol), deque())
            remaining, fee_left, pnl = _close(book, fill, fee)
            if remaining > 0:
                book.append(_Lot(remaining, fill.price, fee_left, fill.side is OrderSide.buy))
            lines.append(_line(audit_id, fill, quote, remaining, pnl))
    return lines


def in_window(lines: list[TradeLine], start: datetime, end: datetime) -> list[TradeLine]:
    return [line for line in lines if start <= line.filled_at < end]


def totals(lines: list[TradeLine]) -> tuple[list[SymbolTotals], list[OtherFees]]:
    """Per exchange and symbol, and the fees that are not in PnL, per currency."""
    by_symbol: dict[tuple[str, str], SymbolTotals] = {}
    other: dict[str, Decimal] = {}
    with localcontext(WIDE):
        for line in lines:
            _add(by_symbol, other, line)
    summary = [by_symbol[key] for key in sorted(by_symbol)]
    fees = [OtherFees(currency=c, amount=a) for c, a in sorted(other.items())]
    return summary, fees


def _add(
    by_symbol: dict[tuple[str, str], SymbolTotals], other: dict[str, Decimal], line: TradeLine
) -> None:
    row = by_symbol.get((line.exchange, line.symbol))
    if row is None:
        row = by_symbol[(line.exchange, line.symbol)] = SymbolTotals(
            exchange=line.exchange,
            symbol=line.symbol,
            quote_currency=line.quote_currency,
            fills=0,
            bought=ZERO,
            sold=ZERO,
            fees_in_quote=ZERO,
            realized_pnl=ZERO,
        )
    row.fills += 1
    if line.side is OrderSide.buy:
        row.bought += line.amount
    else:
        row.sold += line.amount
    row.realized_pnl += line.realized_pnl
    if line.fee_currency.upper() == line.quote_currency:
        row.fees_in_quote += line.fee
    elif line.fee:
        other[line.fee_currency] = other.get(line.fee_currency, ZERO) + line.fee


def _cell(value: object) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize() + ZERO, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int):
        return str(value)
    text = str(value)
    # A spreadsheet would run a cell starting with = + - @ as a formula.
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(lines: list[TradeLine]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    with localcontext(WIDE):
        for line in lines:
            values = line.model_dump()
            writer.writerow([_cell(values[column]) for column in CSV_COLUMNS])
    return out.getvalue()
