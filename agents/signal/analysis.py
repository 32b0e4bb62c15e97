"""Indicator values for `GET /indicators`, and the plain-English read of a market for
`GET /autonomous/insights`."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import talib
from sqlalchemy.orm import Session

from agents.signal import models_service
from agents.signal import repository as repo
from agents.signal.indicators import Requested, parse
from agents.signal.runtime import Runtime
from agents.signal.schemas import (
    IndicatorsResponse,
    IndicatorValue,
    Insights,
    TimeframeIndicators,
    check_timeframe,
)
from common.errors import NotFound, Unprocessable
from common.quant.bars import Bars, Floats


def _num(x: float) -> float | None:
    return round(float(x), 8) if math.isfinite(x) else None


def _series(values: Floats) -> list[float | None]:
    return [_num(x) for x in values.tolist()]


def parse_timeframes(timeframe: str, timeframes: str | None) -> list[str]:
    """`timeframes=1h,4h,1d` wins over `timeframe`; each checked, duplicates dropped."""
    field, raw = ("timeframes", timeframes) if timeframes else ("timeframe", timeframe)
    out: list[str] = []
    for item in raw.split(","):
        try:
            tf = check_timeframe(item.strip())
        except ValueError as exc:
            raise Unprocessable(f"{field}: {exc}", field=field) from None
        if tf not in out:
            out.append(tf)
    return out


def indicator_block(
    timeframe: str, bars: Bars, requested: list[Requested], series: bool
) -> TimeframeIndicators:
    values = {}
    for item in requested:
        outputs = item.compute(bars) if len(bars) else {}
        values[item.key] = IndicatorValue(
            name=item.indicator.name,
            params=item.params,
            values={k: _num(v[-1]) for k, v in outputs.items()},
            series={k: _series(v) for k, v in outputs.items()} if series else None,
        )
    return TimeframeIndicators(
        timeframe=timeframe,
        bars=len(bars),
        bar_ts=int(bars.ts[-1]) if len(bars) else None,
        close=float(bars.close[-1]) if len(bars) else None,
        indicators=values,
        ts=bars.ts.tolist() if series else None,
    )


async def indicators(
    rt: Runtime,
    *,
    exchange: str,
    symbol: str,
    timeframes: list[str],
    spec: str | None,
    limit: int,
    series: bool,
) -> IndicatorsResponse:
    requested = parse(spec)
    all_bars = await asyncio.gather(
        *(rt.bars.fetch(exchange, symbol, tf, limit=limit) for tf in timeframes)
    )
    blocks = [
        indicator_block(tf, bars, requested, series)
        for tf, bars in zip(timeframes, all_bars, strict=True)
    ]
    return IndicatorsResponse(exchange=exchange, symbol=symbol, timeframes=blocks)


# --- insights ------------------------------------------------------------------------------
def _last(values: Any) -> float:
    return float(np.asarray(values, dtype=np.float64)[-1])


def _percentile_rank(values: Floats) -> float | None:
    """Where the last value sits among the window's known values, 0..100."""
    known = values[np.isfinite(values)]
    if len(known) < 20:
        return None
    return round(float((known < known[-1]).mean() * 100.0), 1)


def _trend(close: float, ema20: float, ema50: float, sma200: float | None) -> str:
    if close > ema50 and ema20 > ema50 and (sma200 is None or close > sma200):
        return "up"
    if close < ema50 and ema20 < ema50 and (sma200 is None or close < sma200):
        return "down"
    return "mixed"


def _momentum(rsi: float, hist: float) -> str:
    if rsi >= 70:
        return "overbought"
    if rsi <= 30:
        return "oversold"
    if rsi >= 55 and hist > 0:
        return "bullish"
    if rsi <= 45 and hist < 0:
        return "bearish"
    return "neutral"


def _regime(adx: float, vol_rank: float | None) -> tuple[str, str]:
    strength = "trending" if adx >= 25 else "ranging" if adx < 20 else "transitioning"
    if vol_rank is None:
        return strength, "unknown"
    vol = "high" if vol_rank >= 70 else "low" if vol_rank <= 30 else "normal"
    return strength, vol


