"""Backtest-run helpers without a fleet: the stored equity format and downsampling."""

from __future__ import annotations

import numpy as np

from agents.backtest.runs import equity


def test_equity_round_trips_bit_for_bit_with_gaps_in_the_bars() -> None:
    rng = np.random.default_rng(7)
    steps = rng.choice([60_000, 60_000, 60_000, 180_000, 3_600_000], size=9_999)
    ts = np.r_[1_704_067_200_000, 1_704_067_200_000 + np.cumsum(steps)].astype(np.int64)
    values = 10_000 * np.exp(np.cumsum(rng.normal(0, 1e-3, len(ts))))
    first, ts_blob, values_blob = equity.encode(ts, values)
    curve = equity.decode(len(ts), first, ts_blob, values_blob)
    assert np.array_equal(curve.ts, ts) and np.array_equal(curve.equity, values)
    assert len(values_blob) < values.nbytes


def test_downsampling_keeps_ends_extremes_and_the_deepest_drawdown() -> None:
    rng = np.random.default_rng(3)
    values = 10_000 * np.exp(np.cumsum(rng.normal(0, 2e-3, 100_003)))
    dd = equity.drawdown(values, 10_000.0)
    keep = equity.downsample(len(values), values, dd, 500)
    assert len(keep) <= 500 and keep[0] == 0 and keep[-1] == len(values) - 1
    assert np.all(np.diff(keep) > 0)
    assert values[keep].min() == values.min() and values[keep].max() == values.max()
    assert dd[keep].max() == dd.max()
    assert np.array_equal(equity.downsample(10, values[:10], dd[:10], 500), np.arange(10))
    assert len(equity.downsample(len(values), values, dd, 0)) == len(values)


def test_drawdown_starts_from_the_initial_capital() -> None:
    dd = equity.drawdown(np.array([9_000.0, 11_000.0, 9_900.0]), 10_000.0)
    assert np.allclose(dd, [0.1, 0.0, 0.1])
