"""Candles of a longer timeframe built from stored shorter ones, with numpy.

Buckets sit on the UTC grid of `timegrid` (weeks start on Monday). A bucket the
stored series does not cover end to end (the series starts after its open, or ends
before its close, typically the still-forming last one) is excluded, and its open
time reported, so a client never mistakes a partial candle for a whole one.
"""

from __future__ import annotations

import numpy as np

from agents.backtest.repository import pick
from agents.backtest.timegrid import GRID_ORIGIN_MS
from common.quant.bars import Bars


def resample(
    bars: Bars, source_step: int, target_step: int, series: tuple[int, int]
) -> tuple[Bars, list[int]]:
    """(complete buckets, open times of excluded partial ones) from `bars` of
    `source_step`, for a stored series spanning `series` = (first, last) open times."""
    if len(bars) == 0:
        return bars, []
    buckets = (bars.ts - GRID_ORIGIN_MS) // target_step * target_step + GRID_ORIGIN_MS
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    ends = np.r_[starts[1:], len(bars)] - 1
    opens = buckets[starts]
    out = Bars(
        opens,
        bars.open[starts],
        np.maximum.reduceat(bars.high, starts),
        np.minimum.reduceat(bars.low, starts),
        bars.close[ends],
        np.add.reduceat(bars.volume, starts),
    )
    first, last = series
    complete = (opens >= first) & (opens + target_step <= last + source_step)
    return pick(out, complete), [int(t) for t in opens[~complete]]
