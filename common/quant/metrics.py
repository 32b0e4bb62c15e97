"""Backtest statistics, defined once for single runs and sweeps.

Notation: E0 the starting capital, E_t the equity marked at the close of bar t
(t = 0..n-1), r_t = E_t / E_{t-1} - 1 with E_{-1} = E0 (0 when E_{t-1} <= 0), P the
periods per year = 365 x 86,400,000 / bar milliseconds (crypto trades every day).

- total_return = E_{n-1} / E0 - 1; cagr = (E_{n-1} / E0) ^ (1 / years) - 1 with
  years = n x bar ms / (365 x 86,400,000) (-1 when the equity is gone)
- sharpe = mean(r) / std(r, ddof=1) x sqrt(P), risk-free rate 0
- sortino = mean(r) / sqrt(mean(min(r, 0)^2)) x sqrt(P) (downside deviation over all bars)
- max_drawdown = max_t (1 - E_t / peak_t), peak_t = max(E0, E_0..E_t), a fraction
- max_drawdown_duration_bars: the longest run of consecutive bars below the running peak;
  _seconds/_days: from the first such bar's open time to the last one's close time (ts)
- calmar = cagr / max_drawdown
- win_rate = winning trades / trades; profit_factor = gross profit / gross loss;
  expectancy = sum of trade PnL / trades (quote currency). A trade still open at the end
  counts, marked at the last close.
- exposure = bars whose close found a position open / n
- buy_and_hold_return = close_{n-1} / close_0 - 1 (no fees)

A ratio whose denominator is zero (no trades, no losing trade, no drawdown, a flat
curve) is None, so the stats stay JSON-safe.
"""

from __future__ import annotations

import math

import numpy as np

from common.quant import kernel as k
from common.quant.bars import Floats, Ints

YEAR_MS = 365 * 86_400_000
Stats = dict[str, float | int | str | None]


def periods_per_year(bar_ms: int) -> float:
    return YEAR_MS / bar_ms


def infer_bar_ms(ts: Ints) -> int:
    """The bar length: the most common step between timestamps (gaps do not skew it)."""
    if len(ts) < 2:
        return 86_400_000
    steps, counts = np.unique(np.diff(ts), return_counts=True)
    step = int(steps[np.argmax(counts)])
    if step <= 0:
        raise ValueError("bar timestamps must increase")
    return step


def _ratio(num: float, den: float) -> float | None:
    if den == 0 or not math.isfinite(den) or not math.isfinite(num):
        return None
    return num / den


def summarize(
    acc: Floats,
    summary: Floats,
    final_equity: float,
    initial: float,
    ts: Ints,
    bar_ms: int,
    first_close: float,
    last_close: float,
) -> Stats:
    """The stats dict from the kernel's accumulators and equity summary."""
    n = len(ts)
    scale = math.sqrt(periods_per_year(bar_ms))
    mean, std, downside, max_dd = (float(x) for x in summary[:4])
    dd_bars, dd_first, dd_last = (int(x) for x in summary[4:7])
    years = n * bar_ms / YEAR_MS
    growth = final_equity / initial
    cagr = (growth ** (1.0 / years) - 1.0 if growth > 0 else -1.0) if years > 0 else None
    trades = int(acc[k.A_TRADES])
    gross_profit, gross_loss = float(acc[k.A_GROSS_PROFIT]), float(acc[k.A_GROSS_LOSS])
    dd_ms = int(ts[dd_last] + bar_ms - ts[dd_first]) if dd_bars else 0
    sharpe = _ratio(mean, std)
    sortino = _ratio(mean, downside)
    return {
        "total_return": growth - 1.0,
        "cagr": cagr,
        "sharpe": sharpe * scale if sharpe is not None else None,
        "sortino": sortino * scale if sortino is not None else None,
        "calmar": _ratio(cagr, max_dd) if cagr is not None else None,
        "max_drawdown": max_dd,
        "max_drawdown_duration_bars": dd_bars,
        "max_drawdown_duration_seconds": dd_ms / 1000,
        "max_drawdown_duration_days": dd_ms / 86_400_000,
        "win_rate": _ratio(float(acc[k.A_WINS]), trades),
        "profit_factor": _ratio(gross_profit, gross_loss),
        "expectancy": _ratio(gross_profit - gross_loss, trades),
        "exposure": float(acc[k.A_EXPOSED]) / n if n else 0.0,
        "trade_count": trades,
        "buy_and_hold_return": last_close / first_close - 1.0,
        "final_equity": final_equity,
        "fees_paid": float(acc[k.A_FEES]),
        "bars": n,
        "bar_ms": bar_ms,
        "periods_per_year": periods_per_year(bar_ms),
    }


def equity_stats(equity: Floats, initial: float, ts: Ints, bar_ms: int) -> Stats:
    """The equity-curve part of the stats for any curve (handy on its own and in tests)."""
    summary = np.empty(k.N_SUMMARY)
    k.equity_summary(np.ascontiguousarray(equity, dtype=np.float64), float(initial), summary)
    stats = summarize(np.zeros(k.N_ACC), summary, float(equity[-1]), initial, ts, bar_ms, 1.0, 1.0)
    keys = (
        "total_return",
        "cagr",
        "sharpe",
        "sortino",
        "calmar",
        "max_drawdown",
        "max_drawdown_duration_bars",
        "max_drawdown_duration_seconds",
        "max_drawdown_duration_days",
    )
    return {key: stats[key] for key in keys}
