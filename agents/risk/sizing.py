"""Position sizing: how much to buy or sell for a given equity, entry and risk budget.

- fixed_fractional: amount = equity x risk_fraction / |entry - stop|
- kelly:            amount = equity x kelly_fraction x max(0, W - (1 - W) / R) / entry
- atr:              amount = equity x risk_fraction / (atr x atr_multiple)

The amount is then capped so that the position stays within max_position_pct of
equity and max_order_notional (a size the pre-trade check would refuse is no
answer), and rounded down to `amount_step` (or to 8 decimals).
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal, localcontext

from agents.risk.book import PRECISION
from agents.risk.schemas import (
    AtrSizing,
    FixedFractionalSizing,
    Limits,
    PositionSize,
    SizingMethod,
    SizingRequest,
)
from common.errors import Unprocessable
from common.money import quantize, to_step

DEFAULT_AMOUNT_PLACES = 8


def _raw(request: SizingRequest) -> tuple[Decimal, Decimal | None, Decimal | None]:
    """(uncapped amount, stop distance, full-Kelly edge) for one method."""
    if isinstance(request, FixedFractionalSizing):
        distance = abs(request.entry_price - request.stop_price)
        if distance == 0:
            raise Unprocessable("fixed_fractional: stop_price must differ from entry_price")
        return request.equity * request.risk_fraction / distance, distance, None
    if isinstance(request, AtrSizing):
        distance = request.atr * request.atr_multiple
        return request.equity * request.risk_fraction / distance, distance, None
    edge = request.win_rate - (1 - request.win_rate) / request.payoff_ratio
    fraction = max(Decimal(0), edge) * request.kelly_fraction
    return request.equity * fraction / request.entry_price, None, edge


def _inputs(request: SizingRequest, limits: Limits) -> dict[str, Decimal | str]:
    used = request.model_dump(exclude_none=True)
    used["max_position_pct"] = limits.max_position_pct
    used["max_order_notional"] = limits.max_order_notional
    return used


def _round(amount: Decimal, step: Decimal | None) -> Decimal:
    if step is not None:
        return to_step(amount, step)
    return amount.quantize(Decimal(1).scaleb(-DEFAULT_AMOUNT_PLACES), rounding=ROUND_DOWN)


def _plain(value: Decimal) -> Decimal:
    """Without trailing zeros, and never in exponent form (JSON shows it as written)."""
    return Decimal(format(value.normalize(), "f"))


def size(request: SizingRequest, limits: Limits) -> PositionSize:
    """The amount for `request`, with every number that went into it."""
    with localcontext(PRECISION):
        amount, distance, edge = _raw(request)
        entry = request.entry_price
        caps = {
            "max_position_pct": request.equity * limits.max_position_pct / entry,
            "max_order_notional": limits.max_order_notional / entry,
        }
        capped_by = None
        for name, cap in caps.items():
            if amount > cap:
                amount, capped_by = cap, name
        amount = _round(amount, request.amount_step)
        notional = amount * entry
        return PositionSize(
            method=SizingMethod(request.method),
            amount=_plain(amount),
            notional=quantize(notional),
            fraction_of_equity=quantize(notional / request.equity),
            risk_amount=quantize(amount * distance) if distance is not None else None,
            stop_distance=distance,
            kelly_edge=quantize(edge) if edge is not None else None,
            capped_by=capped_by,
            inputs=_inputs(request, limits),
        )
