"""Times and the timeframe grid: parsing ISO-8601 or epoch-ms input, aligning to bars.

Every timeframe's bars open on a UTC grid: minutes, hours and days on the unix
epoch grid, weeks on Mondays (as CCXT's exchanges and the sim do). One origin,
Monday 1970-01-05, gives all of them, since every shorter timeframe divides a day.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import BeforeValidator

from common.quant.bars import TIMEFRAME_MS, Ints

Timeframe = Literal["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "1w"]
assert set(get_args(Timeframe)) == set(TIMEFRAME_MS)

GRID_ORIGIN_MS = 345_600_000  # Monday 1970-01-05T00:00Z
MIN_MS = 100_000_000_000  # 1973-03-03: anything smaller is seconds, not milliseconds
# No request may cover more bars than this: two years of one-minute bars.
MAX_RANGE_BARS = 1_100_000


def step_ms(timeframe: str) -> int:
    return TIMEFRAME_MS[timeframe]


def floor_ms(ts: int, timeframe: str) -> int:
    """The open time of the bar that contains `ts`."""
    step = step_ms(timeframe)
    return (ts - GRID_ORIGIN_MS) // step * step + GRID_ORIGIN_MS


def ceil_ms(ts: int, timeframe: str) -> int:
    """The open time of the first bar at or after `ts`."""
    step = step_ms(timeframe)
    return -((GRID_ORIGIN_MS - ts) // step) * step + GRID_ORIGIN_MS


def off_grid(ts: Ints, timeframe: str) -> Ints:
    """Indexes of the times in `ts` that are not a bar open time of `timeframe`."""
    return np.flatnonzero((ts - GRID_ORIGIN_MS) % step_ms(timeframe))


def bar_count(since_ms: int, until_ms: int, timeframe: str) -> int:
    """How many bars open in [since_ms, until_ms)."""
    first, end = ceil_ms(since_ms, timeframe), ceil_ms(until_ms, timeframe)
    return max(0, (end - first) // step_ms(timeframe))


def iso(ts_ms: int) -> str:
    """`2024-01-01T00:00:00Z` (milliseconds shown only when there are some)."""
    moment = datetime.fromtimestamp(ts_ms / 1000, UTC)
    text = moment.isoformat(timespec="milliseconds" if ts_ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, UTC)


def parse_time(value: object) -> int:
    """Epoch milliseconds from epoch ms (int or digits) or ISO-8601 (no zone means UTC)."""
    if isinstance(value, bool):
        raise ValueError("give a time as ISO-8601 or epoch milliseconds")
    if isinstance(value, int | float):
        ms = int(value)
    elif isinstance(value, datetime):
        ms = to_ms(value if value.tzinfo else value.replace(tzinfo=UTC))
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        ms = int(value.strip())
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{value!r} is neither ISO-8601 (2024-01-01T00:00:00Z) nor epoch milliseconds"
            ) from None
        ms = to_ms(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    else:
        raise ValueError("give a time as ISO-8601 or epoch milliseconds")
    if 0 <= ms < MIN_MS:
        raise ValueError(f"{ms} looks like epoch seconds; give epoch milliseconds")
    if ms < 0:
        raise ValueError("times before 1970 are not market data")
    return ms


TimeMs = Annotated[int, BeforeValidator(parse_time)]
