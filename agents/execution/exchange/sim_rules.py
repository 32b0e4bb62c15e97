"""What the sim accepts: order request validation and the rules of each order type.

A resting order watches one price level: a limit buy fills when the price falls to
its limit (a sell when it rises to it); a stop_loss sell triggers when the price falls
to its stop (a buy when it rises); a take_profit sell when the price rises to its stop
(a buy when it falls). A triggered stop without a limit price executes at market; with
one it becomes a limit order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Protocol, TypeVar

from agents.execution.exchange.errors import DuplicateOrder, InvalidOrder
from agents.execution.exchange.sim_markets import Fees
from agents.execution.exchange.sim_state import SimOrder
from common.contracts import OrderSide, OrderType

CLIENT_ORDER_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,64}$")
# A stop buy at market holds this much more than stop price x amount, for slippage.
STOP_BUY_BUFFER = Decimal("0.02")

E = TypeVar("E", bound=StrEnum)


class Listing(Protocol):
    """What the rules need of a symbol: the sim's `MarketSpec` or a real `Market`."""

    @property
    def symbol(self) -> str: ...
    @property
    def base(self) -> str: ...
    @property
    def quote(self) -> str: ...
    @property
    def amount_step(self) -> Decimal: ...
    @property
    def price_step(self) -> Decimal: ...
    @property
    def min_amount(self) -> Decimal: ...
    @property
    def min_notional(self) -> Decimal: ...


class Quote(Protocol):
    """Best bid and ask now, and the price stops compare with (the sim's `Book`, or a
    real exchange's `Ticker` through `paper.TickerQuote`)."""

    @property
    def bid(self) -> Decimal: ...
    @property
    def ask(self) -> Decimal: ...
    @property
    def mid(self) -> float | Decimal: ...


@dataclass(frozen=True)
class OrderRequest:
    symbol: str
    side: OrderSide
    type: OrderType
    amount: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    client_order_id: str


def parse_request(
    spec: Listing,
    side: OrderSide | str,
    type_: OrderType | str,
    amount: object,
    price: object,
    stop_price: object,
    client_order_id: str,
) -> OrderRequest:
    """Check everything that does not depend on the market price; raise InvalidOrder."""
    if not isinstance(client_order_id, str) or not CLIENT_ORDER_ID.match(client_order_id):
        raise InvalidOrder(
            f"client_order_id {client_order_id!r} must be 1-64 characters of "
            "letters, digits and ._:/-",
            exchange="sim",
        )
    request = OrderRequest(
        symbol=spec.symbol,
        side=_enum(OrderSide, side, "side"),
        type=_enum(OrderType, type_, "type"),
        amount=_decimal(amount, "amount"),
        price=None if price is None else _decimal(price, "price"),
        stop_price=None if stop_price is None else _decimal(stop_price, "stop_price"),
        client_order_id=client_order_id,
    )
    _check_amount(spec, request.amount)
    _check_prices(spec, request)
    return request


def parse_pair(
    spec: Listing,
    side: OrderSide | str,
    amount: object,
    stop_loss: object,
    take_profit: object,
    client_order_ids: tuple[str, str],
) -> tuple[OrderRequest, OrderRequest]:
    """The two legs of a one-cancels-the-other pair, each checked like an order: a
    stop_loss and a take_profit at market, on `side`, for `amount`."""
    stop_id, target_id = client_order_ids
    stop = parse_request(spec, side, OrderType.stop_loss, amount, None, stop_loss, stop_id)
    target = parse_request(spec, side, OrderType.take_profit, amount, None, take_profit, target_id)
    check_pair(stop, target)
    return stop, target


def check_unused(used: dict[str, str], client_order_id: str, exchange: str) -> None:
    """Refuse a client order id this account has used already (`used`: id -> order)."""
    existing = used.get(client_order_id)
    if existing is not None:
        raise DuplicateOrder(
            f"client_order_id {client_order_id!r} is already used by order {existing}; "
            "no new order was created",
            existing_order_id=existing,
            exchange=exchange,
        )


def check_against_market(spec: Listing, request: OrderRequest, book: Quote) -> None:
    """Minimum notional at the order's reference price; stops must not fire at once."""
    buy = request.side == OrderSide.buy
    reference = request.price or request.stop_price or (book.ask if buy else book.bid)
    notional = request.amount * reference
    if notional < spec.min_notional:
        raise InvalidOrder(
            f"notional {notional} {spec.quote} (amount {request.amount} x price {reference}) "
            f"is below {spec.symbol} minimum notional {spec.min_notional} {spec.quote}",
            exchange="sim",
        )
    if request.stop_price is not None:
        below = trigger_below(request.type, request.side)
        if (book.mid <= request.stop_price) if below else (book.mid >= request.stop_price):
            raise InvalidOrder(
                f"{request.type.value} {request.side.value} with stop_price {request.stop_price} "
                f"would trigger immediately: {spec.symbol} is at {book.bid}/{book.ask}",
                exchange="sim",
            )


