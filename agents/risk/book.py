"""The book before and after an order: positions, exposure, money at risk, drawdown.

Pure Decimal arithmetic shared by the pre-trade rules and the services. Callers that
multiply amounts by prices run under PRECISION: amounts and prices reach 1e15 with
18 decimals, more digits than Decimal's default 28.

Exposure is judged on the worst case: our resting orders that would grow a position
are counted as filled. In the order's own market those on the order's side (what the
order adds to); in another market those on the side of its position (buys for a long,
sells for a short, the larger side when flat). Reduce-only orders never count, nor do
orders against a position (they shrink it). Resting orders carry no stop yet, so their
money at risk is the default stop.
"""

from __future__ import annotations

from decimal import Context, Decimal, localcontext

from agents.risk.schemas import Limits
from common.contracts import (
    OpenOrder,
    OrderSide,
    OrderType,
    PortfolioView,
    PositionView,
    PreTradeOrder,
    PreTradeRequest,
)

PRECISION = Context(prec=100)
ZERO = Decimal(0)


def request(order: PreTradeOrder, portfolio: PortfolioView) -> PreTradeRequest:
    """`order` judged against `portfolio` (both already validated)."""
    if isinstance(order, PreTradeRequest) and order.portfolio is portfolio:
        return order
    fields = {name: getattr(order, name) for name in PreTradeOrder.model_fields}
    return PreTradeRequest.model_construct(**fields, portfolio=portfolio)


def with_resting(portfolio: PortfolioView, req: PreTradeRequest) -> PortfolioView:
    """The account with `req` (approved, not yet filled) among our resting orders, at the
    price it is valued at."""
    price = order_price(req)
    if price is None:  # unpriced orders are never approved (the price collar)
        return portfolio
    resting = OpenOrder(
        exchange=req.exchange,
        symbol=req.symbol,
        side=req.side,
        amount=req.amount,
        price=price,
        reduce_only=req.reduce_only,
    )
    return portfolio.model_copy(update={"open_orders": [*portfolio.open_orders, resting]})


def order_price(req: PreTradeRequest) -> Decimal | None:
    """The price the order is valued at: its own price, or the reference for market orders."""
    if req.type is not OrderType.market and req.price is not None:
        return req.price
    return req.reference_price


def signed_amount(req: PreTradeRequest) -> Decimal:
    return req.amount if req.side is OrderSide.buy else -req.amount


def _same_market(req: PreTradeRequest, position: PositionView) -> bool:
    return position.exchange == req.exchange and position.symbol == req.symbol


def current_position(req: PreTradeRequest) -> Decimal:
    """The signed position in the order's exchange and symbol before the order."""
    return sum((p.amount for p in req.portfolio.positions if _same_market(req, p)), ZERO)


def resulting_position(req: PreTradeRequest) -> Decimal:
    """The position once the order alone has filled."""
    return current_position(req) + signed_amount(req)


def _growing(req: PreTradeRequest) -> list[OpenOrder]:
    """Our resting orders in the order's market on its side, not reduce-only."""
    return [
        o
        for o in req.portfolio.open_orders
        if (o.exchange, o.symbol) == (req.exchange, req.symbol)
        and o.side is req.side
        and not o.reduce_only
    ]


def resting_amount(req: PreTradeRequest) -> Decimal:
    """What our resting orders add to the position in the order's direction."""
    return sum((o.amount for o in _growing(req)), ZERO)


def worst_position(req: PreTradeRequest) -> Decimal:
    """The position once the order and every resting order on its side have filled."""
    resting = resting_amount(req)
    return resulting_position(req) + (resting if req.side is OrderSide.buy else -resting)


def shrinks_in_worst_case(req: PreTradeRequest) -> bool:
    """`shrinks_position` with our resting orders on the order's side filled too: what the
    exposure rules let through. (Several sells, each smaller than a long, can together
    take it short; each alone would shrink it.)"""
    before, after = current_position(req), worst_position(req)
    same_side = after == 0 or (after > 0) == (before > 0)
    return before != 0 and same_side and abs(after) < abs(before)


