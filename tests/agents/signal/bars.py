"""Real bars for the signal agent's unit tests, from the sim exchange's price model.

The sim's path is a pure function of (seed, symbol, time), so these are the candles
the sim would serve for that window: deterministic, offline, with volatility
clustering and regimes, not a toy series.
"""

from __future__ import annotations

from agents.execution.exchange.sim_markets import DEFAULT_MARKETS
from agents.execution.exchange.sim_prices import EPOCH_MS, MINUTE_MS, shared_path
from common.quant.bars import TIMEFRAME_MS, Bars

DAY_MS = 1440 * MINUTE_MS
SPECS = {spec.symbol: spec for spec in DEFAULT_MARKETS}


def sim_bars(
    symbol: str = "BTC/USDT",
    timeframe: str = "1h",
    count: int = 500,
    *,
    start_day: int = 30,
    seed: int = 42,
) -> Bars:
    """`count` closed candles of `timeframe`, the first opening `start_day` days after
    the sim's epoch (2024-01-01)."""
    spec = SPECS[symbol]
    path = shared_path(seed, symbol, spec.model)
    minutes = TIMEFRAME_MS[timeframe] // MINUTE_MS
    rows = path.candles(minutes, EPOCH_MS + start_day * DAY_MS, count)
    return Bars.from_rows(rows)