def market_facts(bars: Bars) -> dict[str, Any]:
    """The numbers behind the insights, from closed bars (needs at least 60)."""
    c, h, lo = bars.close, bars.high, bars.low
    atr = np.asarray(talib.ATR(h, lo, c, timeperiod=14))
    upper, middle, lower = (np.asarray(x) for x in talib.BBANDS(c, 20, 2.0, 2.0))
    _, _, hist = talib.MACD(c, 12, 26, 9)
    hist = np.asarray(hist)
    sma200 = _last(talib.SMA(c, 200)) if len(bars) >= 200 else None
    ema20, ema50 = _last(talib.EMA(c, 20)), _last(talib.EMA(c, 50))
    rsi, adx = _last(talib.RSI(c, 14)), _last(talib.ADX(h, lo, c, 14))
    atr_pct = atr / c * 100.0
    vol_rank = _percentile_rank(atr_pct)
    strength, volatility = _regime(adx, vol_rank)
    return {
        "close": float(c[-1]),
        "trend": {
            "direction": _trend(float(c[-1]), ema20, ema50, sma200),
            "ema20": round(ema20, 8),
            "ema50": round(ema50, 8),
            "sma200": None if sma200 is None else round(sma200, 8),
        },
        "momentum": {
            "state": _momentum(rsi, float(hist[-1])),
            "rsi14": round(rsi, 2),
            "macd_hist": round(float(hist[-1]), 8),
            "macd_hist_rising": bool(hist[-1] > hist[-2]),
        },
        "volatility": {
            "level": volatility,
            "atr14": round(float(atr[-1]), 8),
            "atr_pct": round(float(atr_pct[-1]), 4),
            "atr_pct_percentile": vol_rank,
            "bb_width_pct": round(float((upper[-1] - lower[-1]) / middle[-1] * 100.0), 4),
        },
        "trend_strength": {"adx14": round(adx, 2), "state": strength},
        "regime": f"{strength}, {volatility} volatility",
        "bars": len(bars),
    }


def _sentences(symbol: str, timeframe: str, f: dict[str, Any]) -> list[str]:
    t, m, v, s = f["trend"], f["momentum"], f["volatility"], f["trend_strength"]
    trend = {
        "up": "is in an uptrend: price is above its 50-bar EMA and the 20-bar EMA leads it",
        "down": "is in a downtrend: price is below its 50-bar EMA and the 20-bar EMA trails it",
        "mixed": "has no clear trend: price and its 20- and 50-bar EMAs disagree",
    }[t["direction"]]
    rising = "rising" if m["macd_hist_rising"] else "falling"
    out = [
        f"{symbol} on {timeframe} {trend} (close {f['close']:g}, EMA50 {t['ema50']:g}).",
        f"Momentum is {m['state']}: RSI(14) {m['rsi14']:.1f}, MACD histogram "
        f"{m['macd_hist']:+.4g} and {rising}.",
        f"Trend strength: ADX(14) {s['adx14']:.1f}, so the market is {s['state']}.",
    ]
    if v["atr_pct_percentile"] is not None:
        out.append(
            f"Volatility is {v['level']}: ATR is {v['atr_pct']:.2f}% of price, higher than "
            f"{v['atr_pct_percentile']:.0f}% of the last {f['bars']} bars; Bollinger width "
            f"{v['bb_width_pct']:.2f}%."
        )
    return out


async def _model_facts(
    rt: Runtime, session: Session, exchange: str, symbol: str, timeframe: str, bars: Bars
) -> dict[str, Any] | None:
    ref = await asyncio.to_thread(repo.active_model_ref, session, exchange, symbol, timeframe)
    if ref is None:
        return None
    model = await asyncio.to_thread(repo.get_model, session, ref.id)
    proba = await models_service.predictions(rt, session, ref, bars)
    oos = model.metrics.get("out_of_sample", {}) if model is not None else {}
    return {
        "id": ref.id,
        "version": ref.version,
        "kind": ref.kind,
        "horizon": ref.horizon,
        "probability_up": _num(proba[-1]),
        "oos_accuracy": oos.get("accuracy"),
        "oos_auc": oos.get("auc"),
    }


def _model_sentence(model: dict[str, Any] | None) -> str:
    if model is None:
        return "No model is active for this market."
    p = model["probability_up"]
    if p is None:
        return f"The active model (#{model['id']}) has no prediction yet (warming up)."
    lean = "a rise" if p > 0.5 else "a fall" if p < 0.5 else "neither way"
    return (
        f"The active {model['kind'].replace('_', ' ')} model (#{model['id']}, v{model['version']}) "
        f"gives P(up over {model['horizon']} bars) = {p:.2f}, leaning to {lean}; out of sample "
        f"it was right {model['oos_accuracy'] or 0:.0%} of the time."
    )


async def insights(
    rt: Runtime, session: Session, *, exchange: str, symbol: str, timeframe: str, limit: int
) -> Insights:
    bars = await rt.bars.fetch(exchange, symbol, timeframe, limit=limit)
    if len(bars) < 60:
        raise NotFound(
            f"{symbol} {timeframe} on {exchange} has {len(bars)} closed bars; insights need 60"
        )
    facts = market_facts(bars)
    facts["model"] = await _model_facts(rt, session, exchange, symbol, timeframe, bars)
    text = [*_sentences(symbol, timeframe, facts), _model_sentence(facts["model"])]
    text.append(f"Regime: {facts['regime']}.")
    return Insights(
        exchange=exchange,
        symbol=symbol,
        timeframe=timeframe,
        bar_ts=int(bars.ts[-1]),
        price=float(bars.close[-1]),
        summary=" ".join(text),
        facts=facts,
    )