def resting_elsewhere(req: PreTradeRequest) -> dict[tuple[str, str], Decimal]:
    """Notional (amount x price) our resting orders would add to each other market."""
    sides: dict[tuple[str, str], dict[OrderSide, Decimal]] = {}
    for o in req.portfolio.open_orders:
        market = (o.exchange, o.symbol)
        if market == (req.exchange, req.symbol) or o.reduce_only:
            continue
        per_side = sides.setdefault(market, {OrderSide.buy: ZERO, OrderSide.sell: ZERO})
        per_side[o.side] += o.amount * o.price
    held: dict[tuple[str, str], Decimal] = {}
    for p in req.portfolio.positions:
        held[(p.exchange, p.symbol)] = held.get((p.exchange, p.symbol), ZERO) + p.amount
    growth = {}
    for market, per_side in sides.items():
        position = held.get(market, ZERO)
        if position > 0:
            growth[market] = per_side[OrderSide.buy]
        elif position < 0:
            growth[market] = per_side[OrderSide.sell]
        else:
            growth[market] = max(per_side.values())
    return growth


def shrinks_position(req: PreTradeRequest) -> bool:
    """True when the order makes the position smaller without opening the other side."""
    before = current_position(req)
    after = before + signed_amount(req)
    same_side = after == 0 or (after > 0) == (before > 0)
    return before != 0 and same_side and abs(after) < abs(before)


def unrealized_pnl(portfolio: PortfolioView) -> Decimal:
    return sum((p.amount * (p.mark_price - p.entry_price) for p in portfolio.positions), ZERO)


def drawdown(equity: Decimal, peak_before: Decimal) -> tuple[Decimal, Decimal]:
    """(peak including this equity, drawdown from that peak as a fraction)."""
    peak = max(peak_before, equity)
    if peak <= 0:
        return peak, ZERO
    return peak, (peak - equity) / peak


def position_risk(position: PositionView, default_stop_pct: Decimal) -> Decimal:
    """Money lost if the position's stop is hit; without a stop, default_stop_pct of notional."""
    if position.stop_loss is None:
        return abs(position.amount) * position.mark_price * default_stop_pct
    return abs(position.amount) * abs(position.entry_price - position.stop_loss)


def heat_after(req: PreTradeRequest, price: Decimal, limits: Limits) -> Decimal:
    """Money at risk to stops over the whole book once the order is filled at `price`."""
    stop_pct = limits.default_stop_pct
    others = sum(
        (position_risk(p, stop_pct) for p in req.portfolio.positions if not _same_market(req, p)),
        ZERO,
    )
    mine = sum(
        (position_risk(p, stop_pct) for p in req.portfolio.positions if _same_market(req, p)),
        ZERO,
    )
    others += sum(resting_elsewhere(req).values(), ZERO) * stop_pct
    before, after = current_position(req), resulting_position(req)
    distance = abs(price - req.stop_loss) if req.stop_loss is not None else price * stop_pct
    if shrinks_position(req):
        return others + mine * abs(after) / abs(before)
    if before == 0 or (after > 0) == (before > 0):
        mine += req.amount * distance
    else:  # flipped: the old side is gone, the new side is at risk to the order's stop
        mine = abs(after) * distance
    resting = sum((o.amount * o.price for o in _growing(req)), ZERO) * stop_pct
    return others + mine + resting


def gross_after(req: PreTradeRequest, price: Decimal) -> Decimal:
    """Sum of |notional| over the book once the order, and the resting orders that would
    grow positions, are filled (the order's market at `price`)."""
    others = sum(
        (abs(p.amount * p.mark_price) for p in req.portfolio.positions if not _same_market(req, p)),
        ZERO,
    )
    others += sum(resting_elsewhere(req).values(), ZERO)
    return others + abs(worst_position(req)) * price


def is_multiple(value: Decimal, step: Decimal) -> bool:
    with localcontext(PRECISION):
        return value % step == 0
