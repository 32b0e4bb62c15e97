"""Bars for engine tests and benchmarks: the peers' shipped sample data and a seeded,
sim-like random walk."""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.quant.bars import MINUTE_MS, Bars


def garch_bars(n: int, seed: int = 7, start: float = 30_000.0, step_ms: int = MINUTE_MS) -> Bars:
    """A GARCH(1,1)-ish walk of one-minute candles, prices in cents: volatility clusters,
    the open gaps a little from the previous close, wicks beyond both."""
    rng = np.random.default_rng(seed)
    shocks = rng.standard_normal(n)
    var = np.empty(n)
    returns = np.empty(n)
    omega, alpha, beta = 2e-8, 0.08, 0.9
    v = omega / (1 - alpha - beta)
    r = 0.0
    for t in range(n):
        v = omega + alpha * r * r + beta * v
        r = np.sqrt(v) * shocks[t]
        var[t], returns[t] = v, r
    close = start * np.exp(np.cumsum(returns))
    gap = rng.standard_normal(n) * np.sqrt(var) * 0.1
    open_ = np.empty(n)
    open_[0] = start
    open_[1:] = close[:-1] * np.exp(gap[1:])
    wick = np.abs(rng.standard_normal((2, n))) * np.sqrt(var) * 0.5
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    cents = [np.round(x, 2) for x in (open_, high, low, close)]
    volume = np.round(rng.lognormal(0.0, 1.0, n), 6)
    ts = 1_704_067_200_000 + np.arange(n, dtype=np.int64) * step_ms
    return Bars(ts, *cents, volume)


def frame_to_bars(frame: pd.DataFrame) -> Bars:
    """backtesting.py's OHLCV frames (datetime index) as `Bars`."""
    index = pd.DatetimeIndex(frame.index)
    ts = (index.as_unit("ms").asi8).astype(np.int64)
    cols = (frame[c].to_numpy(dtype=np.float64) for c in ("Open", "High", "Low", "Close"))
    volume = frame["Volume"].to_numpy(dtype=np.float64) if "Volume" in frame else None
    o, h, lo, c = cols
    return Bars(ts, o, h, lo, c, volume if volume is not None else np.zeros(len(frame)))


def bars_to_frame(bars: Bars) -> pd.DataFrame:
    index = pd.to_datetime(bars.ts, unit="ms")
    return pd.DataFrame(
        {
            "Open": bars.open,
            "High": bars.high,
            "Low": bars.low,
            "Close": bars.close,
            "Volume": bars.volume,
        },
        index=index,
    )