def check_pair(stop: OrderRequest, target: OrderRequest) -> None:
    """A one-cancels-the-other pair closes one position: a stop_loss and a take_profit
    for the same symbol, side and amount, each with its own client order id."""
    if (stop.type, target.type) != (OrderType.stop_loss, OrderType.take_profit):
        raise InvalidOrder(
            "a pair is a stop_loss and a take_profit, in that order; got "
            f"{stop.type.value} and {target.type.value}",
            exchange="sim",
        )
    if (stop.symbol, stop.side, stop.amount) != (target.symbol, target.side, target.amount):
        raise InvalidOrder(
            "both legs of a pair must have the same symbol, side and amount; got "
            f"{stop.side.value} {stop.amount} {stop.symbol} and "
            f"{target.side.value} {target.amount} {target.symbol}",
            exchange="sim",
        )
    if stop.client_order_id == target.client_order_id:
        raise InvalidOrder("each leg of a pair needs its own client_order_id", exchange="sim")


def trigger_below(type_: OrderType, side: OrderSide) -> bool:
    """True when the stop fires as the price falls to it, False when it rises to it."""
    if type_ == OrderType.stop_loss:
        return side == OrderSide.sell
    return side == OrderSide.buy


def watched_level(order: SimOrder) -> tuple[Decimal, bool]:
    """The price an open order waits for, and whether it waits for the price to fall."""
    if order.is_stop and not order.triggered:
        assert order.stop_price is not None
        return order.stop_price, trigger_below(order.type, order.side)
    assert order.price is not None
    return order.price, order.is_buy


def reservation(order: SimOrder, fees: Fees) -> Decimal:
    """What an open order holds of its reserve asset: the base it may sell, or the quote
    it may pay including the larger fee."""
    if order.status != "open" or order.remaining <= 0:
        return Decimal(0)
    if not order.is_buy:
        return order.remaining
    with_fee = 1 + max(fees.maker, fees.taker)
    if order.price is not None:
        return order.remaining * order.price * with_fee
    assert order.stop_price is not None  # an untriggered stop buy at market
    return order.remaining * order.stop_price * (1 + STOP_BUY_BUFFER) * with_fee


def _enum(kind: type[E], value: object, name: str) -> E:
    try:
        return kind(str(value))
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise InvalidOrder(f"{name} {value!r} is not one of {allowed}", exchange="sim") from None


def _decimal(value: object, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise InvalidOrder(
            f"{name} must be a Decimal (or int/str), not {type(value).__name__}", exchange="sim"
        )
    try:
        number = Decimal(value)
    except ArithmeticError:
        raise InvalidOrder(f"{name} {value!r} is not a number", exchange="sim") from None
    if not number.is_finite() or number <= 0:
        raise InvalidOrder(f"{name} must be a positive number, got {value}", exchange="sim")
    return number


def _check_amount(spec: Listing, amount: Decimal) -> None:
    if amount % spec.amount_step:
        raise InvalidOrder(
            f"amount {amount} is not a multiple of {spec.symbol} amount step {spec.amount_step}",
            exchange="sim",
        )
    if amount < spec.min_amount:
        raise InvalidOrder(
            f"amount {amount} is below {spec.symbol} minimum amount {spec.min_amount}",
            exchange="sim",
        )


def _check_prices(spec: Listing, request: OrderRequest) -> None:
    kind = request.type
    if kind == OrderType.market and (request.price or request.stop_price):
        raise InvalidOrder("market orders take no price or stop_price", exchange="sim")
    if kind == OrderType.limit:
        if request.price is None:
            raise InvalidOrder("limit orders need a price", exchange="sim")
        if request.stop_price is not None:
            raise InvalidOrder(
                "limit orders take no stop_price (use stop_loss/take_profit)", exchange="sim"
            )
    if kind in (OrderType.stop_loss, OrderType.take_profit) and request.stop_price is None:
        raise InvalidOrder(
            f"{kind.value} orders need stop_price (the trigger); price is the optional "
            "limit once triggered (none: execute at market)",
            exchange="sim",
        )
    for name, value in (("price", request.price), ("stop_price", request.stop_price)):
        if value is not None and value % spec.price_step:
            raise InvalidOrder(
                f"{name} {value} is not a multiple of {spec.symbol} price step {spec.price_step}",
                exchange="sim",
            )
