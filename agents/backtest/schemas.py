"""Request and response models of the backtest agent's market-data routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationInfo, field_validator

from agents.backtest.timegrid import MAX_RANGE_BARS, Timeframe, TimeMs, bar_count, iso
from common.contracts import EXCHANGE_PATTERN

SYMBOL_INPUT = r"^[A-Za-z0-9]{1,20}[/-][A-Za-z0-9]{1,20}$"
JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]


def normal_symbol(symbol: str) -> str:
    """CCXT's spelling: `btc-usdt` and `BTC/USDT` are both `BTC/USDT`."""
    return symbol.replace("-", "/").upper()


Symbol = Annotated[
    str,
    Field(pattern=SYMBOL_INPUT, description="BASE/QUOTE (or BASE-QUOTE), e.g. BTC/USDT"),
    AfterValidator(normal_symbol),
]
Exchange = Annotated[str, Field(pattern=EXCHANGE_PATTERN, description="'sim' or a CCXT id")]


class FetchRequest(BaseModel):
    """Fetch one series' candles in [since, until) from an exchange, through execution."""

    exchange: Exchange = "sim"
    symbol: Symbol
    timeframe: Timeframe
    since: TimeMs = Field(description="ISO-8601 or epoch ms; the first candle opens at or after")
    until: TimeMs = Field(description="ISO-8601 or epoch ms; candles opening before it")

    @field_validator("until")
    @classmethod
    def _after_since(cls, until: int, info: ValidationInfo) -> int:
        return check_range(until, info)


def check_range(until: int, info: ValidationInfo) -> int:
    """`until` after `since`, and not more than MAX_RANGE_BARS bars between them."""
    since, timeframe = info.data.get("since"), info.data.get("timeframe")
    if since is None or timeframe is None:
        return until  # those fields have their own errors
    if until <= since:
        raise ValueError(f"must be after since ({iso(since)}), got {iso(until)}")
    count = bar_count(since, until, timeframe)
    if count > MAX_RANGE_BARS:
        raise ValueError(
            f"the range holds {count:,} {timeframe} candles; at most {MAX_RANGE_BARS:,} "
            "(two years of 1m) per request: split it, or use a longer timeframe"
        )
    return until


class JobView(BaseModel):
    """A fetch job's progress. `total` is the number of candles the range should hold;
    `done` counts those already covered (stored before, fetched, or found missing);
    `gaps` are [first, last] open times of candles the exchange did not return."""

    id: str
    status: JobStatus
    exchange: str
    symbol: str
    timeframe: str
    since: datetime
    until: datetime
    total: int
    done: int
    fetched: int
    rows_written: int
    gaps: list[tuple[str, str]]
    cursor: str | None
    attempts: int
    error: str | None
    created_at: datetime
    updated_at: datetime


class ImportResult(BaseModel):
    exchange: str
    symbol: str
    timeframe: str
    rows: int = Field(description="candles in the file")
    rows_written: int = Field(description="candles inserted or changed (identical ones are not)")
    first: datetime
    last: datetime


class StoredSeries(BaseModel):
    symbol: str
    timeframe: str
    first: datetime
    last: datetime
    count: int


class Coverage(BaseModel):
    exchange: str
    symbol: str
    timeframe: str
    first: datetime
    last: datetime
    count: int
    expected: int = Field(description="candles from first to last on the timeframe's grid")
    gaps: int = Field(description="holes between stored candles")
