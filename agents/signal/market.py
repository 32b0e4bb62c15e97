"""Where the signal agent's bars come from: the backtest agent, which owns market data.

The one call is `GET backtest /data/ohlcv/{exchange}/{symbol}?timeframe=&limit=` (or
`since`/`until`, epoch ms), symbol written with a dash, answered with columns:
`{"exchange", "symbol", "timeframe", "ts": [ms...], "open": [...], "high": [...],
"low": [...], "close": [...], "volume": [...]}`, oldest first. The backtest agent
resamples stored lower-timeframe bars when a higher timeframe is asked for.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from common.clients import Agents
from common.errors import ServiceUnavailable, UpstreamError, VolexError
from common.quant.bars import Bars, timeframe_ms

COLUMNS = ("open", "high", "low", "close", "volume")


def path_symbol(symbol: str) -> str:
    return symbol.replace("/", "-")


def parse_columns(body: Any, timeframe: str, now_ms: int) -> Bars:
    """Bars from the backtest agent's answer, without a candle that has not closed yet."""
    if not isinstance(body, dict) or not isinstance(body.get("ts"), list):
        raise UpstreamError("backtest answered /data/ohlcv without a `ts` column")
    try:
        ts = np.asarray(body["ts"], dtype=np.int64)
        columns = [np.asarray(body[name], dtype=np.float64) for name in COLUMNS]
    except (KeyError, TypeError, ValueError) as exc:
        raise UpstreamError(f"backtest answered /data/ohlcv with bad columns ({exc})") from exc
    if any(len(c) != len(ts) for c in columns):
        raise UpstreamError("backtest answered /data/ohlcv with columns of different lengths")
    if len(ts) > 1 and not bool(np.all(np.diff(ts) > 0)):
        raise UpstreamError("backtest answered /data/ohlcv with timestamps out of order")
    bars = Bars(ts, *columns)
    # A signal acts on closed bars only: the still-forming candle would change under it.
    closed = int(np.searchsorted(ts + timeframe_ms(timeframe), now_ms, side="right"))
    return bars.slice(0, closed) if closed < len(bars) else bars


class BarSource:
    """Bars for (exchange, symbol, timeframe) from the backtest agent, closed candles only."""

    def __init__(self, agents: Agents) -> None:
        self.agents = agents

    async def fetch(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        *,
        limit: int | None = None,
        since: int | None = None,
        until: int | None = None,
    ) -> Bars:
        params: dict[str, Any] = {"timeframe": timeframe}
        for name, value in (("limit", limit), ("since", since), ("until", until)):
            if value is not None:
                params[name] = value
        path = f"/data/ohlcv/{exchange}/{path_symbol(symbol)}"
        try:
            body = await self.agents.backtest.get(path, params=params)
        except VolexError as exc:
            if exc.status_code == 404 and "no such endpoint" in exc.message:
                raise ServiceUnavailable(
                    "market data is not available: the backtest agent does not serve "
                    "/data/ohlcv yet"
                ) from exc
            raise
        return parse_columns(body, timeframe, int(time.time() * 1000))
