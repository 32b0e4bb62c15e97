"""Benchmark: OHLCV into PostgreSQL through the backtest agent's COPY + upsert path,
beside a naive `executemany` INSERT, and the numpy load of a year of 1m candles.

    .venv/bin/python bench/ingest.py [--rows 1000000] [--naive-rows 50000] [--chunk 100000]
    .venv/bin/python bench/ingest.py --database-url postgresql+psycopg2://...   # your server

Without --database-url it starts its own fleet (`volex up` on a temporary VOLEX_HOME
and bench ports), so the table, its primary key and the migration are the agent's own.
Prints rows/s for a fresh insert, an identical re-upsert (nothing changes), an
updating re-upsert, the naive INSERT … ON CONFLICT with executemany, one 1000-candle
page (the fetch job's unit of work), and the time to load 525,600 candles into numpy
by binary COPY and by a server-side cursor with fetchmany.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.backtest.repository import Series, load_bars, upsert_bars  # noqa: E402
from common.db import make_engine, make_session_factory  # noqa: E402
from common.quant.bars import Bars  # noqa: E402
from common.settings import Settings  # noqa: E402

PORTS = {
    "VOLEX_PORT_BASE": "29100",
    "VOLEX_PG_PORT": "29439",
    "VOLEX_REDIS_PORT": "29399",
    "VOLEX_VAULT_PORT": "29300",
}
START = 1_704_067_200_000  # 2024-01-01T00:00Z
YEAR_1M = 525_600


def synthetic(n: int, seed: int) -> Bars:
    """A random walk of one-minute candles with exchange-like prices (two decimals)."""
    rng = np.random.default_rng(seed)
    close = np.round(40_000 * np.exp(np.cumsum(rng.normal(0, 0.0008, n))), 2)
    open_ = np.r_[close[0], close[:-1]]
    spread = np.round(np.abs(rng.normal(0, 8, n)), 2)
    high = np.maximum(open_, close) + spread
    low = np.minimum(open_, close) - spread
    volume = np.round(rng.gamma(2.0, 3.0, n), 5)
    ts = START + np.arange(n, dtype=np.int64) * 60_000
    return Bars(ts, open_, high, low, close, volume)


def chunks(bars: Bars, size: int) -> Iterator[Bars]:
    for start in range(0, len(bars), size):
        yield bars.slice(start, start + size)


@contextmanager
def fleet_url() -> Iterator[str]:
    home = Path(tempfile.mkdtemp(prefix="volex-bench-")) / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLEX_")}
    env.update(PORTS, VOLEX_HOME=str(home), VOLEX_LOG_LEVEL="WARNING")
    volex = [sys.executable, "-m", "volex.cli"]
    subprocess.run([*volex, "up"], env=env, check=True, cwd=ROOT, capture_output=True)
    try:
        yield Settings(home=home, pg_port=int(PORTS["VOLEX_PG_PORT"])).resolved_database_url()
    finally:
        subprocess.run([*volex, "down"], env=env, cwd=ROOT, capture_output=True)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--naive-rows", type=int, default=50_000)
    parser.add_argument("--chunk", type=int, default=100_000, help="rows per transaction")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    if args.database_url:
        run(args, args.database_url)
    else:
        with fleet_url() as url:
            run(args, url)


def run(args: argparse.Namespace, url: str) -> None:
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    tag = str(os.getpid())
    series = Series("bench", f"COPY{tag}/USDT", "1m")
    bars = synthetic(args.rows, seed=1)
    changed = Bars(bars.ts, bars.open, bars.high + 1, bars.low, bars.close, bars.volume)

    def copy_upsert(data: Bars, target: Series = series) -> int:
        written = 0
        for part in chunks(data, args.chunk):
            with sessions.begin() as session:
                written += upsert_bars(session, target, part)
        return written

    results: list[tuple[str, int, float]] = []
    for label, data in (
        ("fresh", bars),
        ("re-upsert, identical", bars),
        ("re-upsert, changed", changed),
    ):
        seconds = timed(lambda data=data: copy_upsert(data))
        results.append((f"COPY + upsert, {label}", len(data), seconds))

    naive = synthetic(args.naive_rows, seed=2)
    naive_series = Series("bench", f"NAIVE{tag}/USDT", "1m")
    seconds = timed(lambda: naive_insert(engine, naive_series, naive))
    results.append(("executemany INSERT … ON CONFLICT", len(naive), seconds))
    copy_same = timed(
        lambda: copy_upsert(
            synthetic(args.naive_rows, seed=3), Series("bench", f"SMALL{tag}/USDT", "1m")
        )
    )
    results.append(
        (f"COPY + upsert, fresh, same {args.naive_rows:,} rows", args.naive_rows, copy_same)
    )

    page_series = Series("bench", f"PAGE{tag}/USDT", "1m")
    pages = list(chunks(synthetic(200_000, seed=4), 1000))
    page_times = [timed(lambda p=p: copy_upsert(p, page_series)) for p in pages]

    year = Series("bench", f"YEAR{tag}/USDT", "1m")
    copy_upsert(synthetic(YEAR_1M, seed=5), year)
    copy_loads = [timed(lambda: load_bars(engine, *year_key(year))) for _ in range(5)]
    cursor_loads = [timed(lambda: cursor_load(engine, year)) for _ in range(3)]
    loaded = load_bars(engine, *year_key(year))
    assert len(loaded) == YEAR_1M and np.array_equal(loaded.ts, synthetic(YEAR_1M, 5).ts)

    print(f"{'path':52}{'rows':>12}{'seconds':>10}{'rows/s':>12}")
    for label, rows, secs in results:
        print(f"{label:52}{rows:>12,}{secs:>10.2f}{rows / secs:>12,.0f}")
    fresh = results[0][1] / results[0][2]
    naive_rate = results[3][1] / results[3][2]
    small = results[4][1] / results[4][2]
    print(
        f"\nCOPY + upsert vs executemany: x{fresh / naive_rate:.1f} (1M fresh vs naive), "
        f"x{small / naive_rate:.1f} (same {args.naive_rows:,} rows)"
    )
    print(
        f"one 1000-candle page (fetch job unit), median: "
        f"{statistics.median(page_times) * 1000:.2f} ms"
    )
    print(
        f"numpy load of {YEAR_1M:,} candles: binary COPY median "
        f"{statistics.median(copy_loads) * 1000:.0f} ms, server-side cursor + fetchmany "
        f"median {statistics.median(cursor_loads) * 1000:.0f} ms"
    )


def year_key(series: Series) -> tuple[str, str, str]:
    return series.exchange, series.symbol, series.timeframe


def naive_insert(engine: object, series: Series, bars: Bars) -> None:
    """Row by row, the way an ORM or a quick script would do it."""
    from agents.backtest.timegrid import from_ms

    rows = [
        (series.exchange, series.symbol, series.timeframe, from_ms(int(t)), o, h, lo, c, v)
        for t, o, h, lo, c, v in zip(
            bars.ts,
            bars.open.tolist(),
            bars.high.tolist(),
            bars.low.tolist(),
            bars.close.tolist(),
            bars.volume.tolist(),
            strict=True,
        )
    ]
    raw = engine.raw_connection()  # type: ignore[attr-defined]
    try:
        with raw.cursor() as cur:
            cur.executemany(
                "INSERT INTO ohlcv (exchange, symbol, timeframe, time, open, high, low, close,"
                " volume) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (exchange, symbol, timeframe, time) DO UPDATE SET"
                " open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,"
                " close = EXCLUDED.close, volume = EXCLUDED.volume",
                rows,
            )
        raw.commit()
    finally:
        raw.close()


def cursor_load(engine: object, series: Series) -> Bars:
    """The alternative to binary COPY: a named (server-side) cursor read with fetchmany."""
    raw = engine.raw_connection()  # type: ignore[attr-defined]
    try:
        with raw.cursor(name="bench_load") as cur:
            cur.itersize = 50_000
            cur.execute(
                "SELECT (extract(epoch FROM time) * 1000)::bigint, open, high, low, close, volume"
                " FROM ohlcv WHERE exchange = %s AND symbol = %s AND timeframe = %s ORDER BY time",
                year_key(series),
            )
            parts = []
            while rows := cur.fetchmany(50_000):
                parts.append(np.array(rows, dtype=np.float64))
        raw.rollback()
    finally:
        raw.close()
    table = np.concatenate(parts)
    return Bars(table[:, 0].astype(np.int64), *(table[:, i].copy() for i in range(1, 6)))


if __name__ == "__main__":
    main()
