"""Benchmark: POST /backtest/run on a year of stored one-minute bars, end to end.

    .venv/bin/python bench/backtest_api.py [--runs 7] [--bars 525600]

Starts its own fleet (`volex up` on a temporary VOLEX_HOME and bench ports), writes the
sim exchange's own BTC/USDT one-minute candles for 2024 (generated offline from its
price model, the candles `POST /data/fetch` would store) into the agent's `ohlcv` table
through the agent's own COPY + MERGE (`repository.upsert_bars`), then times SMA cross
runs (10/30 and 50/200) through the API: POST /backtest/run, then GET /backtest/{id}
every 10 ms until it is done. Beside it, in the same run and on the same bars: the in-process engine
(`load_bars` + `generate` + `run_backtest`, and the last two alone), and vectorbt's
`Portfolio.from_signals` (its own moving averages and crossings, filling at the next
open like ours). Prints p50/max and the ratios, and checks the API's stats equal the
engine's exactly and vectorbt's trade count and final equity. (With 10/30 the 0.1% fee
grinds the account down to ~1e-5 USDT over 10,000 trades, below the order sizes
vectorbt still fills; with 50/200 the two agree to the cent.)
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
from typing import Any

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.backtest.repository import Series, load_bars, upsert_bars  # noqa: E402
from agents.execution.exchange.sim_markets import DEFAULT_MARKETS  # noqa: E402
from agents.execution.exchange.sim_prices import EPOCH_MS, shared_path  # noqa: E402
from common.db import make_engine, make_session_factory  # noqa: E402
from common.quant.bars import Bars  # noqa: E402
from common.quant.engine import EngineConfig, run_backtest, warm_up  # noqa: E402
from common.quant.strategies import get_strategy  # noqa: E402
from common.settings import Settings  # noqa: E402
from tests.quant.peers import shift  # noqa: E402

PORTS = {
    "VOLEX_PORT_BASE": "30100",
    "VOLEX_PG_PORT": "30439",
    "VOLEX_REDIS_PORT": "30399",
    "VOLEX_VAULT_PORT": "30300",
}
SERIES = Series("sim", "BTC/USDT", "1m")
CHUNK = 100_000


@contextmanager
def fleet() -> Iterator[Settings]:
    home = Path(tempfile.mkdtemp(prefix="volex-bench-")) / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLEX_")}
    env.update(PORTS, VOLEX_HOME=str(home), VOLEX_LOG_LEVEL="WARNING")
    volex = [sys.executable, "-m", "volex.cli"]
    subprocess.run([*volex, "up"], env=env, check=True, cwd=ROOT, capture_output=True)
    token = subprocess.run(
        [*volex, "token"], env=env, check=True, cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    try:
        settings = Settings(
            home=home,
            port_base=int(PORTS["VOLEX_PORT_BASE"]),
            pg_port=int(PORTS["VOLEX_PG_PORT"]),
        )
        os.environ["BENCH_TOKEN"] = token
        yield settings
    finally:
        subprocess.run([*volex, "down"], env=env, cwd=ROOT, capture_output=True)


def sim_year(count: int) -> Bars:
    spec = {s.symbol: s for s in DEFAULT_MARKETS}[SERIES.symbol]
    path = shared_path(42, SERIES.symbol, spec.model)
    return Bars.from_rows(path.candles(1, EPOCH_MS, count))


def store(url: str, bars: Bars) -> float:
    sessions = make_session_factory(make_engine(url))
    started = time.perf_counter()
    for start in range(0, len(bars), CHUNK):
        with sessions.begin() as session:
            upsert_bars(session, SERIES, bars.slice(start, start + CHUNK))
    return time.perf_counter() - started


def api_run(client: httpx.Client, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    accepted = client.post("/backtest/run", json=body)
    if accepted.status_code != 202:
        raise SystemExit(f"POST /backtest/run: {accepted.status_code} {accepted.text}")
    run_id = accepted.json()["id"]
    while True:
        run = client.get(f"/backtest/{run_id}").json()
        if run["status"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    if run["status"] != "done":
        raise SystemExit(f"backtest {run_id} {run['status']}: {run['error']}")
    return elapsed, run


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return times, result


def vbt_sma(bars: Bars, params: dict[str, int]) -> tuple[int, float]:
    import vectorbt as vbt

    index = pd.to_datetime(bars.ts, unit="ms")
    close, open_ = pd.Series(bars.close, index=index), pd.Series(bars.open, index=index)
    fast = vbt.MA.run(close, params["fast"])
    slow = vbt.MA.run(close, params["slow"])
    entries = shift(fast.ma_crossed_above(slow).to_numpy())
    exits = shift(fast.ma_crossed_below(slow).to_numpy())
    portfolio = vbt.Portfolio.from_signals(
        close, entries, exits, price=open_, size=np.inf, fees=0.001, init_cash=10_000.0
    )
    return int(portfolio.trades.count()), float(portfolio.final_value())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--bars", type=int, default=525_600)
    parser.add_argument("--params", default="10/30,50/200", help="fast/slow SMA pairs")
    args = parser.parse_args()
    with fleet() as settings:
        url = settings.resolved_database_url()
        bars = sim_year(args.bars)
        print(f"stored {len(bars):,} sim 1m candles in {store(url, bars):.1f} s (COPY + MERGE)")
        warm_up()
        for pair in args.params.split(","):
            fast, slow = (int(x) for x in pair.split("/"))
            bench(settings, bars, {"fast": fast, "slow": slow}, args.runs)


def bench(settings: Settings, bars: Bars, params: dict[str, int], runs: int) -> None:
    body = {
        "exchange": SERIES.exchange,
        "symbol": SERIES.symbol,
        "timeframe": SERIES.timeframe,
        "since": int(bars.ts[0]),
        "until": int(bars.ts[-1]) + 60_000,
        "strategy": "sma_cross",
        "params": params,
    }
    headers = {"Authorization": f"Bearer {os.environ['BENCH_TOKEN']}"}
    with httpx.Client(base_url=settings.url_of("backtest"), headers=headers, timeout=60) as client:
        api_run(client, body)  # the first: the kernel may still be loading from the cache
        results = [api_run(client, body) for _ in range(runs)]
    e2e = [elapsed for elapsed, _ in results]
    server = [run["duration_ms"] / 1000 for _, run in results]
    stats = results[-1][1]["stats"]

    engine = make_engine(settings.resolved_database_url())
    config = EngineConfig(timeframe="1m")
    strategy = get_strategy("sma_cross")
    checked = strategy.validate(params)
    loads, loaded = timed(lambda: load_bars(engine, *SERIES.params().values()), runs)
    engine.dispose()
    assert np.array_equal(loaded.close, bars.close)
    sims, result = timed(
        lambda: run_backtest(loaded, strategy.generate(loaded, checked), config), runs
    )
    in_process = [a + b for a, b in zip(loads, sims, strict=True)]
    assert result.stats == stats, "the API's stats differ from the engine's"

    vbt_sma(bars.slice(0, 1000), params)  # vectorbt compiles its kernels on the first call
    vbts, (v_count, v_final) = timed(lambda: vbt_sma(bars, params), runs)
    print(
        f"\n{len(bars):,} one-minute bars, SMA({params['fast']}/{params['slow']}), all-in,"
        " 0.1% fee, next open"
    )
    report(e2e, server, loads, sims, in_process, vbts)
    print(
        f"checks: API stats == in-process stats (exactly); trades {stats['trade_count']}"
        f" (vectorbt {v_count}), final equity {stats['final_equity']:.6f}"
        f" (vectorbt {v_final:.6f})"
    )


def report(e2e: list[float], server: list[float], *parts: list[float]) -> None:
    loads, sims, in_process, vbts = parts
    p50 = statistics.median

    def row(label: str, values: list[float]) -> None:
        print(f"{label:58}{p50(values) * 1e3:>10.0f}{max(values) * 1e3:>10.0f}")

    print(f"{'':58}{'p50 ms':>10}{'max ms':>10}")
    row("API: POST /backtest/run → GET until done", e2e)
    row("  the run in the service (started → finished)", server)
    row("in process: load_bars (binary COPY)", loads)
    row("in process: generate + run_backtest", sims)
    row("in process: load + generate + run_backtest", in_process)
    row("vectorbt: MA.run x2 + crossings + from_signals (+ stats)", vbts)
    print(
        f"\noverhead: API / in-process (load + engine) x{p50(e2e) / p50(in_process):.2f}; "
        f"API / engine alone x{p50(e2e) / p50(sims):.1f}; "
        f"vectorbt / our engine x{p50(vbts) / p50(sims):.1f}; "
        f"API / vectorbt x{p50(e2e) / p50(vbts):.2f}"
    )


if __name__ == "__main__":
    main()
