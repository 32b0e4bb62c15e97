"""The backtest engine: a strategy's signal arrays in, trades, equity and stats out.

    config = EngineConfig(fee_rate=0.001, stop_loss_pct=0.02, sizing=Sizing("all_in"))
    result = run_backtest(bars, get_strategy("sma_cross").generate(bars, params), config)
    result.stats["sharpe"], result.trades, result.equity
    rows = run_sweep(bars, "sma_cross", [{"fast": 5, "slow": 20}, ...], config)

The signal stage is vectorised (the strategies); the path-dependent part is one
numba-compiled loop (`kernel`), shared by single runs and sweeps. `warm_up()` compiles
it (cached on disk) so a service pays the compile cost at start-up, not on a request.

How a bar is simulated, in order:

1. Orders decided at the previous close fill at this bar's open (`fill="next_open"`).
2. Stops of the open position are checked against this bar's range (see below),
   the bar it was opened in included when it was opened at the open.
3. The strategy's events at this close decide the orders: an exit closes; an entry
   opens when flat; an entry of the other side (shorts need `allow_short`) closes the
   position and opens the other. An entry and its own exit on one bar cancel, and so do
   a long and a short entry. With `fill="close"` they fill at this close, otherwise at
   the next open; an order decided on the last bar with `next_open` never fills.
4. Equity is marked at the close: cash + position x close.

Prices, fees and slippage:

- A buy fills at price x (1 + s), a sell at price x (1 - s), where the slippage fraction
  s = slippage_bps / 10,000 + slippage_vol_mult x ATR_w / close, ATR_w being TA-Lib's
  (Wilder) average true range over `slippage_vol_window` bars. Only what is known at the
  fill counts: a fill at a close uses bar t's ATR and close, a fill at an open or inside
  a bar uses bar t-1's (the first bar, and the ATR's warm-up, get the fixed part only).
- The fee is fee_rate x traded value (size x fill price), on entry and on exit.
- "All-in with a 0.1% fee" means: the whole cash buys size = cash / (fill x 1.001), so
  that size x fill plus the fee spends the cash exactly; the exit pays 0.1% of the exit
  value. This is backtesting.py's `commission=0.001` (charged on entry and exit, on the
  traded value) and vectorbt's `size=np.inf, fees=0.001`, and they agree to 1e-6.
- Sizes are fractional units (crypto). Every method is capped at that all-in size:
  no leverage; a short's notional plus fee is also capped at the cash.

Stops, as fractions of the entry fill price (0.02 = 2%):

- stop-loss at entry x (1 - sl) for a long (x (1 + sl) for a short), take-profit at
  entry x (1 + tp), trailing stop at the best price since entry x (1 - trail). The best
  price is the entry fill, then each bar's high (low for a short) after that bar's check,
  so a trailing stop never moves on the bar it is hit in. When the trailing level is
  above the stop-loss it is the stop (exit_reason "trailing_stop").
- A bar that opens beyond a level fills at the open (the gap), whichever level it is.
  Otherwise a level inside [low, high] fills at the level; if both the stop and the
  take-profit are inside, the stop is assumed hit first (the worse outcome).
- Stop and trailing exits are market orders (slippage applies); a take-profit is a
  resting limit order (no slippage, or better: the gapped open). Fees apply to both.

Sizing (`Sizing`; the risk agent's formulas, agents/risk/sizing.py), with equity = the
cash when flat and price = the entry fill price:

- all_in: equity / (price x (1 + fee))
- fixed_fractional: equity x risk_fraction / (price x stop_loss_pct) (needs a stop-loss)
- kelly: equity x kelly_fraction x max(0, W - (1 - W) / R) / price
- atr: equity x risk_fraction / (ATR_p x atr_multiple), ATR_p at the signal bar; no
  entry during the ATR's warm-up

At the end a position still open is marked at the last close without an exit fee, as
both peers' final equity does; it is listed with exit_reason "end" and counted in the
trade stats. Statistics are defined in `metrics`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import talib

from common.errors import Unprocessable
from common.quant import kernel as k
from common.quant.bars import Bars, Floats, Ints, timeframe_ms
from common.quant.metrics import Stats, infer_bar_ms, summarize
from common.quant.strategies import Context, Signals, Strategy, get_strategy
from common.quant.sweep import signal_matrices

__all__ = [
    "BacktestResult",
    "EngineConfig",
    "Sizing",
    "run_backtest",
    "run_sweep",
    "warm_up",
]

SizingMethod = Literal["all_in", "fixed_fractional", "kelly", "atr"]
Fill = Literal["next_open", "close"]
_METHODS: dict[str, int] = {
    "all_in": k.ALL_IN,
    "fixed_fractional": k.FIXED_FRACTIONAL,
    "kelly": k.KELLY,
    "atr": k.ATR,
}
EXIT_REASONS = ("signal", "stop_loss", "take_profit", "trailing_stop", "end")
TRADE_DTYPE = np.dtype(
    [
        ("entry_bar", np.int64),
        ("exit_bar", np.int64),
        ("entry_ts", np.int64),
        ("exit_ts", np.int64),
        ("side", np.int8),
        ("size", np.float64),
        ("entry_price", np.float64),
        ("exit_price", np.float64),
        ("fees", np.float64),
        ("pnl", np.float64),
        ("return_pct", np.float64),
        ("exit_reason", np.int8),
    ]
)
# Bytes of signal matrices a sweep builds at once (combinations are run in chunks).
SWEEP_CHUNK_BYTES = 64 << 20
# numba's workqueue threading layer must not be entered from two threads at once.
_PARALLEL_LOCK = threading.Lock()


def _fraction(value: float | None, field: str, *, upper: float = 1.0) -> None:
    if value is not None and not (math.isfinite(value) and 0 < value <= upper):
        raise Unprocessable(f"{field}: must be within (0, {upper:g}], got {value!r}", field=field)


@dataclass(frozen=True, slots=True)
class Sizing:
    """How much an entry buys or sells; see the module docstring for the formulas."""

    method: SizingMethod = "all_in"
    risk_fraction: float = 0.01
    win_rate: float | None = None
    payoff_ratio: float | None = None
    kelly_fraction: float = 0.5
    atr_period: int = 14
    atr_multiple: float = 2.0

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise Unprocessable(
                f"sizing.method: {self.method!r} is not one of {', '.join(_METHODS)}",
                field="sizing.method",
            )
        _fraction(self.risk_fraction, "sizing.risk_fraction")
        _fraction(self.kelly_fraction, "sizing.kelly_fraction")
        if self.method == "kelly":
            if self.win_rate is None or not 0 <= self.win_rate <= 1:
                raise Unprocessable(
                    "sizing.win_rate: kelly needs a win rate within [0, 1]",
                    field="sizing.win_rate",
                )
            if self.payoff_ratio is None or not self.payoff_ratio > 0:
                raise Unprocessable(
                    "sizing.payoff_ratio: kelly needs a payoff ratio above 0",
                    field="sizing.payoff_ratio",
                )
        if not 1 <= self.atr_period <= 1000:
            raise Unprocessable(
                "sizing.atr_period: must be within 1..1000", field="sizing.atr_period"
            )
        _fraction(self.atr_multiple, "sizing.atr_multiple", upper=100.0)

    def kelly_allocation(self) -> float:
        """kelly_fraction x max(0, W - (1 - W) / R): the share of equity Kelly allocates."""
        if self.win_rate is None or self.payoff_ratio is None:
            return 0.0
        edge = self.win_rate - (1.0 - self.win_rate) / self.payoff_ratio
        return self.kelly_fraction * max(0.0, edge)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Capital, costs, fill convention, stops and sizing of a backtest."""

    initial_capital: float = 10_000.0
    fee_rate: float = 0.001
    slippage_bps: float = 0.0
    slippage_vol_mult: float = 0.0
    slippage_vol_window: int = 14
    fill: Fill = "next_open"
    allow_short: bool = False
    stop_loss_pct: float | None = None
    take_profit_pct: float | None = None
    trailing_stop_pct: float | None = None
    sizing: Sizing = field(default_factory=Sizing)
    timeframe: str | None = None  # for annualisation; inferred from the bars' ts if None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial_capital) and self.initial_capital > 0):
            raise Unprocessable("initial_capital: must be above 0", field="initial_capital")
        if not (math.isfinite(self.fee_rate) and 0 <= self.fee_rate < 0.1):
            raise Unprocessable("fee_rate: must be within [0, 0.1)", field="fee_rate")
        if not (math.isfinite(self.slippage_bps) and 0 <= self.slippage_bps < 1000):
            raise Unprocessable("slippage_bps: must be within [0, 1000)", field="slippage_bps")
        if not (math.isfinite(self.slippage_vol_mult) and 0 <= self.slippage_vol_mult <= 10):
            raise Unprocessable(
                "slippage_vol_mult: must be within [0, 10]", field="slippage_vol_mult"
            )
        if not 1 <= self.slippage_vol_window <= 1000:
            raise Unprocessable(
                "slippage_vol_window: must be within 1..1000", field="slippage_vol_window"
            )
        if self.fill not in ("next_open", "close"):
            raise Unprocessable(f"fill: {self.fill!r} is not 'next_open' or 'close'", field="fill")
        _fraction(self.stop_loss_pct, "stop_loss_pct", upper=0.99)
        _fraction(self.take_profit_pct, "take_profit_pct", upper=100.0)
        _fraction(self.trailing_stop_pct, "trailing_stop_pct", upper=0.99)
        if self.sizing.method == "fixed_fractional" and self.stop_loss_pct is None:
            raise Unprocessable(
                "stop_loss_pct: fixed_fractional sizing risks a share of equity down to the "
                "stop; set a stop-loss",
                field="stop_loss_pct",
            )
        if self.timeframe is not None:
            timeframe_ms(self.timeframe, "timeframe")

    def vector(self) -> Floats:
        """The kernel's `cfg` vector (NaN for an absent stop)."""
        cfg = np.full(k.N_CFG, np.nan)
        cfg[k.C_INITIAL] = self.initial_capital
        cfg[k.C_FEE] = self.fee_rate
        cfg[k.C_FILL_CLOSE] = float(self.fill == "close")
        cfg[k.C_ALLOW_SHORT] = float(self.allow_short)
        for index, value in (
            (k.C_SL, self.stop_loss_pct),
            (k.C_TP, self.take_profit_pct),
            (k.C_TRAIL, self.trailing_stop_pct),
        ):
            if value is not None:
                cfg[index] = value
        cfg[k.C_METHOD] = _METHODS[self.sizing.method]
        cfg[k.C_RISK] = self.sizing.risk_fraction
        cfg[k.C_KELLY] = self.sizing.kelly_allocation()
        cfg[k.C_ATR_MULT] = self.sizing.atr_multiple
        return cfg


