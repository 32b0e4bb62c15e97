"""The policy rules, as pure functions: a policy, an order and the clock in, a CheckResult out.

Every rule is evaluated for every order (no short-circuit), so a rejection lists
everything that is wrong at once, and each result names the numbers it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from agents.compliance.schemas import DAYS, PolicySet, TradingWindow
from common.contracts import CheckResult, OrderSide, OrderType, PolicyRequest, RestingOrder

RULES = (
    "restricted_symbols",
    "allowed_exchanges",
    "trading_window",
    "max_orders_per_day",
    "wash_trade",
)


@dataclass(frozen=True)
class OrderCount:
    """Orders approved so far this UTC day, and whether this order is one of them."""

    approved_today: int
    this_order_counted: bool


def _num(value: Decimal) -> str:
    return format(value.normalize(), "f")


def restricted_symbols(policy: PolicySet, order: PolicyRequest) -> CheckResult:
    base, quote = order.symbol.split("/")
    hits = [s for s in policy.restricted_symbols if s in (order.symbol, base, quote)]
    if hits:
        return CheckResult(
            rule="restricted_symbols",
            passed=False,
            detail=f"{order.symbol} is restricted (matches {', '.join(hits)})",
        )
    return CheckResult(
        rule="restricted_symbols",
        passed=True,
        detail=f"{order.symbol} is not among {len(policy.restricted_symbols)} restricted entries",
    )


def allowed_exchanges(policy: PolicySet, order: PolicyRequest) -> CheckResult:
    allowed = ", ".join(policy.allowed_exchanges)
    if order.exchange in policy.allowed_exchanges:
        return CheckResult(
            rule="allowed_exchanges", passed=True, detail=f"{order.exchange} is in [{allowed}]"
        )
    return CheckResult(
        rule="allowed_exchanges",
        passed=False,
        detail=f"{order.exchange} is not an allowed exchange; allowed: [{allowed}]",
    )


def _describe(window: TradingWindow) -> str:
    return f"{','.join(window.days)} {window.start}-{window.end}"


def _inside(window: TradingWindow, day: str, clock: str) -> bool:
    return day in window.days and window.start <= clock < window.end


def trading_window(policy: PolicySet, now: datetime) -> CheckResult:
    utc = now.astimezone(UTC)
    day = DAYS[utc.weekday()]
    clock = utc.strftime("%H:%M:%S")
    stamp = f"{day} {clock} UTC"
    if not policy.trading_windows:
        return CheckResult(
            rule="trading_window", passed=True, detail=f"no trading windows set; {stamp} is open"
        )
    for window in policy.trading_windows:
        # "HH:MM:SS" compares correctly against "HH:MM" bounds as strings.
        if _inside(window, day, clock):
            return CheckResult(
                rule="trading_window",
                passed=True,
                detail=f"{stamp} is inside window {_describe(window)}",
            )
    windows = "; ".join(_describe(w) for w in policy.trading_windows)
    return CheckResult(
        rule="trading_window",
        passed=False,
        detail=f"{stamp} is outside every trading window ({windows})",
    )


def max_orders_per_day(policy: PolicySet, count: OrderCount) -> CheckResult:
    limit = policy.max_orders_per_day
    if limit is None:
        return CheckResult(
            rule="max_orders_per_day",
            passed=True,
            detail=f"no daily limit set; {count.approved_today} approved today",
        )
    if count.this_order_counted:
        return CheckResult(
            rule="max_orders_per_day",
            passed=True,
            detail=(
                f"this order was already approved today and is counted in "
                f"{count.approved_today} of max_orders_per_day {limit}"
            ),
        )
    after = count.approved_today + 1
    return CheckResult(
        rule="max_orders_per_day",
        passed=after <= limit,
        detail=(
            f"{count.approved_today} approved today, this order would be number {after}; "
            f"max_orders_per_day {limit}"
        ),
    )


def _effective_price(order: PolicyRequest) -> tuple[Decimal | None, str]:
    if order.type is OrderType.market or order.price is None:
        return order.reference_price, "reference price"
    return order.price, f"{order.type.value} price"


def _crosses(side: OrderSide, price: Decimal, resting: RestingOrder) -> bool:
    if side is OrderSide.buy:
        return price >= resting.price
    return price <= resting.price


def wash_trade(order: PolicyRequest) -> CheckResult:
    opposite = OrderSide.sell if order.side is OrderSide.buy else OrderSide.buy
    against = [r for r in order.resting_orders if r.side is opposite]
    if not against:
        return CheckResult(
            rule="wash_trade", passed=True, detail=f"no resting {opposite.value} orders of ours"
        )
    price, what = _effective_price(order)
    if price is None:
        return CheckResult(
            rule="wash_trade",
            passed=False,
            detail=(
                f"{order.type.value} {order.side.value} has no price or reference_price to "
                f"compare with our {len(against)} resting {opposite.value} orders"
            ),
        )
    crossed = [r for r in against if _crosses(order.side, price, r)]
    if crossed:
        # The nearest crossed order is the one the exchange would match first.
        worst = min(crossed, key=lambda r: r.price if order.side is OrderSide.buy else -r.price)
        return CheckResult(
            rule="wash_trade",
            passed=False,
            detail=(
                f"{order.side.value} at {what} {_num(price)} would cross our resting "
                f"{opposite.value} at {_num(worst.price)} (amount {_num(worst.amount)}); "
                f"{len(crossed)} of {len(against)} resting {opposite.value} orders crossed"
            ),
        )
    best = (min if order.side is OrderSide.buy else max)(r.price for r in against)
    return CheckResult(
        rule="wash_trade",
        passed=True,
        detail=(
            f"{order.side.value} at {what} {_num(price)} does not cross our best resting "
            f"{opposite.value} at {_num(best)}"
        ),
    )


def evaluate(
    policy: PolicySet, order: PolicyRequest, now: datetime, count: OrderCount
) -> list[CheckResult]:
    """Every rule's result for this order, in `RULES` order."""
    return [
        restricted_symbols(policy, order),
        allowed_exchanges(policy, order),
        trading_window(policy, now),
        max_orders_per_day(policy, count),
        wash_trade(order),
    ]
