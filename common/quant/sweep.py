"""Signal matrices for parameter sweeps: one row of events per parameter combination.

Moving-average crosses compute each distinct average once (a 10 x 10 grid of fast/slow
periods needs 20 averages, not 200) and skip the `strength` series a backtest does not
use; the events are the very arrays `Strategy.generate` gives (same TA-Lib call, same
crossing rule). Other strategies call `generate` once per combination.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import talib

from common.quant.bars import Bars, Floats
from common.quant.strategies import Context, Params, Strategy

Matrices = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_MOVING_AVERAGES: dict[str, Callable[..., Any]] = {"sma_cross": talib.SMA, "ema_cross": talib.EMA}


def _cross_into(out: np.ndarray, a: Floats, b: Floats, above: bool, scratch: np.ndarray) -> None:
    """out[t] = a crossed b at t (as `strategies.crossed_above/below`), without temporaries."""
    out[0] = False
    if above:
        np.greater(a[1:], b[1:], out=out[1:])
        np.less_equal(a[:-1], b[:-1], out=scratch)
    else:
        np.less(a[1:], b[1:], out=out[1:])
        np.greater_equal(a[:-1], b[:-1], out=scratch)
    out[1:] &= scratch


def _ma_cross(bars: Bars, params: Sequence[Params], average: Callable[..., Any]) -> Matrices:
    close = np.ascontiguousarray(bars.close, dtype=np.float64)
    cache: dict[int, Floats] = {}

    def ma(period: float) -> Floats:
        key = int(period)
        if key not in cache:
            cache[key] = np.asarray(average(close, timeperiod=key))
        return cache[key]

    n = len(bars)
    entries = np.empty((len(params), n), dtype=np.bool_)
    exits = np.empty((len(params), n), dtype=np.bool_)
    scratch = np.empty(max(n - 1, 0), dtype=np.bool_)
    with np.errstate(invalid="ignore"):
        for row, p in enumerate(params):
            fast, slow = ma(p["fast"]), ma(p["slow"])
            _cross_into(entries[row], fast, slow, True, scratch)
            _cross_into(exits[row], fast, slow, False, scratch)
    # Symmetric: the short side reads the same crossings the other way round.
    return entries, exits, exits, entries


def _generic(
    bars: Bars, strategy: Strategy, params: Sequence[Params], context: Context | None
) -> Matrices:
    n = len(bars)
    out = tuple(np.empty((len(params), n), dtype=np.bool_) for _ in range(4))
    for row, p in enumerate(params):
        signals = strategy.generate(bars, p, context)
        for matrix, events in zip(
            out,
            (signals.entries, signals.exits, signals.short_entries, signals.short_exits),
            strict=True,
        ):
            matrix[row] = events
    return out[0], out[1], out[2], out[3]


def signal_matrices(
    bars: Bars, strategy: Strategy, params: Sequence[Params], context: Context | None = None
) -> Matrices:
    """(entries, exits, short_entries, short_exits), each (len(params), len(bars)) bool."""
    average = _MOVING_AVERAGES.get(strategy.name)
    if average is not None:
        return _ma_cross(bars, params, average)
    return _generic(bars, strategy, params, context)
