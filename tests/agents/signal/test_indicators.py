"""The indicator syntax (`rsi:21,macd`), values against TA-Lib, timeframes, bar parsing."""

from __future__ import annotations

import numpy as np
import pytest
import talib

from agents.signal import analysis, indicators
from agents.signal.market import parse_columns
from common.errors import Unprocessable, UpstreamError
from common.quant.bars import TIMEFRAME_MS
from tests.agents.signal.bars import sim_bars


def test_defaults_and_parameters() -> None:
    everything = indicators.parse(None)
    names = {r.indicator.name for r in everything}
    required = {"rsi", "macd", "bbands", "stoch", "atr", "adx", "ema", "sma", "obv", "willr", "cci"}
    assert required <= names
    rsi, macd, bb = indicators.parse("RSI:21, macd:8:21 ,bbands:20:2.5")
    assert (rsi.key, rsi.params) == ("rsi:21", {"period": 21})
    assert (macd.key, macd.params) == ("macd:8:21:9", {"fast": 8, "slow": 21, "signal": 9})
    assert bb.params == {"period": 20, "std": 2.5}
    assert [r.key for r in indicators.parse("rsi,rsi:14,ema:50")] == ["rsi:14", "ema:50"]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("rsi,foo", "unknown indicator 'foo'"),
        ("rsi:abc", "rsi period must be a number"),
        ("rsi:1", "rsi period must be within 2..1000"),
        ("rsi:14.5", "must be a whole number"),
        ("rsi:14:3", "rsi takes 1 parameter(s)"),
        ("obv:3", "obv takes 0 parameter(s)"),
        ("macd:26:12", "macd fast must be shorter than slow"),
        ("rsi,,ema", "empty entry"),
        ("bbands:20:nan", "bbands std must be within"),
    ],
)
def test_bad_specs_are_422_on_indicators(spec: str, says: str) -> None:
    with pytest.raises(Unprocessable) as caught:
        indicators.parse(spec)
    assert caught.value.message.startswith("indicators: ") and says in caught.value.message


def test_values_are_talibs_on_the_last_bar() -> None:
    bars = sim_bars("ETH/USDT", "1h", 300)
    block = analysis.indicator_block(
        "1h", bars, indicators.parse("rsi:21,macd,bbands,stoch,adx,obv,willr,cci:10"), True
    )
    assert block.bars == 300 and block.bar_ts == int(bars.ts[-1]) and block.ts == bars.ts.tolist()
    values = block.indicators
    assert values["rsi:21"].values["rsi"] == pytest.approx(talib.RSI(bars.close, 21)[-1])
    macd, signal, hist = talib.MACD(bars.close, 12, 26, 9)
    assert values["macd:12:26:9"].values == pytest.approx(
        {"macd": macd[-1], "signal": signal[-1], "hist": hist[-1]}
    )
    cci = talib.CCI(bars.high, bars.low, bars.close, 10)
    series = values["cci:10"].series
    assert series is not None and series["cci"][:9] == [None] * 9
    assert series["cci"][9:] == pytest.approx(cci[9:].tolist())
    assert 0 <= values["stoch:14:3:3"].values["k"] <= 100  # type: ignore[operator]
    assert set(values["bbands:20:2"].values) == {"upper", "middle", "lower", "width", "percent_b"}


def test_timeframes_are_checked_and_deduplicated() -> None:
    assert analysis.parse_timeframes("1h", None) == ["1h"]
    assert analysis.parse_timeframes("1h", "4h, 1d,4h") == ["4h", "1d"]
    with pytest.raises(Unprocessable, match=r"^timeframes: '2x' is not a timeframe"):
        analysis.parse_timeframes("1h", "1h,2x")
    with pytest.raises(Unprocessable, match=r"^timeframe: "):
        analysis.parse_timeframes("7m", None)


def _answer(bars: object, **override: object) -> dict[str, object]:
    b = sim_bars("BTC/USDT", "1h", 10)
    body: dict[str, object] = {
        "exchange": "sim",
        "symbol": "BTC/USDT",
        "timeframe": "1h",
        "ts": b.ts.tolist(),
        "open": b.open.tolist(),
        "high": b.high.tolist(),
        "low": b.low.tolist(),
        "close": b.close.tolist(),
        "volume": b.volume.tolist(),
    }
    body.update(override)
    return body


def test_bar_source_keeps_closed_candles_only() -> None:
    body = _answer(None)
    ts = body["ts"]
    assert isinstance(ts, list)
    hour = TIMEFRAME_MS["1h"]
    # The last candle closes an instant after now: it is still forming, and dropped.
    bars = parse_columns(body, "1h", ts[-1] + hour - 1)
    assert len(bars) == 9 and bars.ts[-1] == ts[-2]
    assert len(parse_columns(body, "1h", ts[-1] + hour)) == 10
    np.testing.assert_array_equal(parse_columns(body, "1h", ts[-1] + hour).close, body["close"])


@pytest.mark.parametrize(
    "override",
    [{"ts": None}, {"close": [1.0, 2.0]}, {"ts": list(range(10, 0, -1))}, {"volume": ["x"] * 10}],
)
def test_bar_source_refuses_a_garbled_answer(override: dict[str, object]) -> None:
    with pytest.raises(UpstreamError):
        parse_columns(_answer(None, **override), "1h", 2**62)
