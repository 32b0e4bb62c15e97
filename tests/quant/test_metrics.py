"""Statistics against values computed by hand on tiny series."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.quant.bars import Bars
from common.quant.engine import EngineConfig, run_backtest
from common.quant.metrics import equity_stats, infer_bar_ms, periods_per_year
from common.quant.strategies import Signals

DAY = 86_400_000


def test_periods_per_year_count_every_day() -> None:
    assert periods_per_year(DAY) == 365
    assert periods_per_year(60_000) == 525_600
    assert periods_per_year(3_600_000) == 8_760


def test_bar_length_is_the_most_common_step() -> None:
    ts = np.array([0, 1, 2, 3, 10, 11], dtype=np.int64) * DAY
    assert infer_bar_ms(ts) == DAY


def test_equity_curve_stats_by_hand() -> None:
    equity = np.array([11_000.0, 9_900.0, 10_890.0, 12_000.0])
    ts = np.arange(4, dtype=np.int64) * DAY
    stats = equity_stats(equity, 10_000.0, ts, DAY)
    returns = [0.1, -0.1, 0.1, 12_000 / 10_890 - 1]
    mean = sum(returns) / 4
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / 3)
    downside = math.sqrt(0.01 / 4)
    cagr = 1.2 ** (365 / 4) - 1
    assert stats["total_return"] == pytest.approx(0.2)
    assert stats["cagr"] == pytest.approx(cagr)
    assert stats["sharpe"] == pytest.approx(mean / std * math.sqrt(365))
    assert stats["sortino"] == pytest.approx(mean / downside * math.sqrt(365))
    assert stats["max_drawdown"] == pytest.approx(0.1)
    assert stats["calmar"] == pytest.approx(cagr / 0.1)
    # Bars 1 and 2 are below the 11,000 peak: two bars, two days of wall time.
    assert stats["max_drawdown_duration_bars"] == 2
    assert stats["max_drawdown_duration_seconds"] == 2 * 86_400
    assert stats["max_drawdown_duration_days"] == 2


def test_a_drawdown_from_the_starting_capital_counts() -> None:
    equity = np.array([9_000.0, 9_500.0, 8_000.0, 10_500.0, 10_400.0])
    stats = equity_stats(equity, 10_000.0, np.arange(5, dtype=np.int64) * DAY, DAY)
    assert stats["max_drawdown"] == pytest.approx(0.2)
    assert stats["max_drawdown_duration_bars"] == 3


def test_a_flat_curve_has_no_ratios() -> None:
    stats = equity_stats(np.full(3, 100.0), 100.0, np.arange(3, dtype=np.int64) * DAY, DAY)
    assert stats["sharpe"] is None and stats["sortino"] is None and stats["calmar"] is None
    assert stats["max_drawdown"] == 0 and stats["max_drawdown_duration_bars"] == 0


def test_trade_stats_by_hand() -> None:
    closes = [100, 110, 110, 99, 99, 118.8, 118.8, 118.8]
    n = len(closes)
    bars = Bars(
        np.arange(n, dtype=np.int64) * DAY, *(np.array(closes, dtype=np.float64),) * 4, np.ones(n)
    )
    entries = np.zeros(n, dtype=np.bool_)
    exits = np.zeros(n, dtype=np.bool_)
    entries[[0, 2, 4]] = True
    exits[[1, 3, 5]] = True
    signals = Signals(entries, exits, exits, entries, np.zeros(n))
    result = run_backtest(bars, signals, EngineConfig(fee_rate=0.0, fill="close"))
    # +10% on 10,000, -10% on 11,000, +20% on 9,900.
    assert [round(t["pnl"], 6) for t in result.trades] == [1_000, -1_100, 1_980]
    stats = result.stats
    assert stats["trade_count"] == 3
    assert stats["win_rate"] == pytest.approx(2 / 3)
    assert stats["profit_factor"] == pytest.approx(2_980 / 1_100)
    assert stats["expectancy"] == pytest.approx(1_880 / 3)
    assert stats["exposure"] == pytest.approx(3 / 8)  # held at the closes of bars 0, 2, 4
    assert stats["final_equity"] == pytest.approx(11_880)
    assert stats["buy_and_hold_return"] == pytest.approx(0.188)
    assert stats["fees_paid"] == 0