@dataclass
class BacktestResult:
    """Stats, the equity curve (one value per bar, marked at the close) and the trades.

    `trade_records` is a structured array (TRADE_DTYPE); `trades` the same as dicts,
    with side "long"/"short" and exit_reason one of EXIT_REASONS. `return_pct` is the
    trade's PnL (fees included) over its entry notional, as a fraction."""

    stats: Stats
    equity: Floats
    trade_records: np.ndarray

    @cached_property
    def trades(self) -> list[dict[str, Any]]:
        rows = []
        for record in self.trade_records.tolist():
            row = dict(zip(TRADE_DTYPE.names or (), record, strict=True))
            row["side"] = "long" if row["side"] > 0 else "short"
            row["exit_reason"] = EXIT_REASONS[row["exit_reason"]]
            rows.append(row)
        return rows


@dataclass(frozen=True, slots=True)
class _Prepared:
    open: Floats
    high: Floats
    low: Floats
    close: Floats
    slip_open: Floats
    slip_close: Floats
    atr: Floats
    cfg: Floats
    bar_ms: int


def _f64(values: Floats) -> Floats:
    return np.ascontiguousarray(values, dtype=np.float64)


def _slippage(bars: Bars, config: EngineConfig) -> tuple[Floats, Floats]:
    fixed = config.slippage_bps / 10_000
    close_slip = np.full(len(bars), fixed)
    if config.slippage_vol_mult > 0:
        atr = talib.ATR(
            _f64(bars.high), _f64(bars.low), _f64(bars.close),
            timeperiod=config.slippage_vol_window,
        )  # fmt: skip
        close_slip += np.nan_to_num(config.slippage_vol_mult * np.asarray(atr) / bars.close)
    open_slip = np.empty_like(close_slip)
    open_slip[0] = fixed
    open_slip[1:] = close_slip[:-1]
    return open_slip, close_slip


