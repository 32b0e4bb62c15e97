"""The interface every exchange adapter implements, and the values it returns.

The execution agent talks to `sim` and to real exchanges (through CCXT) only through
`ExchangeAdapter`. Money (amounts, prices, fees, balances) is Decimal; market data
bars are floats. Times are unix milliseconds. Statuses follow CCXT: an order is
"open", "closed" (fully filled), "canceled", "rejected" or "expired" (the exchange
dropped the unfilled rest; `filled` may be > 0).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Literal, NamedTuple, Self

from agents.execution.exchange.errors import BadRequest
from common.contracts import MarketRules, OrderSide, OrderType
from common.money import to_step

OrderStatus = Literal["open", "closed", "canceled", "rejected", "expired"]
ORDER_STATUSES: tuple[OrderStatus, ...] = ("open", "closed", "canceled", "rejected", "expired")


@dataclass(frozen=True, slots=True)
class Market:
    """One symbol's trading rules: precision steps, minimums and fee rates."""

    symbol: str
    base: str
    quote: str
    amount_step: Decimal
    price_step: Decimal
    min_amount: Decimal
    min_notional: Decimal
    maker_fee: Decimal
    taker_fee: Decimal

    def rules(self) -> MarketRules:
        return MarketRules(
            amount_step=self.amount_step,
            price_step=self.price_step,
            min_amount=self.min_amount,
            min_notional=self.min_notional,
        )

    def amount_to_precision(self, amount: Decimal) -> Decimal:
        """Round an amount down to the market's step (what the exchange would accept)."""
        return to_step(amount, self.amount_step, ROUND_DOWN)

    def price_to_precision(self, price: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
        return to_step(price, self.price_step, rounding)


@dataclass(frozen=True, slots=True)
class Ticker:
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    timestamp: int

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2


class Bar(NamedTuple):
    """One OHLCV candle; `ts` is the candle's open time. A tuple: cheap by the thousand."""

    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass(frozen=True, slots=True)
class Balance:
    free: Decimal
    used: Decimal
    total: Decimal


@dataclass(frozen=True, slots=True)
class Trade:
    """One fill. `taker` is False for a resting order filled by the market (maker fee)."""

    id: str
    order_id: str
    client_order_id: str
    symbol: str
    side: OrderSide
    amount: Decimal
    price: Decimal
    fee: Decimal
    fee_currency: str
    timestamp: int
    taker: bool

    @property
    def cost(self) -> Decimal:
        return self.amount * self.price


@dataclass(frozen=True, slots=True)
class ExchangeOrder:
    """An order as the exchange sees it. `price` is the limit price (None for market
    orders), `stop_price` the trigger of stop_loss/take_profit orders, `average` the
    mean fill price (None before any fill), `fee` the total fee in `fee_currency`."""

    id: str
    client_order_id: str
    symbol: str
    side: OrderSide
    type: OrderType
    amount: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    status: OrderStatus
    filled: Decimal
    remaining: Decimal
    average: Decimal | None
    fee: Decimal
    fee_currency: str | None
    timestamp: int
    trades: list[Trade] = field(default_factory=list)
    cost: Decimal = Decimal(0)
    last_trade_timestamp: int | None = None
    reason: str | None = None  # why it was rejected or expired, when known


class ExchangeAdapter(ABC):
    """What the execution agent may ask of an exchange. Every method is async and
    raises only the errors in `agents.execution.exchange.errors`."""

    id: str = "exchange"
    # Whether `create_oco` places a one-cancels-the-other stop_loss/take_profit pair on
    # the exchange itself (execution then leaves attached brackets to the exchange).
    supports_oco: bool = False

    @abstractmethod
    async def load_markets(self) -> dict[str, Market]: ...

    @abstractmethod
    async def fetch_ticker(self, symbol: str) -> Ticker: ...

    async def fetch_order_book(self, symbol: str, limit: int = 20) -> OrderBook:
        """The best `limit` levels a side. Optional: adapters without one refuse."""
        raise BadRequest(f"{self.id} does not provide order books", exchange=self.id)

    @abstractmethod
    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since_ms: int | None = None, limit: int = 500
    ) -> list[Bar]: ...

    @abstractmethod
    async def fetch_balance(self) -> dict[str, Balance]: ...

    @abstractmethod
    async def create_order(
        self,
        symbol: str,
        side: OrderSide | str,
        type: OrderType | str,
        amount: Decimal,
        price: Decimal | None = None,
        stop_price: Decimal | None = None,
        *,
        client_order_id: str,
    ) -> ExchangeOrder:
        """Place an order. Never retry this on `ExchangeTimeout`/`NetworkError`:
        look the order up with `fetch_order_by_client_id` instead."""

    async def create_oco(
        self,
        symbol: str,
        side: OrderSide | str,
        amount: Decimal,
        stop_loss: Decimal,
        take_profit: Decimal,
        *,
        client_order_ids: tuple[str, str],
    ) -> tuple[ExchangeOrder, ExchangeOrder]:
        """Place a stop_loss (trigger `stop_loss`) and a take_profit (trigger
        `take_profit`) for `amount`, both executing at market, linked so that the first
        to trigger, or cancelling either, cancels the other. Returns (stop, target).
        Optional (`supports_oco`); like `create_order`, never retried on a timeout."""
        raise BadRequest(f"{self.id} does not take one-cancels-the-other pairs", exchange=self.id)

    @abstractmethod
    async def fetch_order(self, order_id: str, symbol: str) -> ExchangeOrder: ...

    @abstractmethod
    async def fetch_order_by_client_id(
        self, client_order_id: str, symbol: str
    ) -> ExchangeOrder | None: ...

    @abstractmethod
    async def fetch_open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]: ...

    @abstractmethod
    async def cancel_order(self, order_id: str, symbol: str) -> ExchangeOrder: ...

    @abstractmethod
    async def fetch_my_trades(
        self, symbol: str | None = None, since_ms: int | None = None
    ) -> list[Trade]: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass(frozen=True, slots=True)
class OrderBook:
    """Price levels as (price, amount), best first."""

    symbol: str
    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]
    timestamp: int
