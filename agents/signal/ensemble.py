"""From strategy events to signals: each strategy's verdict on the last closed bar, the
ensemble's score, and a confidence calibrated on the same bars.

The ensemble score at bar t is the mean of the strategies' strengths at t (each in
[-1, 1], positive is bullish). Its action is buy at or above `threshold`, sell at or
below `-threshold`, hold in between.

Confidence is not a formula of the score: it is how often, on these bars, a past
score of the same size (bucket of |score|) was followed by a move the way it leaned
over the next `horizon` bars. Only past outcomes count: a bar i is a sample when
its outcome close[i + horizon] is known at the last bar, so nothing the current
signal could not have known goes into its confidence. The hit rate is smoothed
towards one half (Laplace: (hits + 1) / (samples + 2)), so a bucket with few
samples says little, and stays inside (0, 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from common.quant.bars import Floats
from common.quant.strategies import Params, Signals

BUCKETS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True, slots=True)
class Run:
    """One strategy's output on the bars."""

    name: str
    params: Params
    signals: Signals
    lookback: int


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # buy | sell | hold
    strength: float
    position: int  # 1 long, -1 short, 0 flat: what the strategy would hold now
    events: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Calibration:
    confidence: float
    direction: int  # the way the score leans: 1 up, -1 down, 0 no opinion
    horizon: int
    bucket: tuple[float, float]
    samples: int
    hits: int

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.samples if self.samples else None


def _last_true(flags: np.ndarray) -> int:
    if len(flags) == 0:
        return -1
    from_end = int(np.argmax(flags[::-1]))  # the first True from the end (or 0 if none)
    return len(flags) - 1 - from_end if flags[-1 - from_end] else -1


def position_now(signals: Signals) -> int:
    """The position the events leave the strategy in at the last bar."""
    long_open = _last_true(signals.entries) > _last_true(signals.exits)
    short_open = _last_true(signals.short_entries) > _last_true(signals.short_exits)
    if long_open and short_open:  # the later entry wins
        return 1 if _last_true(signals.entries) > _last_true(signals.short_entries) else -1
    return 1 if long_open else -1 if short_open else 0


def verdict(signals: Signals) -> Verdict:
    """Action from the events on the last bar: entering long or leaving a short is a buy,
    leaving long or entering a short a sell; both at once, or none, is a hold."""
    if len(signals.strength) == 0:
        return Verdict("hold", 0.0, 0)
    names = ("entries", "exits", "short_entries", "short_exits")
    events = [name for name in names if bool(getattr(signals, name)[-1])]
    buy = "entries" in events or "short_exits" in events
    sell = "exits" in events or "short_entries" in events
    action = "buy" if buy and not sell else "sell" if sell and not buy else "hold"
    strength = float(signals.strength[-1])
    return Verdict(action, strength, position_now(signals), events)


def score(runs: Sequence[Run]) -> Floats:
    """The ensemble score per bar: the mean of the strategies' strengths."""
    stacked = np.vstack([r.signals.strength for r in runs])
    stacked[np.isnan(stacked)] = 0.0
    return np.clip(stacked.mean(axis=0), -1.0, 1.0)


def action_of(value: float, threshold: float) -> str:
    return "buy" if value >= threshold else "sell" if value <= -threshold else "hold"


def bucket_of(magnitude: float | Floats) -> np.ndarray:
    edges = np.asarray(BUCKETS[1:-1])
    return np.searchsorted(edges, magnitude, side="right")


def calibrate(
    scores: Floats, close: Floats, horizon: int, *, first: int = 0, not_before: int = 0
) -> Calibration:
    """The confidence of the last bar's score; see the module docstring.

    `first` is the first bar every strategy has warmed up on; samples before
    `not_before` are left out too (an ML model's in-sample bars, which would
    flatter it).
    """
    n = len(scores)
    now = float(scores[-1]) if n else 0.0
    direction = int(np.sign(now))
    k = int(bucket_of(abs(now)))
    bucket = (BUCKETS[k], BUCKETS[k + 1])
    start, stop = max(first, not_before, 0), n - horizon  # outcome known: i + horizon <= n - 1
    if stop <= start or direction == 0:
        return Calibration(0.5, direction, horizon, bucket, 0, 0)
    past = scores[start:stop]
    leaning = np.sign(past)
    moved = np.sign(close[start + horizon : stop + horizon] - close[start:stop])
    sample = (leaning != 0) & (bucket_of(np.abs(past)) == k)
    samples = int(sample.sum())
    hits = int((moved[sample] == leaning[sample]).sum())
    confidence = (hits + 1) / (samples + 2)
    return Calibration(confidence, direction, horizon, bucket, samples, hits)
