"""Benchmark: POST /signals/generate, one symbol, 500 bars, every rule strategy.

    .venv/bin/python bench/signal_api.py [--requests 1000] [--bars 500] [--rounds 4]

Starts its own fleet (`volex up` on a temporary VOLEX_HOME and bench ports), imports
the sim's own BTC/USDT 1h candles into the backtest agent (CSV import), then sends
sequential requests from one pooled client, in rounds alternating with the bars call
alone (GET backtest /data/ohlcv, which is inside every uncached signal), and prints
p50/p99 of the whole call (server + client) against the targets (p50 <= 3 ms,
p99 <= 10 ms).
Needs the backtest agent's market data (`/data/ohlcv`, `/data/import`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.quant.bars import TIMEFRAME_MS  # noqa: E402
from common.settings import Settings  # noqa: E402

PORTS = {
    "VOLEX_PORT_BASE": "29100",
    "VOLEX_PG_PORT": "26439",
    "VOLEX_REDIS_PORT": "27399",
    "VOLEX_VAULT_PORT": "29300",
}
TARGETS_MS = {"p50": 3.0, "p99": 10.0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sim_csv(symbol: str, count: int) -> bytes:
    """The sim's own candles up to the last closed hour, as the backtest agent imports them."""
    from agents.execution.exchange.sim_markets import DEFAULT_MARKETS
    from agents.execution.exchange.sim_prices import shared_path

    hour = TIMEFRAME_MS["1h"]
    last = int(time.time() * 1000) // hour * hour - hour
    spec = {s.symbol: s for s in DEFAULT_MARKETS}[symbol]
    rows = shared_path(42, symbol, spec.model).candles(60, last - (count - 1) * hour, count)
    lines = ["timestamp,open,high,low,close,volume"]
    lines += [",".join(repr(x) if i else str(int(x)) for i, x in enumerate(r)) for r in rows]
    return "\n".join(lines).encode()


def timed(n: int, call: Callable[[], httpx.Response]) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        response = call()
        out.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return out


def report(name: str, ms: list[float]) -> None:
    p50, p99 = percentile(ms, 0.5), percentile(ms, 0.99)
    print(
        f"{name:<34} n={len(ms):<5} p50={p50:6.2f} ms  p99={p99:6.2f} ms  "
        f"mean={statistics.fmean(ms):6.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--bars", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="volex-bench-")) / "home"
    env = {**os.environ, **PORTS, "VOLEX_HOME": str(home)}
    volex = [sys.executable, "-m", "volex.cli"]
    subprocess.run([*volex, "up"], env=env, check=True, cwd=ROOT, capture_output=True)
    try:
        settings = Settings(home=home, port_base=int(PORTS["VOLEX_PORT_BASE"]))
        token = subprocess.run(
            [*volex, "token"], env=env, check=True, cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        backtest, signal = settings.url_of("backtest"), settings.url_of("signal")
        with httpx.Client(headers=headers, timeout=30) as client:
            imported = client.post(
                backtest + "/data/import",
                params={"exchange": "sim", "symbol": "BTC/USDT", "timeframe": "1h"},
                content=sim_csv("BTC/USDT", args.bars + 50),
                headers={"Content-Type": "text/csv"},
            )
            assert imported.status_code == 201, imported.text
            body = {"symbol": "BTC/USDT", "timeframe": "1h", "limit": args.bars}
            bars_params = {"timeframe": "1h", "limit": args.bars}

            def generate() -> httpx.Response:
                return client.post(signal + "/signals/generate", json=body)

            def bars() -> httpx.Response:
                return client.get(backtest + "/data/ohlcv/sim/BTC-USDT", params=bars_params)

            timed(50, generate)  # warm-up: connections, caches
            # Rounds of each, alternating, so both face the same moments of a shared machine
            # (a fleet just started is still settling); p50 of each round, then of all.
            bars_ms: list[float] = []
            ms: list[float] = []
            per_round = max(1, args.requests // args.rounds)
            for r in range(args.rounds):
                bars_ms += (b := timed(per_round, bars))
                ms += (g := timed(per_round, generate))
                print(
                    f"  round {r + 1}: bars p50 {percentile(b, 0.5):.2f} ms, "
                    f"generate p50 {percentile(g, 0.5):.2f} ms"
                )
            report("GET backtest /data/ohlcv", bars_ms)
            report("POST signal /signals/generate", ms)
            for name, target in TARGETS_MS.items():
                value = percentile(ms, 0.5 if name == "p50" else 0.99)
                verdict = "meets" if value <= target else "MISSES"
                print(f"  {name} {value:.2f} ms {verdict} the target of {target:g} ms")
    finally:
        subprocess.run([*volex, "down"], env=env, cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    main()
