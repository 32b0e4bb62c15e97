"""Pre-trade rules: pure functions of (request, limits, context) returning a CheckResult.

No I/O here. The service loads the context (trading state, the equity peak, recent
approved decisions), `evaluate` runs every rule, the service stores the decision.
Every rule answers, pass or fail, with a detail naming its limit and the numbers.

The exposure limits (position, gross, heat) never block an order that shrinks a
position without flipping it (counting our resting orders on its side as filled too):
when equity has fallen and the book is already over a limit, de-risking must stay
possible. Everything else applies to every order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext

from agents.risk.book import (
    PRECISION,
    ZERO,
    current_position,
    drawdown,
    gross_after,
    heat_after,
    is_multiple,
    order_price,
    resting_amount,
    resulting_position,
    shrinks_in_worst_case,
    shrinks_position,
    unrealized_pnl,
    worst_position,
)
from agents.risk.schemas import Limits
from common.contracts import CheckResult, OrderType, PreTradeRequest, TradingState

RATE_WINDOW_S = 60


@dataclass(frozen=True)
class RecentOrder:
    """An approved decision of the last minutes, as the rate and duplicate rules see it."""

    client_order_id: str
    exchange: str
    symbol: str
    side: str
    amount: Decimal
    price: Decimal | None
    age_s: float


@dataclass(frozen=True)
class CheckContext:
    """What a check needs besides the request and the limits."""

    state: TradingState = TradingState.ACTIVE
    peak_equity: Decimal = ZERO  # the highest equity seen before this request
    recent_approved: Sequence[RecentOrder] = ()
    # Counted by the database when set, so a busy minute is not loaded row by row;
    # otherwise derived from `recent_approved`.
    approved_last_minute: int | None = None


Rule = Callable[[PreTradeRequest, Limits, CheckContext], CheckResult]


def drawdown_breach(equity: Decimal, peak_before: Decimal, limits: Limits) -> str | None:
    """The HALT reason when `equity` is further below the peak than max_drawdown_pct allows."""
    with localcontext(PRECISION):
        peak, fraction = drawdown(equity, peak_before)
        if fraction <= limits.max_drawdown_pct:
            return None
        return (
            f"max drawdown breached: equity {_m(equity)} is {_f(fraction)} below peak "
            f"{_m(peak)} > max_drawdown_pct {_n(limits.max_drawdown_pct)}"
        )


# --- formatting ----------------------------------------------------------------------------
def _m(value: Decimal) -> str:
    """Money: two decimals."""
    return f"{value:.2f}"


def _f(value: Decimal) -> str:
    """A fraction of equity: four decimals."""
    return f"{value:.4f}"


def _n(value: Decimal) -> str:
    """A number as given, without trailing zeros or exponent."""
    return format(value.normalize(), "f")


def _result(rule: str, passed: bool, detail: str) -> CheckResult:
    return CheckResult(rule=rule, passed=passed, detail=detail)


def _within(rule: str, what: str, value: str, ok: bool, limit: Decimal | int) -> CheckResult:
    shown = _n(limit) if isinstance(limit, Decimal) else str(limit)
    return _result(rule, ok, f"{what} {value} {'<=' if ok else '>'} {rule} {shown}")


def _at_least(rule: str, what: str, value: Decimal, minimum: Decimal) -> CheckResult:
    ok = value >= minimum
    return _result(rule, ok, f"{what} {_n(value)} {'>=' if ok else '<'} {rule} {_n(minimum)}")


def _no_price(rule: str) -> CheckResult:
    return _result(rule, False, f"{rule}: cannot value the order: no price and no reference_price")


def _no_equity(rule: str, equity: Decimal) -> CheckResult:
    return _result(rule, False, f"{rule}: equity {_m(equity)}: nothing to size the order against")


def _shrinks(rule: str, req: PreTradeRequest) -> CheckResult:
    before, after = current_position(req), worst_position(req)
    return _result(rule, True, f"{rule}: order shrinks position {_n(before)} to {_n(after)}")


# --- the rules -----------------------------------------------------------------------------
def check_trading_state(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    rule, state = "trading_state", ctx.state.value
    if ctx.state is TradingState.ACTIVE:
        return _result(rule, True, "trading state ACTIVE")
    before = current_position(req)
    if req.reduce_only and shrinks_position(req):
        after = resulting_position(req)
        detail = f"trading state {state}: reduce-only order shrinks {_n(before)} to {_n(after)}"
        return _result(rule, True, detail)
    return _result(
        rule,
        False,
        f"trading state {state}: only reduce-only orders that shrink a position pass "
        f"(reduce_only={req.reduce_only}, position {_n(before)}, "
        f"order {req.side.value} {_n(req.amount)})",
    )


def check_reduce_only(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    rule = "reduce_only"
    if not req.reduce_only:
        return _result(rule, True, "not a reduce-only order")
    if shrinks_position(req):
        return _shrinks(rule, req)
    return _result(
        rule,
        False,
        f"reduce-only {req.side.value} {_n(req.amount)} would not shrink position "
        f"{_n(current_position(req))} on {req.exchange} {req.symbol}",
    )


def check_order_notional(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    rule, price = "max_order_notional", order_price(req)
    if price is None:
        return _no_price(rule)
    notional = req.amount * price
    ok = notional <= limits.max_order_notional
    return _within(rule, "order notional", _m(notional), ok, limits.max_order_notional)


def _share_of_equity(rule: str, req: PreTradeRequest) -> CheckResult | tuple[Decimal, Decimal]:
    """What every share-of-equity rule starts with: an order that shrinks the position
    passes; without a price or positive equity the rule is failed, saying which.
    Otherwise (price, equity) to judge the order by."""
    if shrinks_in_worst_case(req):
        return _shrinks(rule, req)
    price = order_price(req)
    if price is None:
        return _no_price(rule)
    equity = req.portfolio.equity
    if equity <= 0:
        return _no_equity(rule, equity)
    return price, equity


def check_position_pct(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    rule = "max_position_pct"
    sized = _share_of_equity(rule, req)
    if isinstance(sized, CheckResult):
        return sized
    price, equity = sized
    after, resting = worst_position(req), resting_amount(req)
    notional = abs(after) * price
    fraction = notional / equity
    with_resting = f" ({_n(resting)} of it in resting orders)" if resting else ""
    what = (
        f"resulting position {_n(after)}{with_resting} x {_m(price)} = {_m(notional)} "
        f"of equity {_m(equity)}:"
    )
    return _within(
        rule, what, _f(fraction), fraction <= limits.max_position_pct, limits.max_position_pct
    )


def check_gross_exposure(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    rule = "max_gross_exposure_pct"
    sized = _share_of_equity(rule, req)
    if isinstance(sized, CheckResult):
        return sized
    price, equity = sized
    gross = gross_after(req, price)
    fraction = gross / equity
    limit = limits.max_gross_exposure_pct
    what = f"gross exposure after the order {_m(gross)} of equity {_m(equity)}:"
    return _within(rule, what, _f(fraction), fraction <= limit, limit)


def _stop_on_wrong_side(req: PreTradeRequest, price: Decimal) -> CheckResult | None:
    stop = req.stop_loss
    if stop is None:
        return None
    long = resulting_position(req) > 0
    if (long and stop < price) or (not long and stop > price):
        return None
    where = "below" if long else "above"
    side = "long" if long else "short"
    return _result(
        "max_heat_pct",
        False,
        f"stop_loss {_n(stop)} must be {where} the price {_n(price)} of a {side} position",
    )


def check_heat(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    rule = "max_heat_pct"
    sized = _share_of_equity(rule, req)
    if isinstance(sized, CheckResult):
        return sized
    price, equity = sized
    wrong_stop = _stop_on_wrong_side(req, price)
    if wrong_stop is not None:
        return wrong_stop
    at_risk = heat_after(req, price, limits)
    heat = at_risk / equity
    what = f"portfolio heat: {_m(at_risk)} at risk to stops of equity {_m(equity)}:"
    return _within(rule, what, _f(heat), heat <= limits.max_heat_pct, limits.max_heat_pct)


def check_daily_loss(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    rule, limit = "daily_loss_limit", limits.daily_loss_limit
    realized = req.portfolio.realized_pnl_today
    unrealized = unrealized_pnl(req.portfolio)
    pnl = realized + unrealized
    what = f"daily loss (realized {_m(realized)}, unrealized {_m(unrealized)})"
    loss = -pnl
    if loss <= limit:
        return _within(rule, what, _m(loss), True, limit)
    breached = f"{what} {_m(loss)} > {rule} {_n(limit)}"
    if req.reduce_only and shrinks_position(req):
        return _result(rule, True, f"{breached}; reduce-only order allowed")
    return _result(rule, False, f"{breached}; only reduce-only orders pass")


def check_drawdown(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    rule, limit, equity = "max_drawdown_pct", limits.max_drawdown_pct, req.portfolio.equity
    peak, fraction = drawdown(equity, ctx.peak_equity)
    what = f"drawdown of equity {_m(equity)} from peak {_m(peak)}:"
    if fraction <= limit:
        return _within(rule, what, _f(fraction), True, limit)
    breached = f"{what} {_f(fraction)} > {rule} {_n(limit)}"
    if req.reduce_only and shrinks_position(req):
        return _result(rule, True, f"{breached}; reduce-only order allowed")
    return _result(rule, False, f"{breached}; trading HALTED, only reduce-only orders pass")


def check_rate(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    rule, limit = "max_orders_per_minute", limits.max_orders_per_minute
    if ctx.approved_last_minute is not None:
        count = ctx.approved_last_minute + 1
    else:
        earlier = {
            o.client_order_id
            for o in ctx.recent_approved
            if o.age_s <= RATE_WINDOW_S and o.client_order_id != req.client_order_id
        }
        count = len(earlier) + 1
    what = f"orders approved in the last {RATE_WINDOW_S} s with this one:"
    return _within(rule, what, str(count), count <= limit, limit)


def _same_order(req: PreTradeRequest, other: RecentOrder) -> bool:
    return (
        other.exchange == req.exchange
        and other.symbol == req.symbol
        and other.side == req.side.value
        and other.amount == req.amount
        and other.price == req.price
    )


def check_duplicate(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    rule, window = "duplicate_order", limits.duplicate_window_s
    if window == 0:
        return _result(rule, True, "duplicate check off (duplicate_window_s 0)")
    for other in ctx.recent_approved:
        if (
            other.age_s <= window
            and other.client_order_id != req.client_order_id
            and _same_order(req, other)
        ):
            price = _n(req.price) if req.price is not None else "market"
            return _result(
                rule,
                False,
                f"same order ({req.side.value} {_n(req.amount)} {req.symbol} @ {price} on "
                f"{req.exchange}) approved {other.age_s:.1f} s ago as {other.client_order_id!r}"
                f" <= duplicate_window_s {window}",
            )
    return _result(rule, True, f"no identical order approved in the last {window} s")


def check_reference(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    rule, limit = "max_reference_age_ms", limits.max_reference_age_ms
    if req.reference_price is None:
        return _result(rule, False, "no reference_price: the order cannot be collared or valued")
    age = req.reference_age_ms
    if age is None:
        return _result(rule, False, "reference_age_ms missing: the reference price may be stale")
    what = f"reference price {_n(req.reference_price)} age"
    return _within(rule, what, f"{age} ms", age <= limit, limit)


def check_collar(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    rule, limit, ref = "price_collar_pct", limits.price_collar_pct, req.reference_price
    if req.type is OrderType.market:
        return _result(rule, True, "market order: no limit price to collar")
    if req.price is None:
        return _result(rule, False, f"{req.type.value} order without a price")
    if req.type is not OrderType.limit:
        return _result(rule, True, f"{req.type.value} trigger {_n(req.price)} is not collared")
    if ref is None:
        return _result(rule, False, "cannot collar the price: no reference_price")
    deviation = abs(req.price - ref) / ref
    what = f"price {_n(req.price)} vs reference {_n(ref)}: deviation"
    return _within(rule, what, _f(deviation), deviation <= limit, limit)


def check_amount_step(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    step, ok = req.market.amount_step, is_multiple(req.amount, req.market.amount_step)
    verdict = "is" if ok else "is not"
    return _result(
        "amount_step", ok, f"amount {_n(req.amount)} {verdict} a multiple of amount_step {_n(step)}"
    )


def check_price_step(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    step = req.market.price_step
    if req.type is OrderType.market or req.price is None:
        return _result("price_step", True, "no order price to check")
    ok = is_multiple(req.price, step)
    verdict = "is" if ok else "is not"
    return _result(
        "price_step", ok, f"price {_n(req.price)} {verdict} a multiple of price_step {_n(step)}"
    )


def check_min_amount(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    return _at_least("min_amount", "amount", req.amount, req.market.min_amount)


def check_min_notional(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> CheckResult:
    price = order_price(req)
    if price is None:
        return _no_price("min_notional")
    return _at_least("min_notional", "order notional", req.amount * price, req.market.min_notional)


RULES: tuple[Rule, ...] = (
    check_trading_state,
    check_reduce_only,
    check_order_notional,
    check_position_pct,
    check_gross_exposure,
    check_heat,
    check_daily_loss,
    check_drawdown,
    check_rate,
    check_duplicate,
    check_reference,
    check_collar,
    check_amount_step,
    check_price_step,
    check_min_amount,
    check_min_notional,
)


def evaluate(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> list[CheckResult]:
    """Run every rule; the order is approved only when every result passed."""
    with localcontext(PRECISION):
        return [rule(req, limits, ctx) for rule in RULES]
