"""Insights: the facts come from the indicators, and the words say what the facts say."""

from __future__ import annotations

import pytest
import talib

from agents.signal import analysis
from tests.agents.signal.bars import sim_bars


def windows() -> list[tuple[str, int]]:
    return [(s, d) for s in ("BTC/USDT", "ETH/USDT", "SOL/USDT") for d in (20, 50, 80, 110)]


@pytest.mark.parametrize(("symbol", "start_day"), windows())
def test_facts_and_words_agree(symbol: str, start_day: int) -> None:
    bars = sim_bars(symbol, "1h", 400, start_day=start_day)
    facts = analysis.market_facts(bars)
    rsi = float(talib.RSI(bars.close, 14)[-1])
    adx = float(talib.ADX(bars.high, bars.low, bars.close, 14)[-1])
    assert facts["momentum"]["rsi14"] == pytest.approx(rsi, abs=0.01)
    assert facts["trend_strength"]["adx14"] == pytest.approx(adx, abs=0.01)
    text = " ".join(analysis._sentences(symbol, "1h", facts))
    assert f"RSI(14) {facts['momentum']['rsi14']:.1f}" in text
    assert f"ADX(14) {facts['trend_strength']['adx14']:.1f}" in text
    word = {"up": "uptrend", "down": "downtrend", "mixed": "no clear trend"}
    assert word[facts["trend"]["direction"]] in text
    strength = facts["trend_strength"]["state"]
    assert strength == ("trending" if adx >= 25 else "ranging" if adx < 20 else "transitioning")
    assert f"the market is {strength}" in text
    assert facts["regime"].startswith(strength)
    rank = facts["volatility"]["atr_pct_percentile"]
    assert 0 <= rank <= 100 and f"higher than {rank:.0f}%" in text


def test_the_windows_cover_more_than_one_reading() -> None:
    seen = {
        (f["trend"]["direction"], f["trend_strength"]["state"], f["volatility"]["level"])
        for f in (analysis.market_facts(sim_bars(s, "1h", 400, start_day=d)) for s, d in windows())
    }
    assert len({s[0] for s in seen}) >= 2 and len({s[1] for s in seen}) >= 2


@pytest.mark.parametrize(
    ("adx", "rank", "expected"),
    [
        (30, 80, ("trending", "high")),
        (15, 10, ("ranging", "low")),
        (22, 50, ("transitioning", "normal")),
        (25, None, ("trending", "unknown")),
    ],
)
def test_regime_thresholds(adx: float, rank: float | None, expected: tuple[str, str]) -> None:
    assert analysis._regime(adx, rank) == expected


def test_model_sentence() -> None:
    assert analysis._model_sentence(None) == "No model is active for this market."
    model = {
        "id": 3,
        "version": 2,
        "kind": "random_forest",
        "horizon": 5,
        "probability_up": 0.62,
        "oos_accuracy": 0.54,
    }
    text = analysis._model_sentence(model)
    assert "random forest model (#3, v2)" in text and "= 0.62" in text and "a rise" in text
    assert "54%" in text
