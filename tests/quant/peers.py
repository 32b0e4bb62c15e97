"""backtesting.py and vectorbt driven by *our* signal arrays, for parity tests and benches.

Both peers get the entries/exits our strategy computed (TA-Lib SMA crossings), not their
own indicators: TA-Lib's SMA and a pandas rolling mean differ by ~1e-12, which flips
the odd crossing on exact ties at cent-rounded prices. What is compared is then the
execution: fills, commission, sizing, the final equity.

- backtesting.py: `FractionalBacktest` (fractional units: the data is rescaled by
  `fractional_unit` and sizes are whole numbers of those units) running `Replay`, whose
  `next()` looks up our arrays at the current bar index; `commission=0.001` is charged
  on entry and on exit on the traded value; `trade_on_close` picks the fill.
- vectorbt: `Portfolio.from_signals(size=np.inf, fees=0.001)`; for a next-open fill the
  signals are shifted one bar and `price=open`, for a close fill `price=close`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from common.quant.bars import Bars
from tests.quant.data import bars_to_frame

# 1e-10 units: sizes round to 1e-10 of a unit, far below the 1e-6 tolerance, yet prices
# x units stay well inside a float's exact integers.
FRACTIONAL_UNIT = 1e-10


@dataclass(frozen=True)
class PeerResult:
    trade_count: int  # closed trades plus one still open at the end, like ours
    final_equity: float
    entry_bars: list[int]


def backtesting_py(
    bars: Bars,
    entries: np.ndarray,
    exits: np.ndarray,
    *,
    fee: float = 0.001,
    trade_on_close: bool = False,
    cash: float = 10_000.0,
) -> PeerResult:
    from backtesting import Strategy
    from backtesting.lib import FractionalBacktest

    class Replay(Strategy):  # type: ignore[misc]
        long_entries: Any = None
        long_exits: Any = None

        def init(self) -> None:
            pass

        def next(self) -> None:
            i = len(self.data) - 1
            if self.position and self.long_exits[i]:
                self.position.close()
            elif not self.position and self.long_entries[i]:
                self.buy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = FractionalBacktest(
            bars_to_frame(bars),
            Replay,
            cash=cash,
            commission=fee,
            trade_on_close=trade_on_close,
            fractional_unit=FRACTIONAL_UNIT,
        )
        stats = test.run(long_entries=entries, long_exits=exits)
    closed = stats["_trades"]
    still_open = list(stats["_strategy"].trades)
    entry_bars = [int(x) for x in closed["EntryBar"]] + [int(t.entry_bar) for t in still_open]
    return PeerResult(len(closed) + len(still_open), float(stats["Equity Final [$]"]), entry_bars)


def vectorbt_run(
    bars: Bars,
    entries: np.ndarray,
    exits: np.ndarray,
    *,
    fee: float = 0.001,
    fill: str = "next_open",
    cash: float = 10_000.0,
) -> PeerResult:
    import vectorbt as vbt

    index = pd.to_datetime(bars.ts, unit="ms")
    close = pd.Series(bars.close, index=index)
    if fill == "next_open":
        price = pd.Series(bars.open, index=index)
        entries, exits = shift(entries), shift(exits)
    else:
        price = close
    portfolio = vbt.Portfolio.from_signals(
        close,
        pd.Series(entries, index=index),
        pd.Series(exits, index=index),
        price=price,
        size=np.inf,
        fees=fee,
        init_cash=cash,
    )
    return _from_orders(portfolio.order_records, float(bars.close[-1]), cash)


def _from_orders(orders: np.ndarray, last_close: float, cash: float) -> PeerResult:
    """Trades and final equity from vectorbt's own order records (size, price and fees
    as vectorbt filled them): `final_value()` and `trades` would compile another ~7 s of
    numba kernels in a cold CI run for the same arithmetic, cash + position x close."""
    position = 0.0
    entry_bars = []
    for order in orders:
        size, price, fees = float(order["size"]), float(order["price"]), float(order["fees"])
        if order["side"] == 0:  # buy: a long-only run opens a trade with each buy
            cash -= size * price + fees
            position += size
            entry_bars.append(int(order["idx"]))
        else:
            cash += size * price - fees
            position -= size
    return PeerResult(len(entry_bars), cash + position * last_close, entry_bars)


def shift(events: np.ndarray) -> np.ndarray:
    """Events one bar later (what fills at the next open)."""
    out = np.zeros_like(events)
    out[1:] = events[:-1]
    return out
