"""The TA-Lib indicators `GET /indicators` serves, and the `name:p1:p2` syntax that asks for them.

`rsi` is RSI with its default period, `rsi:21` a 21-bar RSI, `macd:8:21:5` MACD with
fast 8, slow 21 and signal 5. Parameters are positional, in the order `describe()`
lists them; missing trailing ones take their defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import talib

from common.errors import Unprocessable
from common.quant.bars import Bars, Floats

Outputs = dict[str, Floats]


@dataclass(frozen=True, slots=True)
class IParam:
    name: str
    default: float
    low: float
    high: float
    integer: bool = True


@dataclass(frozen=True, slots=True)
class Indicator:
    name: str
    description: str
    params: tuple[IParam, ...]
    compute: Callable[[Bars, list[float]], Outputs]


@dataclass(frozen=True, slots=True)
class Requested:
    """One parsed request: the indicator, its parameter values and the key it is shown under."""

    indicator: Indicator
    values: tuple[float, ...]

    @property
    def key(self) -> str:
        return ":".join([self.indicator.name, *(f"{v:g}" for v in self.values)])

    @property
    def params(self) -> dict[str, float]:
        return {p.name: v for p, v in zip(self.indicator.params, self.values, strict=True)}

    def compute(self, bars: Bars) -> Outputs:
        return self.indicator.compute(bars, list(self.values))


def _a(x: object) -> Floats:
    return np.asarray(x, dtype=np.float64)


def _period(default: int, low: int = 2, high: int = 1000) -> IParam:
    return IParam("period", default, low, high)


def _one(fn: Callable[..., object], output: str) -> Callable[[Bars, list[float]], Outputs]:
    def compute(bars: Bars, p: list[float]) -> Outputs:
        return {output: _a(fn(bars.close, timeperiod=int(p[0])))}

    return compute


def _hlc(fn: Callable[..., object], output: str) -> Callable[[Bars, list[float]], Outputs]:
    def compute(bars: Bars, p: list[float]) -> Outputs:
        return {output: _a(fn(bars.high, bars.low, bars.close, timeperiod=int(p[0])))}

    return compute


def _macd(bars: Bars, p: list[float]) -> Outputs:
    macd, signal, hist = talib.MACD(
        bars.close, fastperiod=int(p[0]), slowperiod=int(p[1]), signalperiod=int(p[2])
    )
    return {"macd": _a(macd), "signal": _a(signal), "hist": _a(hist)}


def _bbands(bars: Bars, p: list[float]) -> Outputs:
    upper, middle, lower = (
        _a(x) for x in talib.BBANDS(bars.close, timeperiod=int(p[0]), nbdevup=p[1], nbdevdn=p[1])
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        width = np.where(middle != 0, (upper - lower) / middle, np.nan)
        percent_b = np.where(upper > lower, (bars.close - lower) / (upper - lower), np.nan)
    return {
        "upper": upper,
        "middle": middle,
        "lower": lower,
        "width": width,
        "percent_b": percent_b,
    }


def _stoch(bars: Bars, p: list[float]) -> Outputs:
    k, d = talib.STOCH(
        bars.high,
        bars.low,
        bars.close,
        fastk_period=int(p[0]),
        slowk_period=int(p[1]),
        slowk_matype=talib.MA_Type.SMA,
        slowd_period=int(p[2]),
        slowd_matype=talib.MA_Type.SMA,
    )
    return {"k": _a(k), "d": _a(d)}


def _adx(bars: Bars, p: list[float]) -> Outputs:
    n = int(p[0])
    return {
        "adx": _a(talib.ADX(bars.high, bars.low, bars.close, timeperiod=n)),
        "plus_di": _a(talib.PLUS_DI(bars.high, bars.low, bars.close, timeperiod=n)),
        "minus_di": _a(talib.MINUS_DI(bars.high, bars.low, bars.close, timeperiod=n)),
    }


def _obv(bars: Bars, _: list[float]) -> Outputs:
    return {"obv": _a(talib.OBV(bars.close, bars.volume))}


def _mfi(bars: Bars, p: list[float]) -> Outputs:
    return {"mfi": _a(talib.MFI(bars.high, bars.low, bars.close, bars.volume, int(p[0])))}


INDICATORS: dict[str, Indicator] = {
    i.name: i
    for i in (
        Indicator("rsi", "Relative Strength Index", (_period(14),), _one(talib.RSI, "rsi")),
        Indicator(
            "macd",
            "MACD line, signal line and histogram",
            (IParam("fast", 12, 2, 500), IParam("slow", 26, 3, 1000), IParam("signal", 9, 1, 500)),
            _macd,
        ),
        Indicator(
            "bbands",
            "Bollinger Bands (upper, middle, lower, width = (upper-lower)/middle, %B)",
            (_period(20), IParam("std", 2.0, 0.1, 10.0, integer=False)),
            _bbands,
        ),
        Indicator(
            "stoch",
            "Slow stochastic %K and %D",
            (IParam("k", 14, 1, 500), IParam("k_smooth", 3, 1, 100), IParam("d", 3, 1, 100)),
            _stoch,
        ),
        Indicator("atr", "Average True Range", (_period(14, 1),), _hlc(talib.ATR, "atr")),
        Indicator(
            "natr", "ATR as a percentage of close", (_period(14, 1),), _hlc(talib.NATR, "natr")
        ),
        Indicator("adx", "Average Directional Index with +DI and -DI", (_period(14),), _adx),
        Indicator("ema", "Exponential moving average", (_period(20),), _one(talib.EMA, "ema")),
        Indicator("sma", "Simple moving average", (_period(20),), _one(talib.SMA, "sma")),
        Indicator("obv", "On-Balance Volume", (), _obv),
        Indicator("willr", "Williams %R", (_period(14),), _hlc(talib.WILLR, "willr")),
        Indicator("cci", "Commodity Channel Index", (_period(20),), _hlc(talib.CCI, "cci")),
        Indicator("mfi", "Money Flow Index", (_period(14),), _mfi),
    )
}


def describe() -> list[dict[str, object]]:
    return [
        {
            "name": i.name,
            "description": i.description,
            "params": [
                {"name": p.name, "default": p.default, "min": p.low, "max": p.high}
                for p in i.params
            ],
        }
        for i in INDICATORS.values()
    ]


def _bad(message: str) -> Unprocessable:
    return Unprocessable(f"indicators: {message}", field="indicators")


def _parse_value(indicator: Indicator, param: IParam, raw: str) -> float:
    where = f"{indicator.name} {param.name}"
    try:
        value = float(raw)
    except ValueError:
        raise _bad(f"{where} must be a number, got {raw!r}") from None
    if not np.isfinite(value) or not param.low <= value <= param.high:
        raise _bad(f"{where} must be within {param.low:g}..{param.high:g}, got {raw!r}")
    if param.integer and value != int(value):
        raise _bad(f"{where} must be a whole number, got {raw!r}")
    return value


def parse_one(token: str) -> Requested:
    name, *raw = token.strip().lower().split(":")
    indicator = INDICATORS.get(name)
    if indicator is None:
        raise _bad(f"unknown indicator {name!r}; use any of {', '.join(INDICATORS)}")
    if len(raw) > len(indicator.params):
        wanted = ", ".join(p.name for p in indicator.params) or "no parameters"
        raise _bad(f"{name} takes {len(indicator.params)} parameter(s) ({wanted}), got {token!r}")
    values = [_parse_value(indicator, p, r) for p, r in zip(indicator.params, raw, strict=False)]
    values += [p.default for p in indicator.params[len(values) :]]
    if name == "macd" and values[0] >= values[1]:
        raise _bad(f"macd fast must be shorter than slow, got {token!r}")
    return Requested(indicator, tuple(values))


def parse(spec: str | None) -> list[Requested]:
    """`rsi:21,macd,ema:50` -> the requested indicators; None or empty asks for all of them."""
    if spec is None or not spec.strip():
        return [Requested(i, tuple(p.default for p in i.params)) for i in INDICATORS.values()]
    requested: dict[str, Requested] = {}
    for token in spec.split(","):
        if not token.strip():
            raise _bad(f"empty entry in {spec!r}; separate indicators with single commas")
        item = parse_one(token)
        requested.setdefault(item.key, item)
    return list(requested.values())
