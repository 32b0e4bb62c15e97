from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.contracts import EXCHANGE_PATTERN, SYMBOL_PATTERN, OrderSide, OrderType
from common.money import Fraction, Positive

CLIENT_ORDER_ID = r"^[A-Za-z0-9_.:-]{1,64}$"


class OrderRequest(BaseModel):
    """A new order. Give `amount` (base currency) or, for a market order, `quote_amount`:
    its cost in the quote currency (e.g. 50 USDT; the fee is charged on top)."""

    model_config = ConfigDict(extra="forbid")

    exchange: str = Field(default="sim", pattern=EXCHANGE_PATTERN)
    symbol: str = Field(pattern=SYMBOL_PATTERN, examples=["BTC/USDT"])
    side: OrderSide
    type: OrderType = OrderType.market
    amount: Positive | None = None
    quote_amount: Positive | None = Field(
        default=None,
        description="market orders: the cost in the quote currency, converted to an amount "
        "at the reference price and rounded down to the amount step (the fee is on top)",
    )
    price: Positive | None = None
    stop_price: Positive | None = None
    client_order_id: str | None = Field(default=None, pattern=CLIENT_ORDER_ID)
    reduce_only: bool = False
    stop_loss: Positive | None = None
    take_profit: Positive | None = None
    trailing_stop_pct: Fraction | None = None

    @model_validator(mode="after")
    def _consistent(self) -> OrderRequest:
        if (self.amount is None) == (self.quote_amount is None):
            raise ValueError("give exactly one of amount or quote_amount")
        if self.type == OrderType.limit and self.price is None:
            raise ValueError("a limit order needs price")
        if self.type == OrderType.market and self.price is not None:
            raise ValueError("a market order takes no price; use type=limit")
        if self.type in (OrderType.stop_loss, OrderType.take_profit) and self.stop_price is None:
            raise ValueError(f"a {self.type.value} order needs stop_price")
        if self.type != OrderType.market and self.quote_amount is not None:
            raise ValueError("quote_amount is for market orders; give amount")
        return self


class OrderView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    client_order_id: str
    exchange: str
    symbol: str
    side: str
    type: str
    amount: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    status: str
    exchange_order_id: str | None
    filled: Decimal
    average_price: Decimal | None
    fee: Decimal
    reduce_only: bool
    stop_loss: Decimal | None
    take_profit: Decimal | None
    trailing_stop_pct: Decimal | None
    parent_id: int | None
    role: str
    reason: str | None
    requested_by: str
    created_at: datetime
    updated_at: datetime


class PositionOut(BaseModel):
    exchange: str
    symbol: str
    amount: Decimal
    entry_price: Decimal
    mark_price: Decimal | None
    unrealized_pnl: Decimal | None
    realized_pnl: Decimal
    stop_loss: Decimal | None
    take_profit: Decimal | None
    trailing_stop_pct: Decimal | None
    protected_by: Literal["exchange", "execution"] | None = Field(
        description="Who fires the attached stop-loss/take-profit: `exchange` (they rest "
        "there as a one-cancels-the-other pair, and fire even while VolexSwarm is down), "
        "`execution` (it watches the price and closes at market), or null (none attached). "
        "A trailing stop is always watched by execution."
    )


class ClosePositions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: str | None = Field(default=None, pattern=SYMBOL_PATTERN, description="omit: all")


class CloseResult(BaseModel):
    orders: list[OrderView]
    errors: list[str] = []


class CancelAll(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: str | None = Field(default=None, pattern=SYMBOL_PATTERN, description="omit: all")


class CancelAllResult(BaseModel):
    cancelled: list[OrderView]
    errors: list[str]


class BalanceOut(BaseModel):
    exchange: str
    balances: dict[str, dict[str, Decimal]]


class TickerOut(BaseModel):
    exchange: str
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    timestamp: int


class ExchangeOut(BaseModel):
    id: str
    mode: Literal["simulated", "paper", "live"]
    symbols: list[str]


class OhlcvOut(BaseModel):
    """Candles as compact rows: `[open time (epoch ms), open, high, low, close, volume]`,
    oldest first; the last one may still be forming."""

    exchange: str
    symbol: str
    timeframe: str
    bars: list[tuple[int, float, float, float, float, float]]


class ExchangeStatus(BaseModel):
    id: str
    ok: bool
    detail: str
    latency_ms: float


class FaultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal[
        "reject",
        "timeout_after_accept",
        "hang_after_accept",
        "network_error",
        "rate_limited",
        "auth_error",
    ]
    op: Literal[
        "create_order", "create_oco", "cancel_order", "fetch_order", "fetch_ticker", "*"
    ] = "create_order"
    times: int = Field(default=1, ge=1, le=1000)
    hang_seconds: float | None = Field(
        default=None,
        gt=0,
        le=600,
        description="hang_after_accept only: how long the sim stays silent (default 120)",
    )

    @model_validator(mode="after")
    def _hang_only_for_a_hang(self) -> FaultRequest:
        if self.hang_seconds is not None and self.kind != "hang_after_accept":
            raise ValueError("hang_seconds applies to kind hang_after_accept only")
        return self


class ArmedFault(BaseModel):
    """A fault still armed on the sim: the next `times` calls of `op` fail with `kind`."""

    kind: str
    op: str
    times: int
    hang_seconds: float | None = Field(description="hang_after_accept only")
