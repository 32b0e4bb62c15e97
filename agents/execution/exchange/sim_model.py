"""The sim's price model: one day of one symbol's path, generated from its start state.

Each minute's log-return is GARCH(1,1) (volatility clusters within hours) scaled by a
daily AR(1) log-volatility regime (calm and wild weeks), with a weak pull towards the
starting price so prices stay plausible for years. Within a minute the path runs in
straight lines open -> first extreme -> second extreme -> close. A day is drawn from its
own random stream (seed, symbol, day), so it can be regenerated alone from its start
state; `sim_prices` keeps those states and serves the path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MINUTE_MS = 60_000
HOUR_MINUTES = 60
DAY_MINUTES = 1440
DAY_MS = DAY_MINUTES * MINUTE_MS
MINUTES_PER_YEAR = 525_600
TIMEFRAMES = {
    "1m": 1,
    "3m": 3,
    "5m": 5,
    "15m": 15,
    "30m": 30,
    "1h": 60,
    "2h": 120,
    "4h": 240,
    "6h": 360,
    "8h": 480,
    "12h": 720,
    "1d": 1440,
    "1w": 10080,
}

Floats = NDArray[np.float64]
Ohlcv = tuple[float, float, float, float, float]


@dataclass(frozen=True)
class PathModel:
    """How one symbol's price moves: level, volatility and typical volume."""

    start_price: float
    annual_vol: float
    minute_volume: float  # average volume per minute, in base units
    alpha: float = 0.05  # GARCH reaction to the last shock
    beta: float = 0.94  # GARCH persistence
    regime_phi: float = 0.9  # day-to-day persistence of the volatility regime
    regime_sigma: float = 0.12
    reversion_days: float = 365.0  # time constant of the pull towards start_price
    wick: float = 0.5  # how far extremes reach beyond open/close, in minute sigmas

    @property
    def minute_sigma(self) -> float:
        return self.annual_vol / math.sqrt(MINUTES_PER_YEAR)


@dataclass
class DayBlock:
    """One day's 1440 minutes: candles, per-minute sigma and the path's vertices."""

    day: int
    open: Floats
    high: Floats
    low: Floats
    close: Floats
    volume: Floats
    sigma: Floats
    first_at: Floats  # fraction of the minute where the path reaches its first extreme
    second_at: Floats
    first_px: Floats
    second_px: Floats
    _agg: dict[int, tuple[Floats, ...]] = field(default_factory=dict, repr=False)

    def aggregated(self, minutes: int) -> tuple[Floats, ...]:
        """(open, high, low, close, volume) candles of `minutes` (which divides 1440)."""
        if minutes == 1:
            return self.open, self.high, self.low, self.close, self.volume
        agg = self._agg.get(minutes)
        if agg is None:
            n = DAY_MINUTES // minutes
            agg = (
                self.open[::minutes].copy(),
                self.high.reshape(n, minutes).max(axis=1),
                self.low.reshape(n, minutes).min(axis=1),
                self.close[minutes - 1 :: minutes].copy(),
                self.volume.reshape(n, minutes).sum(axis=1),
            )
            self._agg[minutes] = agg
        return agg

    def vertices(self, i: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Minute `i` of the day as a polyline: (times as fractions of a minute, prices)."""
        times = (0.0, float(self.first_at[i]), float(self.second_at[i]), 1.0)
        prices = (
            float(self.open[i]),
            float(self.first_px[i]),
            float(self.second_px[i]),
            float(self.close[i]),
        )
        return times, prices


def generate_day(
    seed: int, key: int, day: int, model: PathModel, state: tuple[float, float, float]
) -> tuple[DayBlock, tuple[float, float, float]]:
    """Generate one day from its start state (log price, GARCH variance, log-vol regime);
    return the block and the next day's start state."""
    logp0, h0, regime = state
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, key, day])))
    z = rng.standard_normal(DAY_MINUTES)
    noise = rng.standard_normal((3, DAY_MINUTES))
    u = rng.random((3, DAY_MINUTES))
    eta = float(rng.standard_normal())
    a, b = model.alpha, model.beta
    omega = 1.0 - a - b  # unit unconditional variance; the scale is minute_sigma
    # h[i] = omega + (a z[i-1]^2 + b) h[i-1], solved in closed form with cumulative sums
    logs = np.empty(DAY_MINUTES)
    logs[0] = 0.0
    np.cumsum(np.log(a * z[:-1] ** 2 + b), out=logs[1:])
    acc = np.empty(DAY_MINUTES)
    acc[0] = 0.0
    np.cumsum(np.exp(-logs[1:]), out=acc[1:])
    h = np.exp(logs) * (h0 + omega * acc)
    h_next = omega + (a * float(z[-1]) ** 2 + b) * float(h[-1])
    sigma = model.minute_sigma * math.exp(regime) * np.sqrt(h)
    pull = -(logp0 - math.log(model.start_price)) / (model.reversion_days * DAY_MINUTES)
    logc = logp0 + np.cumsum(pull - 0.5 * sigma * sigma + sigma * z)
    close = np.exp(logc)
    open_ = np.empty(DAY_MINUTES)
    open_[0] = math.exp(logp0)
    open_[1:] = close[:-1]
    high = np.maximum(open_, close) * np.exp(np.abs(noise[0]) * sigma * model.wick)
    low = np.minimum(open_, close) * np.exp(-np.abs(noise[1]) * sigma * model.wick)
    high_first = u[0] < 0.5
    ratio = sigma / model.minute_sigma
    volume = model.minute_volume * ratio * np.exp(0.4 * noise[2] - 0.08)
    block = DayBlock(
        day=day,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        sigma=sigma,
        first_at=0.05 + 0.4 * u[1],
        second_at=0.55 + 0.4 * u[2],
        first_px=np.where(high_first, high, low),
        second_px=np.where(high_first, low, high),
    )
    regime_next = model.regime_phi * regime + model.regime_sigma * eta
    return block, (float(logc[-1]), h_next, regime_next)
