"""What execution, risk and compliance say to each other over HTTP.

Both sides of each call import these models, so a field renamed on one side
breaks the other at import time, not at 3 a.m. in production. Money is Decimal.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from common.money import NonNegative, Positive, Signed

SYMBOL_PATTERN = r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}$"
EXCHANGE_PATTERN = r"^[a-z0-9][a-z0-9_]{0,63}$"
TRADING_STATE_CHANNEL = "trading-state"  # Redis channel (common.events adds the prefix)
# The backtest agent stored candles of {exchange, symbol, timeframe}: cached bars are stale.
MARKET_DATA_CHANNEL = "market-data"


class OrderSide(StrEnum):
    buy = "buy"
    sell = "sell"


class OrderType(StrEnum):
    market = "market"
    limit = "limit"
    stop_loss = "stop_loss"
    take_profit = "take_profit"


class TradingState(StrEnum):
    """ACTIVE: trade. REDUCING: only orders that shrink a position. HALTED: nothing new."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


# --- trading state (owned by risk) -----------------------------------------------------
class TradingStateView(BaseModel):
    state: TradingState
    reason: str
    changed_by: str
    changed_at: datetime
    flatten: bool = False


# --- pre-trade check: execution -> risk ------------------------------------------------
class MarketRules(BaseModel):
    """An exchange's rules for one symbol (CCXT's market precision and limits)."""

    amount_step: Positive
    price_step: Positive
    min_amount: NonNegative = Decimal(0)
    min_notional: NonNegative = Decimal(0)


class PositionView(BaseModel):
    exchange: str
    symbol: str
    amount: Signed  # > 0 long, < 0 short
    entry_price: NonNegative
    mark_price: NonNegative
    stop_loss: Positive | None = None


class OpenOrder(BaseModel):
    """One of our orders resting on an exchange: what is left of it, and its limit price
    (or stop trigger). Risk counts those that would grow a position if they filled."""

    exchange: str
    symbol: str
    side: OrderSide
    amount: Positive  # the unfilled remainder
    price: Positive
    reduce_only: bool = False


class PortfolioView(BaseModel):
    """Execution's picture of the account, sent with every check (risk keeps no ledger)."""

    equity: NonNegative  # in the quote currency
    cash: NonNegative
    positions: list[PositionView] = Field(default_factory=list)
    realized_pnl_today: Signed = Decimal(0)
    open_orders: list[OpenOrder] = Field(default_factory=list)
    # Which account (execution: the exchange id) this is: risk keeps a drawdown peak per
    # account. None: the single peak of a caller that trades one book.
    account: str | None = Field(None, pattern=EXCHANGE_PATTERN)


class PreTradeOrder(BaseModel):
    """One order to judge; with the account it is a PreTradeRequest."""

    client_order_id: str = Field(min_length=1, max_length=64)
    exchange: str = Field(pattern=EXCHANGE_PATTERN)
    symbol: str = Field(pattern=SYMBOL_PATTERN)
    side: OrderSide
    type: OrderType
    amount: Positive
    price: Positive | None = None  # limit price, or stop trigger for stop orders
    reduce_only: bool = False
    stop_loss: Positive | None = None
    reference_price: Positive | None = None  # a fresh mid price; None if unavailable
    reference_age_ms: int | None = Field(default=None, ge=0)
    market: MarketRules


class PreTradeRequest(PreTradeOrder):
    portfolio: PortfolioView


# Orders judged in one call: execution sends what arrived while the previous call was out.
MAX_BATCH = 64


def _distinct_ids(orders: list[Any]) -> list[Any]:
    seen: set[str] = set()
    for order in orders:
        if order.client_order_id in seen:
            raise ValueError(f"client_order_id {order.client_order_id!r} is in the batch twice")
        seen.add(order.client_order_id)
    return orders


class PreTradeBatch(BaseModel):
    """Orders judged together, in turn, against one account: each sees `portfolio` with
    the orders approved before it in the batch counted as resting orders of ours."""

    portfolio: PortfolioView
    orders: list[PreTradeOrder] = Field(min_length=1, max_length=MAX_BATCH)

    _distinct = field_validator("orders")(_distinct_ids)


class CheckResult(BaseModel):
    rule: str
    passed: bool
    detail: str  # names the numbers: "notional 12000 > max_order_notional 10000"


class CheckDecision(BaseModel):
    approved: bool
    checks: list[CheckResult]
    state: TradingState | None = None

    @property
    def rejections(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]


# --- policy check: execution -> compliance ------------------------------------------------
class RestingOrder(BaseModel):
    side: OrderSide
    price: Positive
    amount: Positive


class PolicyRequest(BaseModel):
    client_order_id: str = Field(min_length=1, max_length=64)
    exchange: str = Field(pattern=EXCHANGE_PATTERN)
    symbol: str = Field(pattern=SYMBOL_PATTERN)
    side: OrderSide
    type: OrderType
    amount: Positive
    price: Positive | None = None
    reference_price: Positive | None = None
    resting_orders: list[RestingOrder] = Field(default_factory=list)  # ours, same symbol
    requested_by: str


class PolicyBatch(BaseModel):
    """Orders checked together, in turn: each sees the limit orders approved before it in
    the batch (same symbol) among our resting orders."""

    orders: list[PolicyRequest] = Field(min_length=1, max_length=MAX_BATCH)

    _distinct = field_validator("orders")(_distinct_ids)


# What a batch's decisions list: every rule's result, or only the rules that failed (what
# execution asks for: it acts on the rejections alone, and every result is stored and
# audited either way). Every passed rule's detail made risk's answer ~1.8 KB per order,
# and reading a batch's back took 1.7 ms of execution's CPU under load (bench/README.md).
CheckListing = Literal["all", "failed"]


class CheckDecisions(BaseModel):
    """A batch's decisions, in the order of its orders."""

    decisions: list[CheckDecision]

    @classmethod
    def listing(cls, decisions: list[CheckDecision], checks: CheckListing) -> CheckDecisions:
        if checks == "failed":
            decisions = [d.model_copy(update={"checks": d.rejections}) for d in decisions]
        return cls(decisions=decisions)


# --- audit events: any agent -> compliance ---------------------------------------------------
class AuditEventIn(BaseModel):
    """One fact for the append-only audit log."""

    kind: str = Field(pattern=r"^[a-z_]+\.[a-z_]+$")  # e.g. order.requested, risk.halted
    actor: str = Field(min_length=1, max_length=64)  # operator or a service name
    subject: str | None = Field(default=None, max_length=128)  # e.g. a client order id
    data: dict[str, Any] = Field(default_factory=dict)
    # The sender's id for this event: sent again (a retry after a lost answer), it is
    # not appended a second time; compliance answers with the row first stored.
    event_id: str | None = Field(default=None, min_length=8, max_length=64, pattern=r"^[\w-]+$")


class FillEvent(BaseModel):
    """The `data` of an `order.filled` audit event: what the trade reports are built from."""

    fill_id: str
    client_order_id: str
    exchange: str
    symbol: str = Field(pattern=SYMBOL_PATTERN)
    side: OrderSide
    amount: Positive
    price: Positive
    fee: NonNegative
    fee_currency: str
    filled_at: datetime


# --- kill switch: risk -> execution ------------------------------------------------------------
class ApplyTradingState(BaseModel):
    """Risk tells execution the new state; on HALTED execution cancels every open order
    and, with `flatten`, closes every position at market."""

    state: TradingState
    reason: str
    flatten: bool = False


class ApplyTradingStateResult(BaseModel):
    cancelled_orders: int
    closed_positions: int
    errors: list[str] = Field(default_factory=list)
