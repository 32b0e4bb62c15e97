"""What the backtest agent announces: a series of candles changed (after the commit)."""

from __future__ import annotations

import logging

from agents.backtest.repository import Series
from common.contracts import MARKET_DATA_CHANNEL
from common.events import EventBus, RedisError

log = logging.getLogger(__name__)


async def announce(events: EventBus | None, series: Series) -> None:
    """Tell readers that cache bars (the signal agent) that this series changed. Best
    effort: their caches also expire by themselves."""
    if events is None:
        return
    try:
        await events.publish(
            MARKET_DATA_CHANNEL,
            {"exchange": series.exchange, "symbol": series.symbol, "timeframe": series.timeframe},
        )
    except (RedisError, OSError) as exc:
        log.warning("market-data change not announced", extra={"reason": str(exc)[:200]})
