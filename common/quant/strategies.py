"""Named, parameterised strategies: one definition serves backtests and live signals.

A strategy turns bars into *events*: `entries`/`exits` open and close a long
position, `short_entries`/`short_exits` a short one, each a boolean array
aligned with the bars (True on the bar whose close produced the event). It also
gives a per-bar `strength` in [-1, 1] (positive is bullish) that the signal
agent uses for confidence. Every array at index t depends on bars[0..t] only:
no look-ahead.

    strategy = get_strategy("sma_cross")
    params = strategy.validate({"fast": 10, "slow": 30})
    signals = strategy.generate(bars, params)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import talib

from common.errors import Unprocessable
from common.quant.bars import Bars, Floats

Bools = np.ndarray[Any, np.dtype[np.bool_]]
Params = dict[str, float]


class StrategyError(Unprocessable):
    """A strategy name or parameter a caller must fix; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)
        self.field = field


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    default: float
    low: float
    high: float
    integer: bool = True
    doc: str = ""

    def parse(self, raw: Any, field: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise StrategyError(field, f"must be a number, got {raw!r}")
        try:
            value = float(raw)
        except ValueError:
            raise StrategyError(field, f"must be a number, got {raw!r}") from None
        if not np.isfinite(value):
            raise StrategyError(field, f"must be finite, got {raw!r}")
        if self.integer and value != int(value):
            raise StrategyError(field, f"must be a whole number, got {raw!r}")
        if not self.low <= value <= self.high:
            raise StrategyError(field, f"must be within {self.low:g}..{self.high:g}, got {value:g}")
        return float(int(value)) if self.integer else value


@dataclass(frozen=True, slots=True)
class Signals:
    entries: Bools
    exits: Bools
    short_entries: Bools
    short_exits: Bools
    strength: Floats


@dataclass(frozen=True, slots=True)
class Context:
    """What a strategy may need beyond bars: model predictions (P(up) per bar, NaN
    where the model has none), aligned with the bars."""

    predictions: Floats | None = None


Generator = Callable[[Bars, Params, Context], Signals]


@dataclass(frozen=True, slots=True)
class Strategy:
    name: str
    description: str
    params: tuple[Param, ...]
    _generate: Generator = field(repr=False)
    _lookback: Callable[[Params], int] = field(repr=False)
    _check: Callable[[Params], None] | None = field(default=None, repr=False)
    needs_model: bool = False

    def defaults(self) -> Params:
        return {p.name: p.default for p in self.params}

    def validate(self, raw: Mapping[str, Any] | None, field: str = "params") -> Params:
        """Defaults overlaid with `raw`, checked; a 422 naming `params.<name>` otherwise."""
        raw = dict(raw or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise StrategyError(
                f"{field}.{unknown[0]}",
                f"{self.name} has no parameter {unknown[0]!r};"
                f" it takes {', '.join(known) or 'none'}",
            )
        params = self.defaults()
        for name, value in raw.items():
            params[name] = known[name].parse(value, f"{field}.{name}")
        if self._check is not None:
            self._check(params)
        return params

    def lookback(self, params: Params) -> int:
        """Bars needed before the first signal can appear."""
        return self._lookback(params)

    def generate(self, bars: Bars, params: Params, context: Context | None = None) -> Signals:
        return self._generate(bars, params, context or Context())

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "needs_model": self.needs_model,
            "params": [
                {
                    "name": p.name,
                    "default": p.default,
                    "min": p.low,
                    "max": p.high,
                    "integer": p.integer,
                    "doc": p.doc,
                }
                for p in self.params
            ],
        }


# --- helpers -------------------------------------------------------------------------------
def _now_and_before(b: Floats | float) -> tuple[Floats | float, Floats | float]:
    if isinstance(b, np.ndarray):
        return b[1:], b[:-1]
    return float(b), float(b)


def crossed_above(a: Floats, b: Floats | float) -> Bools:
    """True where a > b now and a <= b on the bar before (NaN compares False)."""
    now, before = _now_and_before(b)
    out = np.zeros(a.shape, dtype=np.bool_)
    out[1:] = (a[1:] > now) & (a[:-1] <= before)
    return out


def crossed_below(a: Floats, b: Floats | float) -> Bools:
    now, before = _now_and_before(b)
    out = np.zeros(a.shape, dtype=np.bool_)
    out[1:] = (a[1:] < now) & (a[:-1] >= before)
    return out


def nan_to_zero(x: Floats) -> Floats:
    """NaN (not enough history) becomes 0 (no opinion), in place: `x` must be a fresh array.
    (np.nan_to_num does the same for finite input at several times the cost.)"""
    x[np.isnan(x)] = 0.0
    return x


def _squash(x: Floats) -> Floats:
    """To [-1, 1]; NaN becomes 0."""
    return nan_to_zero(np.tanh(x))


def _atr(bars: Bars, period: int = 14) -> Floats:
    return np.asarray(talib.ATR(bars.high, bars.low, bars.close, timeperiod=period))


def _symmetric(entries: Bools, exits: Bools, strength: Floats) -> Signals:
    """Long on `entries`, short on `exits`: the same crossing read both ways."""
    return Signals(entries, exits, exits.copy(), entries.copy(), strength)


def _fast_below_slow(params: Params) -> None:
    if params["fast"] >= params["slow"]:
        raise StrategyError(
            "params.fast",
            f"must be shorter than slow ({params['fast']:g} >= {params['slow']:g})",
        )


# --- the strategies ------------------------------------------------------------------------
def _ma_cross(kind: Callable[..., Any]) -> Generator:
    def generate(bars: Bars, p: Params, _: Context) -> Signals:
        fast = np.asarray(kind(bars.close, timeperiod=int(p["fast"])))
        slow = np.asarray(kind(bars.close, timeperiod=int(p["slow"])))
        strength = _squash((fast - slow) / _atr(bars))
        return _symmetric(crossed_above(fast, slow), crossed_below(fast, slow), strength)

    return generate


def _rsi_mean_reversion(bars: Bars, p: Params, _: Context) -> Signals:
    rsi = np.asarray(talib.RSI(bars.close, timeperiod=int(p["period"])))
    # Back out of oversold: buy; back out of overbought: sell.
    entries = crossed_above(rsi, p["lower"])
    exits = crossed_below(rsi, p["upper"])
    strength = nan_to_zero(np.clip((50.0 - rsi) / 50.0 * 2.0, -1.0, 1.0))
    return _symmetric(entries, exits, strength)


def _rsi_check(params: Params) -> None:
    if params["lower"] >= params["upper"]:
        raise StrategyError(
            "params.lower", f"must be below upper ({params['lower']:g} >= {params['upper']:g})"
        )


def _macd_cross(bars: Bars, p: Params, _: Context) -> Signals:
    macd, signal, hist = talib.MACD(
        bars.close,
        fastperiod=int(p["fast"]),
        slowperiod=int(p["slow"]),
        signalperiod=int(p["signal"]),
    )
    macd, signal = np.asarray(macd), np.asarray(signal)
    strength = _squash(np.asarray(hist) / _atr(bars) * 4.0)
    return _symmetric(crossed_above(macd, signal), crossed_below(macd, signal), strength)


def _bollinger_breakout(bars: Bars, p: Params, _: Context) -> Signals:
    upper, middle, lower = (
        np.asarray(band)
        for band in talib.BBANDS(
            bars.close, timeperiod=int(p["period"]), nbdevup=p["std"], nbdevdn=p["std"]
        )
    )
    close = bars.close
    width = upper - middle
    with np.errstate(divide="ignore", invalid="ignore"):
        position = np.where(width > 0, (close - middle) / width, 0.0)
    return Signals(
        entries=crossed_above(close, upper),
        exits=crossed_below(close, middle),
        short_entries=crossed_below(close, lower),
        short_exits=crossed_above(close, middle),
        strength=nan_to_zero(np.clip(position, -1.0, 1.0)),
    )


def _ml(bars: Bars, p: Params, context: Context) -> Signals:
    proba = context.predictions
    if proba is None:
        raise StrategyError("model", "the ml strategy needs a trained model; train one first")
    if len(proba) != len(bars):
        raise ValueError(f"{len(proba)} predictions for {len(bars)} bars")
    threshold = p["threshold"]
    strength = nan_to_zero(np.clip((proba - 0.5) * 2.0, -1.0, 1.0))
    return _symmetric(
        crossed_above(proba, threshold), crossed_below(proba, 1.0 - threshold), strength
    )


def _period(name: str, default: int, low: int = 2, high: int = 1000, doc: str = "") -> Param:
    return Param(name, default, low, high, doc=doc)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "sma_cross",
            "Long when the fast simple moving average crosses above the slow one; "
            "out (or short) when it crosses below.",
            (
                _period("fast", 10, doc="fast SMA bars"),
                _period("slow", 30, 3, 5000, "slow SMA bars"),
            ),
            _ma_cross(talib.SMA),
            lambda p: int(p["slow"]),
            _fast_below_slow,
        ),
        Strategy(
            "ema_cross",
            "Long when the fast exponential moving average crosses above the slow one; "
            "out (or short) when it crosses below.",
            (
                _period("fast", 12, doc="fast EMA bars"),
                _period("slow", 26, 3, 5000, "slow EMA bars"),
            ),
            _ma_cross(talib.EMA),
            lambda p: int(p["slow"]),
            _fast_below_slow,
        ),
        Strategy(
            "rsi_mean_reversion",
            "Buy when RSI climbs back above `lower` (leaving oversold); "
            "sell when it falls back below `upper` (leaving overbought).",
            (
                _period("period", 14, 2, 500, "RSI bars"),
                Param("lower", 30, 1, 99, integer=False, doc="oversold level"),
                Param("upper", 70, 1, 99, integer=False, doc="overbought level"),
            ),
            _rsi_mean_reversion,
            lambda p: int(p["period"]) + 1,
            _rsi_check,
        ),
        Strategy(
            "macd_cross",
            "Long when the MACD line crosses above its signal line; out (or short) below.",
            (
                _period("fast", 12, doc="fast EMA bars"),
                _period("slow", 26, 3, 2000, "slow EMA bars"),
                _period("signal", 9, 1, 500, "signal line EMA bars"),
            ),
            _macd_cross,
            lambda p: int(p["slow"] + p["signal"]),
            _fast_below_slow,
        ),
        Strategy(
            "bollinger_breakout",
            "Long when the close breaks above the upper band, out when it falls back "
            "below the middle; short on a break below the lower band.",
            (
                _period("period", 20, 2, 1000, "band bars"),
                Param(
                    "std", 2.0, 0.1, 10.0, integer=False, doc="band width in standard deviations"
                ),
            ),
            _bollinger_breakout,
            lambda p: int(p["period"]),
        ),
        Strategy(
            "ml",
            "Long when the active model's probability of a rise crosses above `threshold`; "
            "out (or short) when it falls below 1 - threshold.",
            (Param("threshold", 0.55, 0.5, 0.99, integer=False, doc="probability to act on"),),
            _ml,
            lambda p: 1,
            needs_model=True,
        ),
    )
}


def get_strategy(name: str, field: str = "strategy") -> Strategy:
    """The named strategy, or a 422 listing the ones there are."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise StrategyError(
            field, f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}"
        ) from None