def _prepare(bars: Bars, config: EngineConfig) -> _Prepared:
    if len(bars) == 0:
        raise Unprocessable("bars: there are no bars to backtest", field="bars")
    o, h, lo, c = (_f64(x) for x in (bars.open, bars.high, bars.low, bars.close))
    if config.sizing.method == "atr":
        atr = _f64(talib.ATR(h, lo, c, timeperiod=config.sizing.atr_period))
    else:
        atr = np.zeros(len(bars))
    slip_open, slip_close = _slippage(bars, config)
    bar_ms = timeframe_ms(config.timeframe) if config.timeframe else infer_bar_ms(bars.ts)
    return _Prepared(o, h, lo, c, slip_open, slip_close, atr, config.vector(), bar_ms)


def _bools(values: np.ndarray, n: int, name: str) -> np.ndarray:
    array = np.ascontiguousarray(values, dtype=np.bool_)
    if array.shape != (n,):
        raise ValueError(f"signals.{name} has shape {array.shape}, the bars {n}")
    return array


def _trade_records(rows: Floats, ts: Ints) -> np.ndarray:
    records = np.empty(len(rows), dtype=TRADE_DTYPE)
    entry_bar = rows[:, k.T_ENTRY_BAR].astype(np.int64)
    exit_bar = rows[:, k.T_EXIT_BAR].astype(np.int64)
    records["entry_bar"], records["exit_bar"] = entry_bar, exit_bar
    records["entry_ts"], records["exit_ts"] = ts[entry_bar], ts[exit_bar]
    records["side"] = rows[:, k.T_SIDE]
    for name, col in (
        ("size", k.T_SIZE),
        ("entry_price", k.T_ENTRY_PRICE),
        ("exit_price", k.T_EXIT_PRICE),
        ("fees", k.T_FEES),
        ("pnl", k.T_PNL),
    ):
        records[name] = rows[:, col]
    records["return_pct"] = rows[:, k.T_PNL] / (rows[:, k.T_SIZE] * rows[:, k.T_ENTRY_PRICE])
    records["exit_reason"] = rows[:, k.T_REASON]
    return records


