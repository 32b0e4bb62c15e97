"""The backtest engine's compiled event loop (numba), one code path for single runs and sweeps.

Everything path-dependent happens here, bar by bar: pending orders fill at the open,
stops are checked against the bar's range, signals are read at the close, and equity
is marked at the close. The caller (`engine`) prepares plain arrays: prices, the four
signal arrays, per-bar slippage fractions, the ATR for sizing and a `cfg` vector (see
the `C_*` indices). Rules and formulas are documented on `engine.run_backtest`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# cfg vector
C_INITIAL, C_FEE, C_FILL_CLOSE, C_ALLOW_SHORT, C_SL, C_TP, C_TRAIL = 0, 1, 2, 3, 4, 5, 6
C_METHOD, C_RISK, C_KELLY, C_ATR_MULT = 7, 8, 9, 10
N_CFG = 11

# sizing methods
ALL_IN, FIXED_FRACTIONAL, KELLY, ATR = 0, 1, 2, 3

# exit reasons
SIGNAL, STOP_LOSS, TAKE_PROFIT, TRAILING_STOP, END = 0, 1, 2, 3, 4

# trade record columns
T_ENTRY_BAR, T_EXIT_BAR, T_SIDE, T_SIZE, T_ENTRY_PRICE, T_EXIT_PRICE = 0, 1, 2, 3, 4, 5
T_FEES, T_PNL, T_REASON = 6, 7, 8
N_TRADE_COLS = 9

# accumulators
A_TRADES, A_WINS, A_GROSS_PROFIT, A_GROSS_LOSS, A_FEES, A_EXPOSED = 0, 1, 2, 3, 4, 5
N_ACC = 6

# state
S_CASH, S_POS, S_ENTRY_PRICE, S_ENTRY_FEE, S_ENTRY_BAR = 0, 1, 2, 3, 4
S_SL, S_TP, S_EXTREME = 5, 6, 7
N_STATE = 8

# order flags decided at a close
CLOSE_LONG, CLOSE_SHORT, OPEN_LONG, OPEN_SHORT = 1, 2, 4, 8


@njit(cache=True)
def position_size(
    method: int, equity: float, price: float, fee: float, cfg: np.ndarray, atr: float
) -> float:
    """Units to open at fill `price` with `equity` in cash, capped so that the notional
    plus the entry fee never exceeds the cash (no leverage)."""
    cap = equity / (price * (1.0 + fee))
    if method == ALL_IN:
        return cap
    if method == FIXED_FRACTIONAL:
        amount = equity * cfg[C_RISK] / (price * cfg[C_SL])
    elif method == KELLY:
        amount = equity * cfg[C_KELLY] / price
    else:
        if not atr > 0.0:  # NaN during the ATR's warm-up: no basis for a size
            return 0.0
        amount = equity * cfg[C_RISK] / (atr * cfg[C_ATR_MULT])
    return min(amount, cap)


@njit(cache=True)
def _record(
    st: np.ndarray,
    acc: np.ndarray,
    trades: np.ndarray,
    exit_bar: int,
    exit_price: float,
    exit_fee: float,
    reason: int,
) -> None:
    pos = st[S_POS]
    size = abs(pos)
    side = 1.0 if pos > 0 else -1.0
    fees = st[S_ENTRY_FEE] + exit_fee
    pnl = side * size * (exit_price - st[S_ENTRY_PRICE]) - fees
    k = int(acc[A_TRADES])
    if trades.shape[0] > k:
        row = trades[k]
        row[T_ENTRY_BAR] = st[S_ENTRY_BAR]
        row[T_EXIT_BAR] = exit_bar
        row[T_SIDE] = side
        row[T_SIZE] = size
        row[T_ENTRY_PRICE] = st[S_ENTRY_PRICE]
        row[T_EXIT_PRICE] = exit_price
        row[T_FEES] = fees
        row[T_PNL] = pnl
        row[T_REASON] = reason
    acc[A_TRADES] += 1.0
    if pnl > 0.0:
        acc[A_WINS] += 1.0
        acc[A_GROSS_PROFIT] += pnl
    else:
        acc[A_GROSS_LOSS] -= pnl
    acc[A_FEES] += exit_fee


@njit(cache=True)
def _close(
    st: np.ndarray,
    acc: np.ndarray,
    trades: np.ndarray,
    cfg: np.ndarray,
    bar: int,
    price: float,
    slip: float,
    reason: int,
) -> None:
    """Close the whole position at `price` moved against us by `slip`, paying the fee."""
    pos = st[S_POS]
    fee_rate = cfg[C_FEE]
    if pos > 0:
        fill = price * (1.0 - slip)
        value = pos * fill
        fee = value * fee_rate
        st[S_CASH] += value - fee
    else:
        fill = price * (1.0 + slip)
        value = -pos * fill
        fee = value * fee_rate
        st[S_CASH] -= value + fee
    _record(st, acc, trades, bar, fill, fee, reason)
    st[S_POS] = 0.0


@njit(cache=True)
def _open(
    st: np.ndarray,
    acc: np.ndarray,
    cfg: np.ndarray,
    bar: int,
    side: float,
    price: float,
    slip: float,
    atr: float,
) -> None:
    """Open a position on `side` (+1 long, -1 short) sized from the cash in hand."""
    fee_rate = cfg[C_FEE]
    fill = price * (1.0 + side * slip)
    cash = st[S_CASH]
    if not cash > 0.0:
        return
    size = position_size(int(cfg[C_METHOD]), cash, fill, fee_rate, cfg, atr)
    if not size > 0.0:
        return
    value = size * fill
    fee = value * fee_rate
    st[S_CASH] = cash - side * value - fee
    st[S_POS] = side * size
    st[S_ENTRY_PRICE] = fill
    st[S_ENTRY_FEE] = fee
    st[S_ENTRY_BAR] = bar
    st[S_EXTREME] = fill
    st[S_SL] = fill * (1.0 - side * cfg[C_SL])  # NaN when there is no stop
    st[S_TP] = fill * (1.0 + side * cfg[C_TP])
    acc[A_FEES] += fee


@njit(cache=True)
def _execute(
    flags: int,
    st: np.ndarray,
    acc: np.ndarray,
    trades: np.ndarray,
    cfg: np.ndarray,
    bar: int,
    price: float,
    slip: float,
    atr: float,
) -> None:
    if flags & CLOSE_LONG and st[S_POS] > 0:
        _close(st, acc, trades, cfg, bar, price, slip, SIGNAL)
    if flags & CLOSE_SHORT and st[S_POS] < 0:
        _close(st, acc, trades, cfg, bar, price, slip, SIGNAL)
    if st[S_POS] == 0.0:
        if flags & OPEN_LONG:
            _open(st, acc, cfg, bar, 1.0, price, slip, atr)
        elif flags & OPEN_SHORT:
            _open(st, acc, cfg, bar, -1.0, price, slip, atr)


@njit(cache=True)
def _decide(pos: float, entry: bool, exit_: bool, s_entry: bool, s_exit: bool, shorts: bool) -> int:
    """Orders for the events of one close. An entry and its own exit on the same bar
    cancel out; a long and a short entry on the same bar too."""
    want_long = entry and not exit_
    want_short = shorts and s_entry and not s_exit
    if want_long and want_short:
        want_long = want_short = False
    flags = 0
    if pos > 0 and (exit_ or want_short):
        flags |= CLOSE_LONG
    if pos < 0 and (s_exit or want_long):
        flags |= CLOSE_SHORT
    if want_long and not pos > 0:
        flags |= OPEN_LONG
    if want_short and not pos < 0:
        flags |= OPEN_SHORT
    return flags


@njit(cache=True)
def _stop_exit(st: np.ndarray, cfg: np.ndarray, o: float, h: float, lo: float) -> tuple[int, float]:
    """(reason, price) when a stop or target is hit within the bar, else (-1, nan).

    Long: the stop is the higher of the stop-loss and the trailing level (extreme since
    entry x (1 - trail)). An open beyond a level fills at the open (gap); otherwise a
    level inside [low, high] fills at the level; both inside: the stop (the worse)."""
    pos = st[S_POS]
    sl = st[S_SL]
    tp = st[S_TP]
    reason = STOP_LOSS
    if pos > 0:
        trail = st[S_EXTREME] * (1.0 - cfg[C_TRAIL])
        if trail > sl or (np.isnan(sl) and not np.isnan(trail)):
            sl, reason = trail, TRAILING_STOP
        if o <= sl:
            return reason, o
        if o >= tp:
            return TAKE_PROFIT, o
        if lo <= sl:
            return reason, sl
        if h >= tp:
            return TAKE_PROFIT, tp
    else:
        trail = st[S_EXTREME] * (1.0 + cfg[C_TRAIL])
        if trail < sl or (np.isnan(sl) and not np.isnan(trail)):
            sl, reason = trail, TRAILING_STOP
        if o >= sl:
            return reason, o
        if o <= tp:
            return TAKE_PROFIT, o
        if h >= sl:
            return reason, sl
        if lo <= tp:
            return TAKE_PROFIT, tp
    return -1, np.nan


@njit(cache=True)
def _check_stops(
    st: np.ndarray,
    acc: np.ndarray,
    trades: np.ndarray,
    cfg: np.ndarray,
    bar: int,
    o: float,
    h: float,
    lo: float,
    slip: float,
) -> None:
    reason, price = _stop_exit(st, cfg, o, h, lo)
    if reason >= 0:
        # A take-profit is a resting limit: it fills at its price, no slippage.
        _close(st, acc, trades, cfg, bar, price, 0.0 if reason == TAKE_PROFIT else slip, reason)
    elif st[S_POS] > 0:
        st[S_EXTREME] = max(st[S_EXTREME], h)
    else:
        st[S_EXTREME] = min(st[S_EXTREME], lo)


@njit(cache=True)
def simulate(
    o: np.ndarray,
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    entries: np.ndarray,
    exits: np.ndarray,
    short_entries: np.ndarray,
    short_exits: np.ndarray,
    slip_open: np.ndarray,
    slip_close: np.ndarray,
    atr: np.ndarray,
    cfg: np.ndarray,
    equity: np.ndarray,
    trades: np.ndarray,
    acc: np.ndarray,
) -> None:
    """Run one backtest: fills `equity` (mark-to-market at each close), `trades` (one row
    per trade while rows last; pass a 0-row array to skip) and the accumulators `acc`."""
    n = c.shape[0]
    st = np.zeros(N_STATE)
    st[S_CASH] = cfg[C_INITIAL]
    fill_close = cfg[C_FILL_CLOSE] != 0.0
    shorts = cfg[C_ALLOW_SHORT] != 0.0
    stops = not (np.isnan(cfg[C_SL]) and np.isnan(cfg[C_TP]) and np.isnan(cfg[C_TRAIL]))
    pending = 0
    for t in range(n):
        if pending:
            _execute(pending, st, acc, trades, cfg, t, o[t], slip_open[t], atr[t - 1])
            pending = 0
        if stops and st[S_POS] != 0.0:
            _check_stops(st, acc, trades, cfg, t, o[t], h[t], lo[t], slip_open[t])
        flags = _decide(st[S_POS], entries[t], exits[t], short_entries[t], short_exits[t], shorts)
        if flags:
            if fill_close:
                _execute(flags, st, acc, trades, cfg, t, c[t], slip_close[t], atr[t])
            else:
                pending = flags
        pos = st[S_POS]
        equity[t] = st[S_CASH] + pos * c[t]
        if pos != 0.0:
            acc[A_EXPOSED] += 1.0
    if n and st[S_POS] != 0.0:
        # Still open: marked at the last close, no exit fee (the equity curve agrees).
        _record(st, acc, trades, n - 1, c[n - 1], 0.0, END)


@njit(cache=True)
def equity_summary(equity: np.ndarray, initial: float, out: np.ndarray) -> None:
    """Per-bar return moments and the deepest/longest drawdown of one equity curve, into
    `out`: [mean, std (ddof 1), downside deviation, max drawdown, longest underwater
    stretch in bars, its first bar, its last bar]. See `metrics` for the definitions."""
    n = equity.shape[0]
    total = 0.0
    total_sq = 0.0
    down = 0.0
    prev = initial
    peak = initial
    max_dd = 0.0
    run = 0
    best_run = 0
    best_end = -1
    for t in range(n):
        value = equity[t]
        r = value / prev - 1.0 if prev > 0.0 else 0.0
        prev = value
        total += r
        total_sq += r * r
        if r < 0.0:
            down += r * r
        if value >= peak:
            peak = value
            run = 0
        else:
            run += 1
            if run > best_run:
                best_run, best_end = run, t
            dd = 1.0 - value / peak if peak > 0.0 else 1.0
            max_dd = max(max_dd, dd)
    mean = total / n if n else 0.0
    # sum((r - mean)^2) = sum(r^2) - n mean^2: one pass; per-bar returns are small
    # enough that the cancellation costs nothing measurable.
    sq = max(total_sq - n * mean * mean, 0.0)
    out[0] = mean
    out[1] = np.sqrt(sq / (n - 1)) if n > 1 else np.nan
    out[2] = np.sqrt(down / n) if n else np.nan
    out[3] = max_dd
    out[4] = best_run
    out[5] = best_end - best_run + 1 if best_run else -1
    out[6] = best_end


N_SUMMARY = 7


@njit(cache=True, parallel=True)
def sweep(
    o: np.ndarray,
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    entries: np.ndarray,
    exits: np.ndarray,
    short_entries: np.ndarray,
    short_exits: np.ndarray,
    slip_open: np.ndarray,
    slip_close: np.ndarray,
    atr: np.ndarray,
    cfg: np.ndarray,
    out: np.ndarray,
) -> None:
    """`simulate` for every row of the 2-D signal arrays (one combination each), in
    parallel; row k of `out` gets the accumulators, then the equity summary, then the
    final equity."""
    n = c.shape[0]
    for k in prange(entries.shape[0]):
        equity = np.empty(n)
        acc = np.zeros(N_ACC)
        no_trades = np.empty((0, N_TRADE_COLS))
        simulate(
            o,
            h,
            lo,
            c,
            entries[k],
            exits[k],
            short_entries[k],
            short_exits[k],
            slip_open,
            slip_close,
            atr,
            cfg,
            equity,
            no_trades,
            acc,
        )
        summary = np.empty(N_SUMMARY)
        equity_summary(equity, cfg[C_INITIAL], summary)
        out[k, :N_ACC] = acc
        out[k, N_ACC : N_ACC + N_SUMMARY] = summary
        out[k, N_ACC + N_SUMMARY] = equity[n - 1]
