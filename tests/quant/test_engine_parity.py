"""The engine against backtesting.py and vectorbt: SMA(10/30), long-only, all-in, 0.1%.

On the real sample data backtesting.py ships (BTCUSD monthly, EURUSD hourly, GOOG daily)
and a seeded sim-like walk of one-minute bars, under both fill conventions, the three
agree on the trades (count and entry bars) and on the final equity to 1e-6 relative.

How the peers are fed (see tests/quant/peers.py): both get *our* entry/exit arrays
(TA-Lib SMA crossings from `get_strategy("sma_cross")`), so a 1e-12 indicator tie cannot
flip a crossing in one library only. backtesting.py runs `FractionalBacktest` with a
strategy whose `next()` reads those arrays at the current bar index, `commission=0.001`,
and `trade_on_close` False (next open) or True (close). vectorbt runs
`Portfolio.from_signals(size=np.inf, fees=0.001)` with the arrays shifted one bar and
`price=open` (next open) or unshifted at the close. A position still open at the end is
marked at the last close by all three (and counted as a trade).
"""

from __future__ import annotations

import numpy as np
import pytest
from backtesting.test import BTCUSD, EURUSD, GOOG

from common.quant.bars import Bars
from common.quant.engine import EngineConfig, run_backtest
from common.quant.strategies import get_strategy
from tests.quant.data import frame_to_bars, garch_bars
from tests.quant.peers import backtesting_py, vectorbt_run

DATASETS = {
    "BTCUSD": lambda: frame_to_bars(BTCUSD),
    "EURUSD": lambda: frame_to_bars(EURUSD),
    "GOOG": lambda: frame_to_bars(GOOG),
    "sim": lambda: garch_bars(20_000, seed=11),
}
FILLS = ("next_open", "close")


@pytest.fixture(scope="module", params=sorted(DATASETS))
def dataset(request: pytest.FixtureRequest) -> tuple[str, Bars]:
    return request.param, DATASETS[request.param]()


@pytest.mark.parametrize("fill", FILLS)
def test_sma_cross_all_in_matches_both_peers(dataset: tuple[str, Bars], fill: str) -> None:
    name, bars = dataset
    signals = get_strategy("sma_cross").generate(bars, {"fast": 10, "slow": 30})
    ours = run_backtest(bars, signals, EngineConfig(fee_rate=0.001, fill=fill))  # type: ignore[arg-type]
    entry_bars = ours.trade_records["entry_bar"].tolist()
    assert ours.stats["trade_count"] >= 2, name
    assert ours.stats["fill"] == fill

    peers = {
        "backtesting.py": backtesting_py(
            bars, signals.entries, signals.exits, trade_on_close=fill == "close"
        ),
        "vectorbt": vectorbt_run(bars, signals.entries, signals.exits, fill=fill),
    }
    for peer, result in peers.items():
        assert result.trade_count == ours.stats["trade_count"], (name, peer)
        assert result.entry_bars == entry_bars, (name, peer)
        assert result.final_equity == pytest.approx(ours.stats["final_equity"], rel=1e-6), (
            name,
            peer,
        )


def test_sim_parity_holds_with_a_position_open_at_the_end() -> None:
    bars = garch_bars(5_000, seed=3)
    signals = get_strategy("sma_cross").generate(bars, {"fast": 10, "slow": 30})
    # Force the last entry to stay open: drop every exit after it.
    last_entry = int(np.flatnonzero(signals.entries)[-1])
    exits = signals.exits.copy()
    exits[last_entry:] = False
    held = type(signals)(signals.entries, exits, exits, signals.entries, signals.strength)
    ours = run_backtest(bars, held, EngineConfig())
    assert ours.trades[-1]["exit_reason"] == "end"
    for result in (
        backtesting_py(bars, signals.entries, exits),
        vectorbt_run(bars, signals.entries, exits),
    ):
        assert result.trade_count == ours.stats["trade_count"]
        assert result.final_equity == pytest.approx(ours.stats["final_equity"], rel=1e-6)
