"""The engine's rules on hand-made bars: fills, fees, slippage, stops, shorts, sizing."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
import talib

from agents.risk.schemas import AtrSizing, FixedFractionalSizing, KellySizing, Limits
from agents.risk.sizing import size as risk_size
from common.errors import Unprocessable
from common.quant.bars import Bars
from common.quant.engine import EngineConfig, Sizing, run_backtest, run_sweep
from common.quant.strategies import Signals, get_strategy
from common.quant.sweep import signal_matrices
from tests.quant.data import garch_bars

DAY = 86_400_000


def make_bars(rows: Sequence[tuple[float, float, float, float]]) -> Bars:
    table = np.asarray(rows, dtype=np.float64)
    n = len(rows)
    return Bars(
        np.arange(n, dtype=np.int64) * DAY,
        table[:, 0].copy(),
        table[:, 1].copy(),
        table[:, 2].copy(),
        table[:, 3].copy(),
        np.ones(n),
    )


def flat(price: float) -> tuple[float, float, float, float]:
    return (price, price, price, price)


def events(n: int, *at: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.bool_)
    out[list(at)] = True
    return out


def signals(
    n: int,
    entries: Sequence[int] = (),
    exits: Sequence[int] = (),
    short_entries: Sequence[int] = (),
    short_exits: Sequence[int] = (),
) -> Signals:
    return Signals(
        events(n, *entries),
        events(n, *exits),
        events(n, *short_entries),
        events(n, *short_exits),
        np.zeros(n),
    )


def config(**changes: Any) -> EngineConfig:
    base: dict[str, Any] = {"initial_capital": 10_000.0, "fee_rate": 0.0, "fill": "close"}
    return EngineConfig(**(base | changes))


# --- fills and fees ------------------------------------------------------------------------
def test_all_in_spends_the_cash_with_the_fee_and_pays_it_again_on_exit() -> None:
    bars = make_bars([flat(100), flat(100), flat(110), flat(110)])
    result = run_backtest(bars, signals(4, [0], [2]), config(fee_rate=0.001))
    size = 10_000 / (100 * 1.001)
    [trade] = result.trades
    assert trade["size"] == pytest.approx(size, rel=1e-12)
    assert trade["entry_price"] == 100 and trade["exit_price"] == 110
    entry_fee, exit_fee = size * 100 * 0.001, size * 110 * 0.001
    assert trade["fees"] == pytest.approx(entry_fee + exit_fee, rel=1e-12)
    final = size * 110 * 0.999
    assert result.stats["final_equity"] == pytest.approx(final, rel=1e-12)
    assert trade["pnl"] == pytest.approx(final - 10_000, rel=1e-12)
    assert trade["return_pct"] == pytest.approx((final - 10_000) / (size * 100), rel=1e-12)
    assert result.stats["fees_paid"] == pytest.approx(entry_fee + exit_fee, rel=1e-12)
    # Marked at each close: the entry fee is gone at once.
    np.testing.assert_allclose(result.equity, [10_000 - entry_fee] * 2 + [final] * 2)
    assert result.stats["exposure"] == 0.5  # held at the closes of bars 0 and 1


def test_next_open_fills_at_the_following_open() -> None:
    bars = make_bars([flat(100), (101, 103, 99, 102), (105, 106, 104, 104), flat(104)])
    result = run_backtest(bars, signals(4, [0], [1]), config(fill="next_open"))
    [trade] = result.trades
    assert (trade["entry_bar"], trade["entry_price"]) == (1, 101)
    assert (trade["exit_bar"], trade["exit_price"]) == (2, 105)
    assert trade["entry_ts"] == DAY and trade["exit_ts"] == 2 * DAY
    assert result.equity[0] == 10_000
    assert result.stats["fill"] == "next_open"


def test_an_order_decided_on_the_last_bar_with_next_open_never_fills() -> None:
    result = run_backtest(make_bars([flat(100)] * 3), signals(3, [2]), config(fill="next_open"))
    assert result.trades == [] and result.stats["final_equity"] == 10_000


def test_a_position_open_at_the_end_is_marked_at_the_last_close_without_exit_fee() -> None:
    bars = make_bars([flat(100), flat(100), flat(120)])
    result = run_backtest(bars, signals(3, [0]), config(fee_rate=0.001))
    [trade] = result.trades
    size = 10_000 / 100.1
    assert trade["exit_reason"] == "end" and trade["exit_price"] == 120
    assert trade["fees"] == pytest.approx(size * 0.1, rel=1e-12)
    assert result.stats["final_equity"] == pytest.approx(10_000 + trade["pnl"], rel=1e-12)
    assert result.stats["trade_count"] == 1


def test_fixed_slippage_moves_buys_up_and_sells_down() -> None:
    bars = make_bars([flat(100), flat(100), flat(110)])
    result = run_backtest(bars, signals(3, [0], [2]), config(slippage_bps=10))
    [trade] = result.trades
    assert trade["entry_price"] == pytest.approx(100 * 1.001)
    assert trade["exit_price"] == pytest.approx(110 * 0.999)


def test_volatility_slippage_uses_the_atr_known_at_the_fill() -> None:
    bars = garch_bars(200, seed=5)
    cfg = config(fill="next_open", slippage_bps=5, slippage_vol_mult=0.5, slippage_vol_window=3)
    result = run_backtest(bars, signals(200, [50], [120]), cfg)
    [trade] = result.trades
    atr = talib.ATR(bars.high, bars.low, bars.close, timeperiod=3)
    buy_slip = 5e-4 + 0.5 * atr[50] / bars.close[50]
    sell_slip = 5e-4 + 0.5 * atr[120] / bars.close[120]
    assert trade["entry_price"] == pytest.approx(bars.open[51] * (1 + buy_slip), rel=1e-12)
    assert trade["exit_price"] == pytest.approx(bars.open[121] * (1 - sell_slip), rel=1e-12)


# --- stops ---------------------------------------------------------------------------------
STOP_CASES = {
    "stop-loss inside the bar fills at the level": (
        {"stop_loss_pct": 0.05},
        [(99, 101, 94, 96)],
        "stop_loss",
        95.0,
    ),
    "stop-loss gapped through fills at the open": (
        {"stop_loss_pct": 0.05},
        [(90, 92, 88, 91)],
        "stop_loss",
        90.0,
    ),
    "take-profit inside the bar fills at the level": (
        {"take_profit_pct": 0.1},
        [(101, 111, 99, 105)],
        "take_profit",
        110.0,
    ),
    "take-profit gapped through fills at the (better) open": (
        {"take_profit_pct": 0.1},
        [(115, 116, 112, 113)],
        "take_profit",
        115.0,
    ),
    "both touched in one bar: the stop (the worse)": (
        {"stop_loss_pct": 0.05, "take_profit_pct": 0.1},
        [(100, 111, 94, 100)],
        "stop_loss",
        95.0,
    ),
    "trailing stop follows the high, not on the bar it moved": (
        {"trailing_stop_pct": 0.05},
        [(100, 120, 100, 118), (117, 118, 113, 114)],
        "trailing_stop",
        114.0,
    ),
    "the stop-loss wins while it is above the trailing level": (
        {"stop_loss_pct": 0.05, "trailing_stop_pct": 0.1},
        [(100, 104, 94, 100)],
        "stop_loss",
        95.0,
    ),
    "the trailing level wins once above the stop-loss": (
        {"stop_loss_pct": 0.05, "trailing_stop_pct": 0.1},
        [(100, 120, 100, 118), (117, 118, 107, 110)],
        "trailing_stop",
        108.0,
    ),
}


@pytest.mark.parametrize("case", sorted(STOP_CASES))
def test_stops_trigger_on_the_bars_range(case: str) -> None:
    changes, rows, reason, price = STOP_CASES[case]
    bars = make_bars([flat(100), *rows, flat(100)])
    n = len(bars)
    result = run_backtest(bars, signals(n, [0]), config(**changes))
    trade = result.trades[0]
    assert (trade["exit_reason"], trade["exit_price"]) == (reason, pytest.approx(price))
    assert trade["exit_bar"] == len(rows)


def test_stops_of_a_short_mirror_a_long() -> None:
    bars = make_bars([flat(100), (101, 106, 99, 100), flat(100)])
    cfg = config(allow_short=True, stop_loss_pct=0.05)
    [trade] = run_backtest(bars, signals(3, short_entries=[0]), cfg).trades
    assert trade["side"] == "short"
    assert (trade["exit_reason"], trade["exit_price"]) == ("stop_loss", pytest.approx(105))
    assert trade["pnl"] == pytest.approx(trade["size"] * (100 - 105))


def test_stop_fills_pay_slippage_take_profits_do_not() -> None:
    bars = make_bars([flat(100), (99, 101, 94, 96), flat(100), (101, 111, 99, 105), flat(100)])
    cfg = config(stop_loss_pct=0.05, take_profit_pct=0.1, slippage_bps=10)
    stop, target = run_backtest(bars, signals(5, [0, 2]), cfg).trades
    assert stop["exit_price"] == pytest.approx(stop["entry_price"] * 0.95 * 0.999)
    assert target["exit_price"] == pytest.approx(target["entry_price"] * 1.1)


def test_a_position_opened_at_the_open_can_be_stopped_in_that_bar() -> None:
    bars = make_bars([flat(100), (100, 101, 94, 96), flat(96)])
    cfg = config(fill="next_open", stop_loss_pct=0.05)
    [trade] = run_backtest(bars, signals(3, [0]), cfg).trades
    assert (trade["entry_bar"], trade["exit_bar"], trade["exit_reason"]) == (1, 1, "stop_loss")
    assert trade["exit_price"] == pytest.approx(95)


# --- shorts --------------------------------------------------------------------------------
def test_a_short_gains_when_the_price_falls() -> None:
    bars = make_bars([flat(100), flat(95), flat(90), flat(90)])
    cfg = config(allow_short=True, fee_rate=0.001)
    result = run_backtest(bars, signals(4, short_entries=[0], short_exits=[2]), cfg)
    [trade] = result.trades
    size = 10_000 / 100.1
    fees = size * 100 * 0.001 + size * 90 * 0.001
    assert trade["side"] == "short" and trade["size"] == pytest.approx(size)
    assert trade["pnl"] == pytest.approx(size * 10 - fees) and trade["pnl"] > 0
    assert result.stats["final_equity"] == pytest.approx(10_000 + trade["pnl"])
    assert result.equity[1] == pytest.approx(10_000 - size * 0.1 + size * 5)


def test_a_short_entry_while_long_reverses_only_when_shorts_are_allowed() -> None:
    bars = make_bars([flat(100), flat(110), flat(100), flat(100)])
    both = signals(4, entries=[0], short_entries=[1])
    long_only = run_backtest(bars, both, config())
    assert [t["exit_reason"] for t in long_only.trades] == ["end"]
    reversed_ = run_backtest(bars, both, config(allow_short=True)).trades
    assert [(t["side"], t["entry_bar"], t["exit_bar"]) for t in reversed_] == [
        ("long", 0, 1),
        ("short", 1, 3),
    ]
    assert reversed_[1]["pnl"] == pytest.approx(reversed_[1]["size"] * 10)


def test_an_entry_and_its_exit_on_one_bar_cancel() -> None:
    bars = make_bars([flat(100)] * 3)
    assert run_backtest(bars, signals(3, [0], [0]), config()).trades == []


# --- sizing: the risk agent's formulas ------------------------------------------------------
LIMITS = Limits(max_order_notional=Decimal("1e15"), max_position_pct=Decimal(1))


def _decimal(x: float) -> Decimal:
    return Decimal(repr(float(x)))


def _entry(method: Sizing, **changes: Any) -> tuple[dict[str, Any], Bars]:
    bars = garch_bars(300, seed=9)
    result = run_backtest(
        bars, signals(300, [200]), config(fee_rate=0.001, sizing=method, **changes)
    )
    return result.trades[0], bars


def test_fixed_fractional_size_is_risks() -> None:
    trade, _ = _entry(Sizing("fixed_fractional", risk_fraction=0.02), stop_loss_pct=0.03)
    entry = trade["entry_price"]
    request = FixedFractionalSizing(
        method="fixed_fractional",
        equity=Decimal(10_000),
        entry_price=_decimal(entry),
        stop_price=_decimal(entry * (1 - 0.03)),
        risk_fraction=Decimal("0.02"),
    )
    expected = float(risk_size(request, LIMITS).amount)
    assert trade["size"] == pytest.approx(expected, abs=1e-8)


def test_kelly_size_is_risks() -> None:
    sizing = Sizing("kelly", win_rate=0.55, payoff_ratio=1.5, kelly_fraction=0.5)
    trade, _ = _entry(sizing)
    request = KellySizing(
        method="kelly",
        equity=Decimal(10_000),
        entry_price=_decimal(trade["entry_price"]),
        win_rate=Decimal("0.55"),
        payoff_ratio=Decimal("1.5"),
        kelly_fraction=Decimal("0.5"),
    )
    expected = float(risk_size(request, LIMITS).amount)
    assert trade["size"] == pytest.approx(expected, abs=1e-8)
    assert trade["size"] * trade["entry_price"] == pytest.approx(10_000 * 0.125)


def test_atr_size_is_risks() -> None:
    trade, bars = _entry(Sizing("atr", risk_fraction=0.01, atr_period=14, atr_multiple=50.0))
    atr = talib.ATR(bars.high, bars.low, bars.close, timeperiod=14)[200]
    request = AtrSizing(
        method="atr",
        equity=Decimal(10_000),
        entry_price=_decimal(trade["entry_price"]),
        atr=_decimal(atr),
        risk_fraction=Decimal("0.01"),
        atr_multiple=Decimal(50),
    )
    expected = float(risk_size(request, LIMITS).amount)
    assert trade["size"] == pytest.approx(expected, abs=1e-8)
    assert trade["size"] * trade["entry_price"] < 5_000  # the formula, not the cap


def test_no_method_buys_more_than_the_cash_allows() -> None:
    trade, _ = _entry(Sizing("fixed_fractional", risk_fraction=1.0), stop_loss_pct=0.01)
    assert trade["size"] == pytest.approx(10_000 / (trade["entry_price"] * 1.001), rel=1e-12)


def test_kelly_without_an_edge_does_not_trade() -> None:
    sizing = Sizing("kelly", win_rate=0.4, payoff_ratio=1.0)
    bars = make_bars([flat(100)] * 3)
    assert run_backtest(bars, signals(3, [0]), config(sizing=sizing)).trades == []


def test_configuration_mistakes_name_the_field() -> None:
    with pytest.raises(Unprocessable, match="stop_loss_pct"):
        EngineConfig(sizing=Sizing("fixed_fractional"))
    with pytest.raises(Unprocessable, match="fill"):
        EngineConfig(fill="tomorrow")  # type: ignore[arg-type]
    with pytest.raises(Unprocessable, match=r"sizing\.win_rate"):
        Sizing("kelly")
    with pytest.raises(Unprocessable, match="fee_rate"):
        EngineConfig(fee_rate=-0.1)


# --- no look-ahead, and sweeps are the same engine -----------------------------------------
@pytest.mark.parametrize("fill", ["next_open", "close"])
def test_bars_after_t_never_change_what_happened_before_t(fill: str) -> None:
    bars = garch_bars(3_000, seed=21)
    cut = 2_000
    rng = np.random.default_rng(1)
    scale = np.ones(len(bars))
    scale[cut:] = np.exp(np.cumsum(rng.normal(0, 0.01, len(bars) - cut)))
    changed = Bars(
        bars.ts, *(x * scale for x in (bars.open, bars.high, bars.low, bars.close)), bars.volume
    )
    strategy = get_strategy("sma_cross")
    cfg = EngineConfig(
        fill=fill,  # type: ignore[arg-type]
        allow_short=True,
        stop_loss_pct=0.004,
        trailing_stop_pct=0.006,
        slippage_bps=2,
        slippage_vol_mult=0.2,
        sizing=Sizing("atr", risk_fraction=0.02),
    )
    params = {"fast": 5, "slow": 20}
    before = run_backtest(bars, strategy.generate(bars, params), cfg)
    after = run_backtest(changed, strategy.generate(changed, params), cfg)
    np.testing.assert_array_equal(before.equity[:cut], after.equity[:cut])
    done = before.trade_records[before.trade_records["exit_bar"] < cut]
    assert len(done) > 20
    np.testing.assert_array_equal(done, after.trade_records[: len(done)])
    entry_fields = ["entry_bar", "side", "size", "entry_price"]
    opened = before.trade_records[before.trade_records["entry_bar"] < cut][entry_fields]
    np.testing.assert_array_equal(opened, after.trade_records[: len(opened)][entry_fields])


@pytest.mark.parametrize("name", ["sma_cross", "ema_cross"])
def test_sweep_signal_matrices_are_the_strategys_events(name: str) -> None:
    bars = garch_bars(2_000, seed=2)
    strategy = get_strategy(name)
    grid = [strategy.validate({"fast": f, "slow": s}) for f in (3, 5, 8) for s in (13, 21)]
    entries, exits, short_entries, short_exits = signal_matrices(bars, strategy, grid)
    for row, params in enumerate(grid):
        signals = strategy.generate(bars, params)
        np.testing.assert_array_equal(entries[row], signals.entries)
        np.testing.assert_array_equal(exits[row], signals.exits)
        np.testing.assert_array_equal(short_entries[row], signals.short_entries)
        np.testing.assert_array_equal(short_exits[row], signals.short_exits)


@pytest.mark.parametrize(
    ("name", "grid"),
    [
        ("sma_cross", [{"fast": f, "slow": s} for f in (4, 9) for s in (20, 40)]),
        ("rsi_mean_reversion", [{"period": p} for p in (7, 14)]),
    ],
)
def test_a_sweep_gives_each_combinations_run_backtest_stats(
    name: str, grid: list[dict[str, Any]]
) -> None:
    bars = garch_bars(5_000, seed=4)
    strategy = get_strategy(name)
    cfg = EngineConfig(allow_short=True, stop_loss_pct=0.01, take_profit_pct=0.02)
    rows = run_sweep(bars, name, grid, cfg)
    assert [row["params"] for row in rows] == [strategy.validate(p) for p in grid]
    for row, params in zip(rows, grid, strict=True):
        single = run_backtest(bars, strategy.generate(bars, strategy.validate(params)), cfg)
        assert {k: v for k, v in row.items() if k != "params"} == single.stats
