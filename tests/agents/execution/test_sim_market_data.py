"""The sim's market: a deterministic seeded price path, candles, tickers and the book."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal

import numpy as np
import pytest

from agents.execution.exchange import BadRequest, BadSymbol, Bar
from agents.execution.exchange.sim_markets import DEFAULT_MARKETS, make_book, walk_book
from agents.execution.exchange.sim_prices import EPOCH_MS, MINUTE_MS, SymbolPath
from tests.agents.execution.conftest import START, Clock, SimFactory

pytestmark = pytest.mark.anyio

HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def closes(bars: list[Bar]) -> list[float]:
    return [b.close for b in bars]


async def test_same_seed_same_prices_and_bars_different_seed_differs(make_sim: SimFactory) -> None:
    a, b, c = make_sim("a"), make_sim("b"), make_sim("c", seed=7)
    for symbol in ("BTC/USDT", "XRP/USDT"):
        assert await a.fetch_ticker(symbol) == await b.fetch_ticker(symbol)
        bars_a = await a.fetch_ohlcv(symbol, "1m", limit=1000)
        assert bars_a == await b.fetch_ohlcv(symbol, "1m", limit=1000)
        bars_c = await c.fetch_ohlcv(symbol, "1m", limit=1000)
        assert [x.ts for x in bars_a] == [x.ts for x in bars_c]
        assert closes(bars_a) != closes(bars_c)
        assert (await a.fetch_ticker(symbol)).last != (await c.fetch_ticker(symbol)).last
    # Symbols do not share a path.
    btc = await a.fetch_ohlcv("BTC/USDT", "1m", limit=100)
    eth = await a.fetch_ohlcv("ETH/USDT", "1m", limit=100)
    assert np.corrcoef(np.diff(np.log(closes(btc))), np.diff(np.log(closes(eth))))[0, 1] < 0.5


async def test_past_window_is_stable_as_time_moves_and_across_instances(
    make_sim: SimFactory,
) -> None:
    early, late = Clock(START), Clock(START + 9 * 86400)
    sim_early = make_sim("early", clock=early)
    sim_late = make_sim("late", clock=late)
    since = int(START * 1000) - 3 * DAY_MS
    for tf in ("1m", "15m", "1h", "1d"):
        then = await sim_early.fetch_ohlcv("ETH/USDT", tf, since_ms=since, limit=50)
        later = await sim_late.fetch_ohlcv("ETH/USDT", tf, since_ms=since, limit=50)
        closed_then = [bar for bar in then if bar.ts + _tf_ms(tf) <= early.t * 1000]
        assert closed_then, tf
        assert later[: len(closed_then)] == closed_then, tf
    # The clock moving forward does not change the history either.
    before = await sim_early.fetch_ohlcv("ETH/USDT", "5m", since_ms=since, limit=200)
    early.advance(7200)
    assert (await sim_early.fetch_ohlcv("ETH/USDT", "5m", since_ms=since, limit=200)) == before


def _tf_ms(tf: str) -> int:
    return {"1m": MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS, "1h": HOUR_MS}.get(
        tf, DAY_MS
    )


def _aggregate(bars: list[Bar]) -> tuple[float, float, float, float, float]:
    return (
        bars[0].open,
        max(b.high for b in bars),
        min(b.low for b in bars),
        bars[-1].close,
        sum(b.volume for b in bars),
    )


def _assert_same_candle(bar: Bar, parts: list[Bar]) -> None:
    o, h, lo, c, v = _aggregate(parts)
    assert (bar.open, bar.high, bar.low, bar.close) == (o, h, lo, c)
    assert bar.volume == pytest.approx(v, rel=1e-9)


async def test_timeframes_aggregate_consistently(make_sim: SimFactory, clock: Clock) -> None:
    clock.advance(13 * 86400 + 5 * 3600 + 1234.5)  # mid-day, mid-minute: candles still forming
    sim = make_sim()
    day0 = EPOCH_MS + 60 * DAY_MS
    minutes = await sim.fetch_ohlcv("SOL/USDT", "1m", since_ms=day0, limit=5000)
    hours = await sim.fetch_ohlcv("SOL/USDT", "1h", since_ms=day0, limit=72)
    four = await sim.fetch_ohlcv("SOL/USDT", "4h", since_ms=day0, limit=18)
    days = await sim.fetch_ohlcv("SOL/USDT", "1d", since_ms=day0, limit=3)
    assert [m.ts for m in minutes[:3]] == [day0, day0 + MINUTE_MS, day0 + 2 * MINUTE_MS]
    for k, hour in enumerate(hours):
        assert hour.ts == day0 + k * HOUR_MS
        _assert_same_candle(hour, minutes[k * 60 : (k + 1) * 60])
    for k, bar in enumerate(four):
        _assert_same_candle(bar, hours[k * 4 : (k + 1) * 4])
    for k, day in enumerate(days):
        _assert_same_candle(day, hours[k * 24 : (k + 1) * 24])
    weeks = await sim.fetch_ohlcv("SOL/USDT", "1w", since_ms=EPOCH_MS, limit=2)
    week_days = await sim.fetch_ohlcv("SOL/USDT", "1d", since_ms=EPOCH_MS, limit=14)
    _assert_same_candle(weeks[0], week_days[:7])
    _assert_same_candle(weeks[1], week_days[7:])
    # Candles are continuous: each opens where the previous closed.
    assert all(b.open == a.close for a, b in itertools.pairwise(minutes))


async def test_forming_candle_matches_its_minutes_and_the_ticker(
    make_sim: SimFactory, clock: Clock
) -> None:
    clock.advance(5 * 86400 + 7 * 3600 + 30 * 60 + 17.25)
    sim = make_sim()
    now = int(clock.t * 1000)
    hour_start = now - (now - EPOCH_MS) % HOUR_MS
    current = (await sim.fetch_ohlcv("BTC/USDT", "1h", limit=3))[-1]
    minutes = await sim.fetch_ohlcv("BTC/USDT", "1m", since_ms=hour_start, limit=60)
    assert current.ts == hour_start
    assert minutes[-1].ts == now - (now - EPOCH_MS) % MINUTE_MS  # no candle from the future
    assert len(minutes) == 31
    _assert_same_candle(current, minutes)
    ticker = await sim.fetch_ticker("BTC/USDT")
    assert ticker.timestamp == now
    assert ticker.bid < ticker.last < ticker.ask
    assert abs(float(ticker.last) - current.close) <= 0.005  # last is the close at the tick
    assert minutes[-1].low <= current.close <= minutes[-1].high
    # The forming day and week agree with the hours they are made of, the forming one included.
    day_start = now - (now - EPOCH_MS) % DAY_MS
    hours = await sim.fetch_ohlcv("BTC/USDT", "1h", since_ms=day_start, limit=24)
    assert hours[-1] == current and len(hours) == 18  # 17:30 UTC
    _assert_same_candle((await sim.fetch_ohlcv("BTC/USDT", "1d", limit=1))[0], hours)
    week = (await sim.fetch_ohlcv("BTC/USDT", "1w", limit=1))[0]
    days = await sim.fetch_ohlcv("BTC/USDT", "1d", since_ms=week.ts, limit=7)
    _assert_same_candle(week, days)


async def test_ohlcv_bounds_and_errors(make_sim: SimFactory) -> None:
    sim = make_sim()
    await sim.warm_up()
    first = await sim.fetch_ohlcv("BTC/USDT", "1d", since_ms=0, limit=5)
    assert first[0].ts == EPOCH_MS
    assert first[0].open == pytest.approx(DEFAULT_MARKETS[0].model.start_price)
    not_yet = await sim.fetch_ohlcv("BTC/USDT", "1m", since_ms=int(START * 1000) + HOUR_MS)
    assert not_yet == []
    assert len(await sim.fetch_ohlcv("BTC/USDT", "1m", limit=7)) == 7
    with pytest.raises(BadRequest, match="timeframe '2m'"):
        await sim.fetch_ohlcv("BTC/USDT", "2m")
    with pytest.raises(BadSymbol, match="DOGE/USDT"):
        await sim.fetch_ohlcv("DOGE/USDT", "1m")
    with pytest.raises(BadSymbol):
        await sim.fetch_ticker("BTC-USDT")


def test_volatility_clusters_and_tails_are_fat() -> None:
    path = SymbolPath(42, "BTC/USDT", DEFAULT_MARKETS[0].model)
    rows = path.candles(1, EPOCH_MS, 40 * 1440)
    r = np.diff(np.log([row[4] for row in rows]))
    sq = r**2 - np.mean(r**2)
    acf = [float(np.mean(sq[k:] * sq[:-k]) / np.var(r**2)) for k in (1, 5, 30)]
    assert all(a > 0.05 for a in acf), acf
    assert abs(float(np.corrcoef(r[1:], r[:-1])[0, 1])) < 0.05  # returns themselves: no memory
    kurtosis = float(np.mean((r - r.mean()) ** 4) / np.var(r) ** 2)
    assert kurtosis > 3.5
    yearly = float(np.std(r)) * math.sqrt(525_600)
    assert 0.3 < yearly < 1.0  # around the model's 55 %


def test_first_touch_is_the_first_crossing_of_the_path() -> None:
    path = SymbolPath(42, "ETH/USDT", DEFAULT_MARKETS[1].model)
    t0 = EPOCH_MS + 3 * DAY_MS + 12_345
    t1 = t0 + 6 * HOUR_MS
    samples = np.arange(t0, t1, 250)
    prices = np.array([path.price_at(int(t)) for t in samples])
    p0 = path.price_at(t0)
    low, high = float(prices.min()), float(prices.max())
    assert low < p0 < high
    for level, below in ((p0 - 0.6 * (p0 - low), True), (p0 + 0.7 * (high - p0), False)):
        hit = path.first_touch(t0, t1, level, below)
        mask = prices <= level if below else prices >= level
        first_sample = int(samples[np.argmax(mask)])
        assert hit is not None
        assert first_sample - 250 <= hit <= first_sample
        assert path.price_at(hit) == pytest.approx(level, rel=1e-6)
        # From just after the touch the path is found again at once, or later.
        later = path.first_touch(hit + 1, t1, level, below)
        assert later is None or later > hit
    assert path.first_touch(t0, t1, low * 0.99, True) is None
    assert path.first_touch(t0, t1, high * 1.01, False) is None
    assert path.first_touch(t0, t1, p0, True) == t0  # already there


def test_spread_and_slippage_grow_with_volatility() -> None:
    spec = DEFAULT_MARKETS[0]
    calm, wild = make_book(spec, 50_000.0, 1.0), make_book(spec, 50_000.0, 4.0)
    assert wild.ask - wild.bid > calm.ask - calm.bid > 0
    amount = Decimal("0.5")

    def average(fills: list) -> Decimal:
        return sum((f.price * f.amount for f in fills), Decimal(0)) / amount

    calm_fills, wild_fills = walk_book(calm, True, amount), walk_book(wild, True, amount)
    assert sum(f.amount for f in calm_fills) == amount == sum(f.amount for f in wild_fills)
    assert average(wild_fills) - wild.ask > average(calm_fills) - calm.ask > 0
    # Bigger orders slip more.
    small = walk_book(calm, True, Decimal("0.01"))
    assert len(small) == 1 and small[0].price == calm.ask
    assert len(wild_fills) > len(calm_fills) > 1
    prices = [f.price for f in calm_fills]
    assert prices == sorted(prices) and len(set(prices)) == len(prices)
    # Book prices sit on the tick grid.
    assert all(p % spec.price_step == 0 for p in prices)


async def test_markets_and_rules(make_sim: SimFactory) -> None:
    markets = await make_sim().load_markets()
    assert {"BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"} <= set(markets)
    btc = markets["BTC/USDT"]
    assert (btc.base, btc.quote, btc.taker_fee, btc.maker_fee) == (
        "BTC",
        "USDT",
        Decimal("0.001"),
        Decimal("0.001"),
    )
    rules = btc.rules()
    assert rules.amount_step == Decimal("0.00001") and rules.price_step == Decimal("0.01")
    assert rules.min_notional == Decimal(5)
    assert btc.amount_to_precision(Decimal("0.123456789")) == Decimal("0.12345")
