"""Where the signal agent's bars come from: the backtest agent, which owns market data.

The one call is `GET backtest /data/ohlcv/{exchange}/{symbol}?timeframe=&limit=` (or
`since`/`until`, epoch ms), symbol written with a dash, answered with columns:
`{"exchange", "symbol", "timeframe", "ts": [ms...], "open": [...], "high": [...],
"low": [...], "close": [...], "volume": [...]}`, oldest first. The backtest agent
resamples stored lower-timeframe bars when a higher timeframe is asked for.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class _Cached:
    bars: Bars
    valid_until_ms: int


class BarSource:
    """Bars for (exchange, symbol, timeframe) from the backtest agent, closed candles only.

    The latest window (no `since`/`until`) is cached while it cannot change: closed
    candles stay as they are until the next one closes, unless the backtest agent stores
    new ones, which it announces on Redis (`MARKET_DATA_CHANNEL`). So an entry lives
    until the next candle could close, `MAX_AGE_MS` at most, or until such an
    announcement; and only while this process is subscribed to them (`listening`), since
    an announcement missed while Redis was away would leave an entry stale.
    """

    MAX_AGE_MS = 5_000
    MAX_ENTRIES = 256

    def __init__(self, agents: Agents) -> None:
        self.agents = agents
        self.listening = False
        self._cache: OrderedDict[tuple[str, str, str, int | None], _Cached] = OrderedDict()
        self._generation = 0  # bumped by every change: a fetch begun before it is not kept

    def changed(self, exchange: str | None = None, symbol: str | None = None) -> None:
        """Drop what is cached for a market (or everything): its stored candles changed."""
        self._generation += 1
        for key in list(self._cache):
            if exchange is None or (key[0] == exchange and key[1] == symbol):
                del self._cache[key]

    def set_listening(self, listening: bool) -> None:
        self.listening = listening
        self.changed()

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
        now_ms = int(time.time() * 1000)
        key = (exchange, symbol, timeframe, limit)
        latest = since is None and until is None
        if latest and self.listening:
            hit = self._cache.get(key)
            if hit is not None and now_ms < hit.valid_until_ms:
                self._cache.move_to_end(key)
                return hit.bars
        generation = self._generation
        bars = await self._get(exchange, symbol, timeframe, limit, since, until)
        if latest and self.listening and generation == self._generation and len(bars):
            next_close = int(bars.ts[-1]) + 2 * timeframe_ms(timeframe)
            self._cache[key] = _Cached(bars, min(next_close, now_ms + self.MAX_AGE_MS))
            self._cache.move_to_end(key)
            while len(self._cache) > self.MAX_ENTRIES:
                self._cache.popitem(last=False)
        return bars

    async def _get(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        limit: int | None,
        since: int | None,
        until: int | None,
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
