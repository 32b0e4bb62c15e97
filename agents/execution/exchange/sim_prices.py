"""The simulated exchange's market: a seeded price path per symbol, served on demand.

The path is a pure function of (seed, symbol, time) on a one-minute grid anchored at
2024-01-01T00:00Z (a Monday, so weekly candles align too); `sim_model` says how it
moves. Because each minute runs in straight lines through its extremes, a one-minute
candle's high and low are exactly what the path touched, tickers move every
millisecond, and "did the price cross X between t0 and t1" has one exact answer.

The day-start states and hourly candles are kept for every day since the epoch (~2 KB a
day, generated once per process); whole minute blocks are kept in a small LRU cache.
"""

from __future__ import annotations

import itertools
import math
import threading
import zlib
from collections import OrderedDict
from functools import lru_cache

import numpy as np

from agents.execution.exchange.sim_model import (
    DAY_MINUTES,
    DAY_MS,
    EPOCH_MS,
    HOUR_MINUTES,
    MINUTE_MS,
    TIMEFRAMES,
    DayBlock,
    Floats,
    Ohlcv,
    PathModel,
    generate_day,
)

__all__ = ["EPOCH_MS", "MINUTE_MS", "TIMEFRAMES", "PathModel", "SymbolPath", "shared_path"]


class _Hourly:
    """Growing arrays of hourly candles since the epoch (5 x hours)."""

    def __init__(self) -> None:
        self.data = np.empty((5, 24 * 64))
        self.n = 0

    def append(self, block: DayBlock) -> None:
        if self.n + 24 > self.data.shape[1]:
            grown = np.empty((5, self.data.shape[1] * 2))
            grown[:, : self.n] = self.data[:, : self.n]
            self.data = grown
        self.data[:, self.n : self.n + 24] = np.vstack(block.aggregated(HOUR_MINUTES))
        self.n += 24

    def view(self) -> Floats:
        return self.data[:, : self.n]


