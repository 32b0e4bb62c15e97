"""Where a backtest's bars come from: the agent's own `ohlcv` table, the asked timeframe
if stored, else built from the longest shorter stored timeframe that divides it (the
same resampling as `GET /data/ohlcv`)."""

from __future__ import annotations

import json

from agents.backtest import repository
from agents.backtest.repository import Db, Series
from agents.backtest.resample import resample
from agents.backtest.timegrid import ceil_ms, iso, step_ms
from common.errors import Unprocessable
from common.quant.bars import TIMEFRAME_MS, Bars


def candidates(timeframe: str) -> list[str]:
    """The timeframe itself, then the shorter ones dividing it, longest first."""
    target = step_ms(timeframe)
    shorter = [tf for tf, ms in TIMEFRAME_MS.items() if ms < target and target % ms == 0]
    return [timeframe, *sorted(shorter, key=TIMEFRAME_MS.__getitem__, reverse=True)]


def _window(timeframe: str, source: str, since: int, until: int) -> tuple[int, int]:
    """Source bars to read for target bars opening in [since, until)."""
    if source == timeframe:
        return since, until
    return ceil_ms(since, timeframe), ceil_ms(until, timeframe)


def locate(db: Db, series: Series, since: int, until: int) -> str:
    """The stored timeframe to read, or a 422 saying what is stored and how to fetch."""
    for timeframe in candidates(series.timeframe):
        source = Series(series.exchange, series.symbol, timeframe)
        if repository.has_bars(db, source, *_window(series.timeframe, timeframe, since, until)):
            return timeframe
    raise _nothing_stored(db, series, since, until)


def _nothing_stored(db: Db, series: Series, since: int, until: int) -> Unprocessable:
    stored = []
    for timeframe in candidates(series.timeframe):
        span = repository.bounds(db, Series(series.exchange, series.symbol, timeframe))
        if span is not None:
            stored.append(f"{timeframe} from {iso(span[0])} to {iso(span[1])}")
    what = "; ".join(stored) or "nothing"
    fetch = {
        "exchange": series.exchange,
        "symbol": series.symbol,
        "timeframe": series.timeframe,
        "since": iso(since),
        "until": iso(until),
    }
    message = (
        f"since: no {series.timeframe} candles of {series.symbol} on {series.exchange} open in"
        f" [{iso(since)}, {iso(until)}), nor shorter ones to build them from (stored: {what});"
        f" fetch them first: POST /data/fetch {json.dumps(fetch)}, or POST /data/import a CSV"
    )
    return Unprocessable(message, errors=[{"field": "body.since", "message": "no stored bars"}])


def load(db: Db, series: Series, source: str, since: int, until: int) -> Bars:
    """The bars of `series` opening in [since, until), built from `source` if it differs
    (buckets the stored data does not cover end to end are left out)."""
    start, end = _window(series.timeframe, source, since, until)
    bars = repository.load_bars(db, series.exchange, series.symbol, source, start, end)
    if source == series.timeframe:
        return bars
    span = repository.bounds(db, Series(series.exchange, series.symbol, source))
    if span is None:  # deleted meanwhile
        return repository.pick(bars, slice(0, 0))
    built, _ = resample(bars, step_ms(source), step_ms(series.timeframe), span)
    return built