def run_backtest(
    bars: Bars, signals: Signals, config: EngineConfig | None = None
) -> BacktestResult:
    """Simulate `signals` on `bars` under `config` (rules in the module docstring)."""
    config = config or EngineConfig()
    prep = _prepare(bars, config)
    n = len(bars)
    entries = _bools(signals.entries, n, "entries")
    exits = _bools(signals.exits, n, "exits")
    short_entries = _bools(signals.short_entries, n, "short_entries")
    short_exits = _bools(signals.short_exits, n, "short_exits")
    # Every trade starts with an entry event: that bounds the trade list.
    capacity = int(np.count_nonzero(entries)) + 1
    if config.allow_short:
        capacity += int(np.count_nonzero(short_entries))
    trades = np.empty((capacity, k.N_TRADE_COLS))
    equity = np.empty(n)
    acc = np.zeros(k.N_ACC)
    k.simulate(
        prep.open, prep.high, prep.low, prep.close,
        entries, exits, short_entries, short_exits,
        prep.slip_open, prep.slip_close, prep.atr, prep.cfg,
        equity, trades, acc,
    )  # fmt: skip
    summary = np.empty(k.N_SUMMARY)
    k.equity_summary(equity, config.initial_capital, summary)
    stats = _stats(acc, summary, float(equity[-1]), bars, prep, config)
    records = _trade_records(trades[: int(acc[k.A_TRADES])], bars.ts)
    return BacktestResult(stats, equity, records)


def _stats(
    acc: Floats, summary: Floats, final: float, bars: Bars, prep: _Prepared, config: EngineConfig
) -> Stats:
    stats = summarize(
        acc, summary, final, config.initial_capital, bars.ts, prep.bar_ms,
        float(prep.close[0]), float(prep.close[-1]),
    )  # fmt: skip
    stats["fill"] = config.fill
    return stats


def run_sweep(
    bars: Bars,
    strategy: Strategy | str,
    params: Sequence[Mapping[str, Any]],
    config: EngineConfig | None = None,
    context: Context | None = None,
) -> list[dict[str, Any]]:
    """The stats of `strategy` for every parameter set in `params`, in order, each with
    its validated `params`: the same engine as `run_backtest`, all combinations in one
    compiled, parallel call (indicators computed once per distinct period where the
    strategy allows; see `sweep`)."""
    config = config or EngineConfig()
    if isinstance(strategy, str):
        strategy = get_strategy(strategy)
    checked = [strategy.validate(p, field=f"params[{i}]") for i, p in enumerate(params)]
    prep = _prepare(bars, config)
    width = k.N_ACC + k.N_SUMMARY + 1
    out = np.empty((len(checked), width))
    chunk = max(1, SWEEP_CHUNK_BYTES // (4 * len(bars)))
    for start in range(0, len(checked), chunk):
        part = checked[start : start + chunk]
        entries, exits, short_entries, short_exits = signal_matrices(bars, strategy, part, context)
        with _PARALLEL_LOCK:
            k.sweep(
                prep.open, prep.high, prep.low, prep.close,
                entries, exits, short_entries, short_exits,
                prep.slip_open, prep.slip_close, prep.atr, prep.cfg,
                out[start : start + len(part)],
            )  # fmt: skip
    rows = []
    for combo, row in zip(checked, out, strict=True):
        summary = row[k.N_ACC : k.N_ACC + k.N_SUMMARY]
        stats = _stats(row[: k.N_ACC], summary, float(row[-1]), bars, prep, config)
        rows.append({**stats, "params": combo})
    return rows


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel, so requests do not wait."""
    n = 40
    ts = np.arange(n, dtype=np.int64) * 60_000
    close = 100.0 + np.sin(np.arange(n) / 3.0)
    bars = Bars(ts, close, close + 1.0, close - 1.0, close, np.ones(n))
    config = EngineConfig(stop_loss_pct=0.05)
    run_backtest(bars, get_strategy("sma_cross").generate(bars, {"fast": 3, "slow": 8}), config)
    run_sweep(bars, "sma_cross", [{"fast": 3, "slow": 8}, {"fast": 4, "slow": 9}], config)
