"""The pure parts: the fetch plan, gaps, the binary COPY codec, times and the grid."""

from __future__ import annotations

import numpy as np
import pytest

from agents.backtest import pgcopy
from agents.backtest.fetcher import add_gaps, page_gaps, plan_ranges
from agents.backtest.timegrid import bar_count, ceil_ms, floor_ms, parse_time
from common.quant.bars import Bars

S = 60_000
T0 = 1_704_067_200_000  # Monday 2024-01-01T00:00Z


def test_plan_skips_what_is_stored_but_its_last_candle() -> None:
    stored = np.array([T0 + 2 * S, T0 + 3 * S, T0 + 6 * S, T0 + 7 * S], np.int64)
    assert plan_ranges(stored, T0, T0 + 10 * S, S) == [
        [T0, T0 + 2 * S],  # before the first stored candle
        [T0 + 4 * S, T0 + 6 * S],  # the hole
        [T0 + 7 * S, T0 + 10 * S],  # from the last stored one (maybe still forming) on
    ]
    assert plan_ranges(np.array([], np.int64), T0, T0 + S, S) == [[T0, T0 + S]]


def test_page_gaps_and_merging_across_pages() -> None:
    ts = np.array([T0 + 2 * S, T0 + 3 * S, T0 + 5 * S], np.int64)
    assert page_gaps(ts, T0, T0 + 6 * S, S) == [[T0, T0 + 2 * S], [T0 + 4 * S, T0 + 5 * S]]
    assert page_gaps(np.array([], np.int64), T0, T0 + 3 * S, S) == [[T0, T0 + 3 * S]]
    known = [[T0, T0 + S]]  # inclusive: candles T0 and T0+1m are missing
    assert add_gaps(known, [[T0 + 2 * S, T0 + 4 * S]], S) == [[T0, T0 + 3 * S]]
    assert add_gaps(known, [[T0 + 5 * S, T0 + 6 * S]], S) == [[T0, T0 + S], [T0 + 5 * S] * 2]


def test_binary_copy_round_trip() -> None:
    bars = Bars(
        np.array([T0, T0 + S, 946_684_800_000 - S], np.int64),
        *(np.array([0.1 * k, 1e-12, 123456789.123456], np.float64) for k in range(1, 6)),
    )
    stream = pgcopy.encode(bars)
    assert len(stream) == 19 + 3 * 74 + 2
    back = pgcopy.decode(stream)
    assert back.ts.tolist() == bars.ts.tolist()
    for name in ("open", "high", "low", "close", "volume"):
        assert getattr(back, name).tolist() == getattr(bars, name).tolist()
    with pytest.raises(ValueError, match="binary COPY"):
        pgcopy.decode(b"not a copy stream")


def test_times_and_the_grid() -> None:
    assert parse_time("2024-01-01") == T0 == parse_time("2024-01-01T01:00:00+01:00")
    assert parse_time(str(T0)) == T0 == parse_time(T0)
    for bad, words in (("1704067200", "seconds"), ("soon", "ISO-8601"), (True, "ISO-8601")):
        with pytest.raises(ValueError, match=words):
            parse_time(bad)
    assert floor_ms(T0 + 3 * 86_400_000, "1w") == T0  # weeks open on Monday
    assert ceil_ms(T0 + 1, "1h") == T0 + 3_600_000 and ceil_ms(T0, "1h") == T0
    assert bar_count(T0, T0 + 86_400_000, "1h") == 24 and bar_count(T0 + 1, T0 + 2, "1m") == 0
