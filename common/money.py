"""Exact money: Decimal types for request bodies and Numeric columns for the ledger.

Amounts and prices are positive, finite and fit `Numeric(38, 18)`; NaN, infinities,
zero and negatives are refused by validation before any code sees them.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Annotated

from pydantic import Field
from sqlalchemy import Numeric

MAX_VALUE = Decimal("1e15")
SCALE = 18

# A strictly positive quantity or price, as JSON string or number.
Positive = Annotated[Decimal, Field(gt=0, le=MAX_VALUE, max_digits=38, decimal_places=SCALE)]
# Zero or more (balances, fees).
NonNegative = Annotated[Decimal, Field(ge=0, le=MAX_VALUE, max_digits=38, decimal_places=SCALE)]
# Any sign (PnL, signed position size).
Signed = Annotated[Decimal, Field(ge=-MAX_VALUE, le=MAX_VALUE, max_digits=38, decimal_places=SCALE)]
# A fraction such as 0.02 for 2 %.
Fraction = Annotated[Decimal, Field(gt=0, le=1, max_digits=20, decimal_places=SCALE)]


def ledger_numeric() -> Numeric[Decimal]:
    """The column type for every amount, price, fee and balance."""
    return Numeric(38, SCALE, asdecimal=True)


def to_step(value: Decimal, step: Decimal, rounding: str = ROUND_DOWN) -> Decimal:
    """Round `value` to a multiple of `step` (an exchange's amount or price precision)."""
    if step <= 0:
        return value
    return (value / step).quantize(Decimal(1), rounding=rounding) * step


def quantize(value: Decimal, places: int = 8) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
