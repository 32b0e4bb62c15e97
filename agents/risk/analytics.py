"""Exposure, drawdown and Value at Risk from execution's portfolio snapshots. Pure functions.

VaR and CVaR are computed from the simple returns between consecutive equity
snapshots and scaled from the snapshot interval (the median gap) to the horizon:
- historical: the empirical (1 - confidence) quantile of returns (numpy's linear
  interpolation) and the mean of the returns at or below it, times sqrt(horizon/interval);
- parametric: normal returns, VaR = z sigma sqrt(k) - mu k,
  CVaR = sigma sqrt(k) pdf(z) / (1 - confidence) - mu k, with k = horizon/interval;
- montecarlo: normal per-step returns compounded over min(round(k), MAX_STEPS) steps
  (mean and deviation rescaled to the step), the same quantile and tail mean.
Losses are positive numbers; a negative VaR means even the bad case is a gain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from agents.risk.schemas import ExposureLine, VarMethod
from common.errors import Conflict, Unprocessable
from common.money import quantize

MIN_RETURNS = 10
MAX_STEPS = 100
MAX_PATH_VALUES = 10_000_000
SECONDS_PER_DAY = 86_400.0

Floats = npt.NDArray[np.float64]


# --- exposure ------------------------------------------------------------------------------
def _pct(value: Decimal, equity: Decimal) -> Decimal | None:
    return quantize(value / equity, 6) if equity > 0 else None


def exposure_lines(positions: Sequence[dict[str, Any]], equity: Decimal) -> list[ExposureLine]:
    """One line per exchange and symbol with its signed notional at mark, largest first."""
    merged: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
    for position in positions:
        key = (str(position["exchange"]), str(position["symbol"]))
        amount, _ = merged.get(key, (Decimal(0), Decimal(0)))
        merged[key] = (
            amount + Decimal(str(position["amount"])),
            Decimal(str(position["mark_price"])),
        )
    lines = [
        ExposureLine(
            exchange=exchange,
            symbol=symbol,
            amount=amount,
            mark_price=mark,
            notional=quantize(amount * mark),
            pct_of_equity=_pct(amount * mark, equity),
        )
        for (exchange, symbol), (amount, mark) in merged.items()
    ]
    return sorted(lines, key=lambda line: abs(line.notional), reverse=True)


def gross_and_net(positions: Sequence[dict[str, Any]]) -> tuple[Decimal, Decimal]:
    notionals = [Decimal(str(p["amount"])) * Decimal(str(p["mark_price"])) for p in positions]
    return sum((abs(n) for n in notionals), Decimal(0)), sum(notionals, Decimal(0))


# --- drawdown ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DrawdownStats:
    max_drawdown: float
    peak_at: datetime | None
    trough_at: datetime | None
    duration_s: float
    recovered: bool


def drawdown_stats(times: Sequence[datetime], equity: Sequence[float]) -> DrawdownStats:
    """The deepest fall from a running peak, and how long from that peak to regaining it."""
    peak_i, best = 0, (0.0, 0, 0)  # (drawdown, peak index, trough index)
    for i, value in enumerate(equity):
        if value > equity[peak_i]:
            peak_i = i
        peak = equity[peak_i]
        fall = (peak - value) / peak if peak > 0 else 0.0
        if fall > best[0]:
            best = (fall, peak_i, i)
    fall, peak_i, trough_i = best
    if fall == 0.0:
        return DrawdownStats(0.0, None, None, 0.0, True)
    recovery = next(
        (i for i in range(trough_i + 1, len(equity)) if equity[i] >= equity[peak_i]), None
    )
    end = times[recovery] if recovery is not None else times[-1]
    return DrawdownStats(
        max_drawdown=fall,
        peak_at=times[peak_i],
        trough_at=times[trough_i],
        duration_s=(end - times[peak_i]).total_seconds(),
        recovered=recovery is not None,
    )


# --- value at risk -------------------------------------------------------------------------
@dataclass(frozen=True)
class VarResult:
    var: float
    cvar: float
    returns: int
    interval_days: float


def returns_of(times: Sequence[datetime], equity: Sequence[float]) -> tuple[Floats, float]:
    """Simple returns between snapshots (skipping zero equity) and the median gap in days."""
    values = np.asarray(equity, dtype=np.float64)
    previous, current = values[:-1], values[1:]
    usable = previous > 0
    returns = current[usable] / previous[usable] - 1.0
    gaps = np.diff(np.asarray([t.timestamp() for t in times], dtype=np.float64))
    interval = float(np.median(gaps)) / SECONDS_PER_DAY if len(gaps) else 0.0
    return returns, interval


def _tail(returns: Floats, confidence: float) -> tuple[float, float]:
    cutoff = float(np.quantile(returns, 1.0 - confidence))
    return -cutoff, -float(returns[returns <= cutoff].mean())


def _historical(returns: Floats, confidence: float, k: float) -> tuple[float, float]:
    var, cvar = _tail(returns, confidence)
    scale = math.sqrt(k)
    return var * scale, cvar * scale


def _parametric(returns: Floats, confidence: float, k: float) -> tuple[float, float]:
    mu, sigma = float(returns.mean()), float(returns.std(ddof=1))
    normal = NormalDist()
    z = normal.inv_cdf(confidence)
    spread = sigma * math.sqrt(k)
    return z * spread - mu * k, spread * normal.pdf(z) / (1.0 - confidence) - mu * k


def _montecarlo(
    returns: Floats, confidence: float, k: float, simulations: int, seed: int | None
) -> tuple[float, float]:
    steps = min(max(1, round(k)), MAX_STEPS)
    if simulations * steps > MAX_PATH_VALUES:
        raise Unprocessable(
            f"montecarlo: simulations {simulations} x steps {steps} exceeds {MAX_PATH_VALUES}; "
            "ask for fewer simulations"
        )
    mu = float(returns.mean()) * k / steps
    sigma = float(returns.std(ddof=1)) * math.sqrt(k / steps)
    paths = np.random.default_rng(seed).normal(mu, sigma, size=(simulations, steps))
    outcomes: Floats = np.prod(1.0 + paths, axis=1) - 1.0
    return _tail(outcomes, confidence)


def value_at_risk(
    times: Sequence[datetime],
    equity: Sequence[float],
    *,
    method: VarMethod,
    confidence: float,
    horizon_days: float,
    simulations: int = 10_000,
    seed: int | None = None,
) -> VarResult:
    """VaR and CVaR as fractions of equity over `horizon_days`; 409 with too little history."""
    returns, interval = returns_of(times, equity)
    if len(returns) < MIN_RETURNS:
        raise Conflict(
            f"VaR needs at least {MIN_RETURNS} returns ({MIN_RETURNS + 1} equity snapshots with "
            f"equity > 0) in the window; found {len(returns)} from {len(equity)} snapshot(s). "
            "Execution posts snapshots to POST /portfolio/snapshots"
        )
    if interval <= 0:
        raise Conflict("VaR needs snapshots taken at different times; these share timestamps")
    k = horizon_days / interval
    if method is VarMethod.historical:
        var, cvar = _historical(returns, confidence, k)
    elif method is VarMethod.parametric:
        var, cvar = _parametric(returns, confidence, k)
    else:
        var, cvar = _montecarlo(returns, confidence, k, simulations, seed)
    return VarResult(var=var, cvar=cvar, returns=len(returns), interval_days=interval)