class SymbolPath:
    """The price path of one symbol for one seed. Thread-safe."""

    def __init__(self, seed: int, symbol: str, model: PathModel, cache_days: int = 48) -> None:
        self.seed = seed
        self.symbol = symbol
        self.model = model
        self._key = zlib.crc32(symbol.encode())
        self._states: list[tuple[float, float, float]] = [(math.log(model.start_price), 1.0, 0.0)]
        self._hourly = _Hourly()
        self._blocks: OrderedDict[int, DayBlock] = OrderedDict()
        self._cache_days = cache_days
        self._lock = threading.RLock()

    # --- generation and caches -----------------------------------------------------------
    def ensure(self, t_ms: int) -> None:
        """Generate every day up to the one holding `t_ms` (once; later calls are free)."""
        day = max(0, (t_ms - EPOCH_MS) // DAY_MS)
        if day < len(self._states) - 1:
            return
        with self._lock:
            while len(self._states) - 1 <= day:
                d = len(self._states) - 1
                block, nxt = generate_day(self.seed, self._key, d, self.model, self._states[d])
                self._hourly.append(block)
                self._states.append(nxt)
                self._remember(block)

    def block(self, day: int) -> DayBlock:
        with self._lock:
            cached = self._blocks.get(day)
            if cached is not None:
                self._blocks.move_to_end(day)
                return cached
            self.ensure(EPOCH_MS + day * DAY_MS)
            block, _ = generate_day(self.seed, self._key, day, self.model, self._states[day])
            self._remember(block)
            return block

    def _remember(self, block: DayBlock) -> None:
        self._blocks[block.day] = block
        self._blocks.move_to_end(block.day)
        while len(self._blocks) > self._cache_days:
            self._blocks.popitem(last=False)

    def _minute(self, m: int) -> tuple[DayBlock, int]:
        return self.block(m // DAY_MINUTES), m % DAY_MINUTES

    # --- point queries ---------------------------------------------------------------------
    def price_at(self, t_ms: int) -> float:
        m, frac = _split(t_ms)
        block, i = self._minute(m)
        times, prices = block.vertices(i)
        return _interp(times, prices, frac)

    def sigma_ratio_at(self, t_ms: int) -> float:
        """Volatility now relative to the symbol's normal level (1.0 = normal)."""
        block, i = self._minute(_split(t_ms)[0])
        return float(block.sigma[i]) / self.model.minute_sigma

    # --- candles ---------------------------------------------------------------------------
    def candles(self, minutes: int, first_ms: int, count: int) -> list[tuple[float, ...]]:
        """`count` closed candles of `minutes`, the first opening at `first_ms` (aligned)."""
        if count <= 0:
            return []
        self.ensure(first_ms + count * minutes * MINUTE_MS - 1)
        if minutes >= HOUR_MINUTES:
            arrays = self._hourly_candles(minutes // HOUR_MINUTES, first_ms, count)
        else:
            arrays = self._minute_candles(minutes, first_ms, count)
        step = minutes * MINUTE_MS
        ts = (first_ms + step * np.arange(count, dtype=np.int64)).tolist()
        return list(zip(ts, *(a.tolist() for a in arrays), strict=True))

    def _hourly_candles(self, group: int, first_ms: int, count: int) -> tuple[Floats, ...]:
        h0 = (first_ms - EPOCH_MS) // (HOUR_MINUTES * MINUTE_MS)
        o, h, lo, c, v = (row[h0 : h0 + count * group] for row in self._hourly.view())
        if group == 1:
            return o, h, lo, c, v
        return (
            o[::group],
            h.reshape(count, group).max(axis=1),
            lo.reshape(count, group).min(axis=1),
            c[group - 1 :: group],
            v.reshape(count, group).sum(axis=1),
        )

    def _minute_candles(self, minutes: int, first_ms: int, count: int) -> tuple[Floats, ...]:
        per_day = DAY_MINUTES // minutes
        start = (first_ms - EPOCH_MS) // (minutes * MINUTE_MS)
        parts: list[tuple[Floats, ...]] = []
        index = start
        while index < start + count:
            day, offset = divmod(index, per_day)
            take = min(per_day - offset, start + count - index)
            agg = self.block(day).aggregated(minutes)
            parts.append(tuple(a[offset : offset + take] for a in agg))
            index += take
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(5))

    def window(self, start_ms: int, end_ms: int) -> Ohlcv:
        """OHLCV of the path from `start_ms` (minute-aligned) to `end_ms` (any time):
        the still-forming candle. Never looks past `end_ms`."""
        self.ensure(end_ms)
        first = self.price_at(start_ms)
        highs, lows, volume = [first], [first], 0.0
        m_start, _ = _split(start_ms)
        m_end, frac = _split(end_ms)
        full = m_end - m_start
        if full > 0:
            hours_from = -(-m_start // HOUR_MINUTES)
            hours_to = m_end // HOUR_MINUTES
            if hours_to > hours_from:  # whole hours from the hourly store
                _, h, lo, _, v = self._hourly.view()[:, hours_from:hours_to]
                highs.append(float(h.max()))
                lows.append(float(lo.min()))
                volume += float(v.sum())
                spans = [(m_start, hours_from * 60), (hours_to * 60, m_end)]
            else:
                spans = [(m_start, m_end)]
            for a, b in spans:
                for day, i, j in _day_slices(a, b):
                    block = self.block(day)
                    highs.append(float(block.high[i:j].max()))
                    lows.append(float(block.low[i:j].min()))
                    volume += float(block.volume[i:j].sum())
        if frac > 0:
            block, i = self._minute(m_end)
            times, prices = block.vertices(i)
            inside = [p for t, p in zip(times, prices, strict=True) if t <= frac]
            inside.append(_interp(times, prices, frac))
            highs.append(max(inside))
            lows.append(min(inside))
            volume += float(block.volume[i]) * frac
        return first, max(highs), min(lows), self.price_at(end_ms), volume

    # --- crossings -------------------------------------------------------------------------
    def first_touch(self, t0: int, t1: int, level: float, below: bool) -> int | None:
        """The first time in [t0, t1] (ms) when the path is at or below `level` (or at or
        above it when `below` is False); None if it never is."""
        if t1 < t0:
            return None
        self.ensure(t1)
        m0, m1 = _split(t0)[0], _split(t1)[0]
        hit = self._touch_in_minute(m0, t0, min(t1, _minute_start(m0 + 1)), level, below)
        if hit is not None or m1 == m0:
            return hit
        m = self._first_full_minute(m0 + 1, m1, level, below)
        if m is not None:
            return self._touch_in_minute(m, _minute_start(m), _minute_start(m + 1), level, below)
        return self._touch_in_minute(m1, _minute_start(m1), t1, level, below)

    def _touch_in_minute(
        self, m: int, a_ms: int, b_ms: int, level: float, below: bool
    ) -> int | None:
        block, i = self._minute(m)
        times, prices = block.vertices(i)
        base = _minute_start(m)
        fa, fb = (a_ms - base) / MINUTE_MS, (b_ms - base) / MINUTE_MS
        pts = [(fa, _interp(times, prices, fa))]
        pts += [(t, p) for t, p in zip(times, prices, strict=True) if fa < t < fb]
        pts.append((fb, _interp(times, prices, fb)))
        if _beyond(pts[0][1], level, below):
            return a_ms
        for (x0, p0), (x1, p1) in itertools.pairwise(pts):
            if _beyond(p1, level, below):
                x = x0 + (level - p0) / (p1 - p0) * (x1 - x0)
                return min(b_ms, max(a_ms, base + math.ceil(x * MINUTE_MS)))
        return None

    def _first_full_minute(self, m_from: int, m_to: int, level: float, below: bool) -> int | None:
        """The first whole minute in [m_from, m_to) whose range reaches `level`."""
        hours_from = -(-m_from // HOUR_MINUTES)
        hours_to = m_to // HOUR_MINUTES
        if hours_to <= hours_from:
            return self._scan_minutes(m_from, m_to, level, below)
        hit = self._scan_minutes(m_from, hours_from * HOUR_MINUTES, level, below)
        if hit is not None:
            return hit
        _, h, lo, _, _ = self._hourly.view()[:, hours_from:hours_to]
        mask = (lo <= level) if below else (h >= level)
        found = np.flatnonzero(mask)
        if found.size:
            hour = hours_from + int(found[0])
            return self._scan_minutes(hour * 60, hour * 60 + 60, level, below)
        return self._scan_minutes(hours_to * HOUR_MINUTES, m_to, level, below)

    def _scan_minutes(self, m_from: int, m_to: int, level: float, below: bool) -> int | None:
        for day, i, j in _day_slices(m_from, m_to):
            block = self.block(day)
            mask = (block.low[i:j] <= level) if below else (block.high[i:j] >= level)
            found = np.flatnonzero(mask)
            if found.size:
                return day * DAY_MINUTES + i + int(found[0])
        return None


@lru_cache(maxsize=64)
def shared_path(seed: int, symbol: str, model: PathModel) -> SymbolPath:
    """One `SymbolPath` per (seed, symbol, model) in this process: the path is a pure
    function of those, so exchanges (and tests) share its history instead of each
    regenerating years of minutes."""
    return SymbolPath(seed, symbol, model)


def _split(t_ms: int) -> tuple[int, float]:
    """Minute index since the epoch and the fraction of that minute elapsed."""
    m, rest = divmod(t_ms - EPOCH_MS, MINUTE_MS)
    return m, rest / MINUTE_MS


def _minute_start(m: int) -> int:
    return EPOCH_MS + m * MINUTE_MS


def _interp(times: tuple[float, ...], prices: tuple[float, ...], x: float) -> float:
    for k in range(1, len(times)):
        if x <= times[k]:
            t0, t1 = times[k - 1], times[k]
            return prices[k - 1] + (prices[k] - prices[k - 1]) * (x - t0) / (t1 - t0)
    return prices[-1]


def _beyond(price: float, level: float, below: bool) -> bool:
    return price <= level if below else price >= level


def _day_slices(m_from: int, m_to: int) -> list[tuple[int, int, int]]:
    """Split minutes [m_from, m_to) into (day, first index, end index) pieces."""
    out = []
    m = m_from
    while m < m_to:
        day, i = divmod(m, DAY_MINUTES)
        j = min(DAY_MINUTES, i + m_to - m)
        out.append((day, i, j))
        m += j - i
    return out
