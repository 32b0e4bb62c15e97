"""OHLCV bars as numpy columns, and the CCXT timeframes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from common.errors import Unprocessable

MINUTE_MS = 60_000
TIMEFRAME_MS: dict[str, int] = {
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": 60 * MINUTE_MS,
    "2h": 120 * MINUTE_MS,
    "4h": 240 * MINUTE_MS,
    "6h": 360 * MINUTE_MS,
    "8h": 480 * MINUTE_MS,
    "12h": 720 * MINUTE_MS,
    "1d": 1440 * MINUTE_MS,
    "1w": 7 * 1440 * MINUTE_MS,
}

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def timeframe_ms(timeframe: str, field: str = "timeframe") -> int:
    """Milliseconds in one bar of `timeframe`, or a 422 naming the field."""
    try:
        return TIMEFRAME_MS[timeframe]
    except KeyError:
        raise Unprocessable(
            f"{field}: {timeframe!r} is not a timeframe; use one of {', '.join(TIMEFRAME_MS)}",
            field=field,
        ) from None


@dataclass(frozen=True, slots=True)
class Bars:
    """Candles oldest first: `ts` is each candle's open time in epoch milliseconds."""

    ts: Ints
    open: Floats
    high: Floats
    low: Floats
    close: Floats
    volume: Floats

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_rows(cls, rows: list[list[float]] | list[tuple[float, ...]]) -> Bars:
        """From `[ts, open, high, low, close, volume]` rows (the CCXT shape)."""
        if not rows:
            empty = np.empty(0)
            return cls(np.empty(0, np.int64), empty, empty, empty, empty, empty)
        table = np.asarray(rows, dtype=np.float64)
        return cls(table[:, 0].astype(np.int64), *(table[:, i].copy() for i in range(1, 6)))

    def slice(self, start: int | None = None, stop: int | None = None) -> Bars:
        part = slice(start, stop)
        return Bars(
            self.ts[part],
            self.open[part],
            self.high[part],
            self.low[part],
            self.close[part],
            self.volume[part],
        )

    def tail(self, n: int) -> Bars:
        return self.slice(max(len(self) - n, 0))
