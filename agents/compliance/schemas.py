"""Request and response models of the compliance agent (the shared ones are in common.contracts)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.contracts import EXCHANGE_PATTERN, OrderSide

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"
HHMM_OR_MIDNIGHT = r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$"

# --- audit -----------------------------------------------------------------------------------


class AuditEventOut(BaseModel):
    """A stored audit row. `actor` is the authenticated caller; `on_behalf_of` is the actor
    the caller named in the body, when it differs."""

    id: int
    at: datetime
    kind: str
    actor: str
    on_behalf_of: str | None
    subject: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: int | None = Field(
        description="pass as `cursor` for the next page; null on the last page"
    )
    order: Literal["asc", "desc"]
    limit: int


class ChainVerification(BaseModel):
    ok: bool
    checked: int
    first_broken_id: int | None
    detail: str


# --- policies --------------------------------------------------------------------------------

# A pair ("BTC/USDT") or a bare asset ("XMR", meaning every pair that has it on either side).
Symbol = Annotated[str, Field(pattern=r"^[A-Z0-9]{1,20}(/[A-Z0-9]{1,20})?$")]
Exchange = Annotated[str, Field(pattern=EXCHANGE_PATTERN)]


class TradingWindow(BaseModel):
    """Orders are allowed on `days` from `start` (inclusive) to `end` (exclusive), UTC."""

    model_config = ConfigDict(extra="forbid")

    days: list[Day] = Field(min_length=1, max_length=7)
    start: str = Field(pattern=HHMM, examples=["09:00"])
    end: str = Field(pattern=HHMM_OR_MIDNIGHT, examples=["17:00", "24:00"])

    @field_validator("days")
    @classmethod
    def _in_week_order(cls, days: list[Day]) -> list[Day]:
        return [d for d in DAYS if d in days]

    @model_validator(mode="after")
    def _end_after_start(self) -> TradingWindow:
        if self.end <= self.start:
            raise ValueError(
                f"end {self.end} must be after start {self.start} "
                "(split a window that crosses midnight in two; use 24:00 for end of day)"
            )
        return self


class PolicySet(BaseModel):
    """The rules checked before every order. All fields are required on PUT."""

    model_config = ConfigDict(extra="forbid")

    restricted_symbols: list[Symbol] = Field(
        max_length=1000,
        description="symbols (BTC/USDT) or assets (XMR: every pair with it) never to trade",
    )
    allowed_exchanges: list[Exchange] = Field(
        min_length=1, max_length=100, description="orders on other exchanges are refused"
    )
    trading_windows: list[TradingWindow] = Field(
        max_length=100, description="UTC windows when orders are allowed; empty = always"
    )
    max_orders_per_day: int | None = Field(
        ge=0, le=1_000_000, description="approved orders per UTC day; null = no limit"
    )

    @field_validator("restricted_symbols", "allowed_exchanges")
    @classmethod
    def _dedupe(cls, values: list[str]) -> list[str]:
        return list(dict.fromkeys(values))


class PolicyView(PolicySet):
    version: int
    updated_at: datetime
    updated_by: str


# --- trade report ----------------------------------------------------------------------------


class TradeLine(BaseModel):
    audit_id: int
    fill_id: str
    client_order_id: str
    filled_at: datetime
    exchange: str
    symbol: str
    side: OrderSide
    amount: Decimal
    price: Decimal
    notional: Decimal
    fee: Decimal
    fee_currency: str
    quote_currency: str
    closed_amount: Decimal = Field(description="how much of this fill closed earlier lots (FIFO)")
    realized_pnl: Decimal = Field(description="in the quote currency, net of quote-currency fees")


class SymbolTotals(BaseModel):
    exchange: str
    symbol: str
    quote_currency: str
    fills: int
    bought: Decimal
    sold: Decimal
    fees_in_quote: Decimal
    realized_pnl: Decimal


class OtherFees(BaseModel):
    """Fees paid in a currency other than the pair's quote: listed, not in realized PnL."""

    currency: str
    amount: Decimal


class TradeReport(BaseModel):
    from_: datetime = Field(serialization_alias="from")
    to: datetime = Field(description="exclusive")
    fills: list[TradeLine]
    totals: list[SymbolTotals]
    other_fees: list[OtherFees]
