"""Model features and labels from bars.

Every feature at row t is computed from bars[0..t] only (TA-Lib indicators and
trailing windows are causal), so a model fed row t never sees the future. The
label at row t is the one thing that looks ahead: 1.0 when the close `horizon`
bars later is above the close at t, else 0.0; the last `horizon` rows have no
label (NaN). Rows still warming up (an indicator without enough history) are
NaN too: `usable_rows` picks the rows a model can learn from.

    X = feature_matrix(bars)              # (len(bars), len(FEATURES))
    y = labels(bars, horizon=5)
    rows = usable_rows(X, y)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import talib

from common.errors import Unprocessable
from common.quant.bars import Bars, Floats

Ints = np.ndarray[tuple[int], np.dtype[np.int64]]


def _log_return(bars: Bars, lag: int) -> Floats:
    out = np.full(len(bars), np.nan)
    if len(bars) > lag:
        out[lag:] = np.log(bars.close[lag:] / bars.close[:-lag])
    return out


def _atr(bars: Bars) -> Floats:
    return np.asarray(talib.ATR(bars.high, bars.low, bars.close, timeperiod=14))


def _ratio(a: Floats, b: Floats) -> Floats:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / b, np.nan)


def _rsi(bars: Bars) -> Floats:
    return np.asarray(talib.RSI(bars.close, timeperiod=14)) / 100.0


def _macd_hist_atr(bars: Bars) -> Floats:
    _, _, hist = talib.MACD(bars.close, fastperiod=12, slowperiod=26, signalperiod=9)
    return _ratio(np.asarray(hist), _atr(bars))


def _bands(bars: Bars) -> tuple[Floats, Floats, Floats]:
    upper, middle, lower = talib.BBANDS(bars.close, timeperiod=20, nbdevup=2.0, nbdevdn=2.0)
    return np.asarray(upper), np.asarray(middle), np.asarray(lower)


def _bb_percent_b(bars: Bars) -> Floats:
    upper, _, lower = _bands(bars)
    return _ratio(bars.close - lower, upper - lower)


def _bb_width(bars: Bars) -> Floats:
    upper, middle, lower = _bands(bars)
    return _ratio(upper - lower, middle)


def _atr_pct(bars: Bars) -> Floats:
    return _ratio(_atr(bars), bars.close)


def _adx(bars: Bars) -> Floats:
    return np.asarray(talib.ADX(bars.high, bars.low, bars.close, timeperiod=14)) / 100.0


def _stoch_k(bars: Bars) -> Floats:
    sma = talib.MA_Type.SMA
    k, _ = talib.STOCH(bars.high, bars.low, bars.close, 14, 3, sma, 3, sma)
    return np.asarray(k) / 100.0


def _ema_gap_atr(bars: Bars) -> Floats:
    return _ratio(bars.close - np.asarray(talib.EMA(bars.close, timeperiod=50)), _atr(bars))


def _volume_z(bars: Bars) -> Floats:
    mean = np.asarray(talib.SMA(bars.volume, timeperiod=20))
    std = np.asarray(talib.STDDEV(bars.volume, timeperiod=20, nbdev=1.0))
    return _ratio(bars.volume - mean, std)


def _range_atr(bars: Bars) -> Floats:
    return _ratio(bars.high - bars.low, _atr(bars))


FeatureFn = Callable[[Bars], Floats]

# name -> (how it is computed, what it means). Order is the column order.
FEATURES: dict[str, tuple[FeatureFn, str]] = {
    "ret_1": (lambda b: _log_return(b, 1), "log return over the last bar"),
    "ret_5": (lambda b: _log_return(b, 5), "log return over the last 5 bars"),
    "ret_20": (lambda b: _log_return(b, 20), "log return over the last 20 bars"),
    "rsi_14": (_rsi, "RSI(14) / 100"),
    "macd_hist_atr": (_macd_hist_atr, "MACD(12,26,9) histogram / ATR(14)"),
    "bb_percent_b": (_bb_percent_b, "Bollinger(20,2) %B: 0 at the lower band, 1 at the upper"),
    "bb_width": (_bb_width, "Bollinger(20,2) width / middle band"),
    "atr_pct": (_atr_pct, "ATR(14) / close"),
    "adx_14": (_adx, "ADX(14) / 100: trend strength"),
    "stoch_k": (_stoch_k, "slow stochastic %K(14,3) / 100"),
    "ema50_gap_atr": (_ema_gap_atr, "(close - EMA(50)) / ATR(14)"),
    "volume_z": (_volume_z, "volume z-score over the last 20 bars"),
    "range_atr": (_range_atr, "(high - low) / ATR(14)"),
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)
# Bars of history the slowest feature needs before it has a value (EMA(50), ADX(14)).
WARMUP = 50


def validate_features(names: Sequence[str] | None, field: str = "features") -> list[str]:
    """The requested feature names (all when None), or a 422 naming the unknown one."""
    if names is None:
        return list(FEATURE_NAMES)
    if not names:
        raise Unprocessable(f"{field}: give at least one feature, or leave it out for all")
    for i, name in enumerate(names):
        if name not in FEATURES:
            raise Unprocessable(
                f"{field}[{i}]: unknown feature {name!r}; use any of {', '.join(FEATURE_NAMES)}",
                field=f"{field}[{i}]",
            )
    if len(set(names)) != len(names):
        raise Unprocessable(f"{field}: each feature may appear once", field=field)
    return list(names)


def feature_matrix(bars: Bars, names: Sequence[str] = FEATURE_NAMES) -> Floats:
    """One row per bar, one column per feature; NaN where a feature is still warming up."""
    if len(bars) == 0:
        return np.empty((0, len(names)))
    columns = [FEATURES[name][0](bars) for name in names]
    matrix = np.column_stack(columns).astype(np.float64)
    matrix[~np.isfinite(matrix)] = np.nan
    return matrix


def labels(bars: Bars, horizon: int) -> Floats:
    """1.0 where close[t + horizon] > close[t], 0.0 where not, NaN for the last `horizon` rows."""
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    out = np.full(len(bars), np.nan)
    if len(bars) > horizon:
        out[:-horizon] = (bars.close[horizon:] > bars.close[:-horizon]).astype(np.float64)
    return out


def forward_returns(close: Floats, horizon: int) -> Floats:
    """close[t + horizon] / close[t] - 1, NaN where the future is not known yet."""
    out = np.full(len(close), np.nan)
    if len(close) > horizon:
        out[:-horizon] = close[horizon:] / close[:-horizon] - 1.0
    return out


def usable_rows(matrix: Floats, y: Floats | None = None) -> Ints:
    """Indices of rows whose features are all known (and whose label is, when given)."""
    ok = np.isfinite(matrix).all(axis=1)
    if y is not None:
        ok &= np.isfinite(y)
    return np.flatnonzero(ok).astype(np.int64)
