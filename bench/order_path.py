"""Benchmark: POST /orders through the whole guarded path, beside a trivial FastAPI POST.

    .venv/bin/python bench/order_path.py [--orders 400] [--concurrent-orders 2000]

Starts its own fleet (`volex up` on a temporary VOLEX_HOME and bench ports), sends
market orders on `sim` (execution → risk → compliance → sim → PostgreSQL), then
measures a trivial FastAPI POST under the same uvicorn in the same run, and prints
p50/p99 latency with one client, throughput with 32 concurrent clients, the ratio
to the trivial app, and the lost/duplicated order count (must be zero).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import httpx
from sqlalchemy import Engine, create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.settings import Settings  # noqa: E402

PORTS = {
    "VOLEX_PORT_BASE": "28100",
    "VOLEX_PG_PORT": "25439",
    "VOLEX_REDIS_PORT": "26399",
    "VOLEX_VAULT_PORT": "28300",
}
TRIVIAL_PORT = 28999
reasons: list[str] = []
SKELETON_PORTS = {"front": 28996, "risk": 28997, "compliance": 28998}
TRIVIAL_APP = """
from fastapi import FastAPI
from pydantic import BaseModel
app = FastAPI()
class Body(BaseModel):
    symbol: str
    side: str
    amount: str
@app.post("/orders", status_code=201)
def create(body: Body) -> dict[str, str]:
    return {"symbol": body.symbol, "status": "filled"}
"""
BENCH_LIMITS = {
    "max_orders_per_minute": 100_000,
    "duplicate_window_s": 0,
    "max_order_notional": "1000000",
    "max_position_pct": "1",
    "max_gross_exposure_pct": "10",
    "max_heat_pct": "1",
    "daily_loss_limit": "1000000",
    "max_drawdown_pct": "1",
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# The load comes from aiohttp (as the fleet's own agent calls do): on this two-core machine
# the load generator's CPU is taken from the services it measures, and httpx spent ~3x
# aiohttp's per request (bench/README.md). Both peers are measured with the same client.
async def sequential(url: str, headers: dict[str, str], n: int, body_fn: object) -> list[float]:
    latencies = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        for i in range(n):
            started = time.perf_counter()
            async with client.post(url, json=body_fn(i), headers=headers) as response:  # type: ignore[operator]
                text = await response.text()
            latencies.append(time.perf_counter() - started)
            if response.status != 201:
                raise SystemExit(f"order {i} failed: {response.status} {text}")
    return latencies


async def concurrent(
    url: str, headers: dict[str, str], n: int, clients: int, body_fn: object
) -> tuple[float, list[int]]:
    """Throughput of `n` requests from `clients` clients; the status codes (and the first
    few answers that were not 201 in `reasons`)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    codes: list[int] = []
    # One connection per client, as 32 separate clients would have.
    connector = aiohttp.TCPConnector(limit=clients)

    async def worker(client: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            async with client.post(url, json=body_fn(i), headers=headers) as response:  # type: ignore[operator]
                text = await response.text()
            codes.append(response.status)
            if response.status != 201 and len(reasons) < 3:
                reasons.append(text[:300])

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        return n / (time.perf_counter() - started), codes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=400)
    parser.add_argument("--concurrent-orders", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--fills-today",
        type=int,
        default=0,
        help="fills already recorded today before the runs (a busy day's ledger)",
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="volex-bench-")) / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLEX_")}
    env.update(PORTS, VOLEX_HOME=str(home), VOLEX_LOG_LEVEL="WARNING")
    volex = [sys.executable, "-m", "volex.cli"]
    subprocess.run([*volex, "up"], env=env, check=True, cwd=ROOT, capture_output=True)
    trivial = None
    skeleton: list[subprocess.Popen[bytes]] = []
    try:
        settings = Settings(
            home=home, port_base=28100, pg_port=25439, redis_port=26399, vault_port=28300
        )
        token = subprocess.run(
            [*volex, "token"], env=env, check=True, cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        from agents.risk.schemas import Limits

        current = httpx.get(settings.url_of("risk") + "/limits", headers=headers).json()
        limits = {k: v for k, v in current.items() if k in Limits.model_fields}
        limits.update(BENCH_LIMITS)
        httpx.put(
            settings.url_of("risk") + "/limits", json=limits, headers=headers
        ).raise_for_status()
        run = uuid.uuid4().hex[:8]
        sides = ("buy", "sell")

        def order(i: int) -> dict[str, str]:
            # Alternate buys and sells so the paper account stays funded.
            return {
                "symbol": "BTC/USDT",
                "side": sides[i % 2],
                "type": "market",
                "amount": "0.0001",
                "client_order_id": f"b-{run}-{i}",
            }

        orders_url = settings.url_of("execution") + "/orders"

        def warm(i: int) -> dict[str, str]:
            return {**order(i), "client_order_id": f"w-{run}-{i}"}

        if args.fills_today:
            add_history(settings.resolved_database_url(), args.fills_today)
        asyncio.run(sequential(orders_url, headers, 20, warm))
        # Coins to sell from the start: with 32 clients a sell can reach the exchange
        # before the buys ahead of it in the queue, and spot cannot sell what it lacks.
        stock = {**order(0), "amount": "0.002", "client_order_id": f"s-{run}"}
        asyncio.run(sequential(orders_url, headers, 1, lambda _: stock))
        seq = asyncio.run(sequential(orders_url, headers, args.orders, order))
        offset = args.orders + (args.orders % 2)

        def order_c(i: int) -> dict[str, str]:
            return order(offset + i)

        before = approval_batches(settings.url_of("execution"))
        tput, codes = asyncio.run(
            concurrent(orders_url, headers, args.concurrent_orders, args.clients, order_c)
        )
        after = approval_batches(settings.url_of("execution"))
        batches = (after[0] - before[0], after[1] - before[1])
        engine = create_engine(settings.resolved_database_url())
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT client_order_id),"
                    " count(*) FILTER (WHERE status = 'filled') FROM orders"
                    " WHERE client_order_id LIKE :p"
                ),
                {"p": f"b-{run}-%"},
            ).one()
        sent = args.orders + args.concurrent_orders
        ok = sum(1 for c in codes if c == 201) + args.orders
        trail = audit_trail(engine, f"b-{run}-%")

        skeleton = start_skeleton(engine, settings.resolved_database_url())
        skeleton_url = f"http://127.0.0.1:{SKELETON_PORTS['front']}/orders"
        sseq = asyncio.run(sequential(skeleton_url, {}, args.orders, order))
        stput, _ = asyncio.run(
            concurrent(skeleton_url, {}, args.concurrent_orders, args.clients, order_c)
        )
        for process in skeleton:
            process.terminate()
        skeleton = []

        trivial = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, uvicorn; sys.path.insert(0, '.');"
                f"exec({TRIVIAL_APP!r}); uvicorn.run(app, port={TRIVIAL_PORT}, log_level='warning',"
                " access_log=False)",
            ],
            cwd=ROOT,
        )
        wait_until_serving(TRIVIAL_PORT)
        trivial_url = f"http://127.0.0.1:{TRIVIAL_PORT}/orders"
        tseq = asyncio.run(sequential(trivial_url, {}, args.orders, order))
        ttput, _ = asyncio.run(
            concurrent(trivial_url, {}, args.concurrent_orders, args.clients, order)
        )
    finally:
        for process in [*skeleton, *([trivial] if trivial is not None else [])]:
            process.terminate()
        subprocess.run([*volex, "down"], env=env, cwd=ROOT, capture_output=True)

    ms = 1000
    print(f"{'':28}{'p50 ms':>10}{'p99 ms':>10}{'orders/s (32 clients)':>24}")
    print(
        f"{'POST /orders (guarded path)':28}{percentile(seq, 0.5) * ms:>10.2f}"
        f"{percentile(seq, 0.99) * ms:>10.2f}{tput:>24.0f}"
    )
    print(
        f"{'skeleton (same hops, commits)':28}{percentile(sseq, 0.5) * ms:>10.2f}"
        f"{percentile(sseq, 0.99) * ms:>10.2f}{stput:>24.0f}"
    )
    print(
        f"{'trivial FastAPI POST':28}{percentile(tseq, 0.5) * ms:>10.2f}"
        f"{percentile(tseq, 0.99) * ms:>10.2f}{ttput:>24.0f}"
    )
    print(
        f"ratio guarded/trivial: p50 x{percentile(seq, 0.5) / percentile(tseq, 0.5):.1f}, "
        f"throughput x{tput / ttput:.3f}; mean {statistics.mean(seq) * ms:.2f} ms"
    )
    print(
        f"ratio guarded/skeleton: p50 x{percentile(seq, 0.5) / percentile(sseq, 0.5):.1f}, "
        f"throughput x{tput / stput:.3f}"
    )
    print(
        f"orders sent {sent}, answered 201: {ok}, rows {rows[0]}, distinct client ids "
        f"{rows[1]}, filled {rows[2]}; lost {sent - rows[1]}, duplicated {rows[0] - rows[1]}"
    )
    refused = {code: codes.count(code) for code in sorted(set(codes)) if code != 201}
    if refused:
        print(f"not 201 with {args.clients} clients (status: count): {refused}")
        for reason in reasons:
            print(f"  e.g. {reason}")
    print(
        f"audit trail: {trail[0]} orders with an order.completed event at compliance "
        f"(of {rows[2]} filled), {trail[1]} events still queued at the end"
    )
    print(
        f"approvals with {args.clients} clients: {batches[0]:.0f} batches for "
        f"{batches[1]:.0f} orders (mean {batches[1] / max(batches[0], 1):.1f} per batch)"
    )


def add_history(database_url: str, fills: int) -> None:
    """`fills` trades of one order, all today (UTC), on an exchange of their own: what a
    busy day leaves in the ledger by the time these orders come (positions untouched)."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        order_id = conn.execute(
            text(
                "INSERT INTO orders (client_order_id, exchange, symbol, side, type, amount,"
                " status, filled, fee, reduce_only, role, requested_by) VALUES"
                " ('bench-history', 'bench-history', 'BTC/USDT', 'buy', 'market', :n,"
                " 'filled', :n, 0, false, 'entry', 'bench') RETURNING id"
            ),
            {"n": fills},
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO fills (order_id, exchange, trade_id, symbol, side, amount, price,"
                " fee, fee_currency, realized_pnl, filled_at)"
                " SELECT :o, 'bench-history', 'h-' || g, 'BTC/USDT', 'buy', 1, 50000, 0.05, 'USDT',"
                " 0.01, greatest(date_trunc('day', now(), 'UTC'), now() - g * interval '10 ms')"
                " FROM generate_series(1, :n) AS g"
            ),
            {"o": order_id, "n": fills},
        )
        conn.execute(text("VACUUM ANALYZE fills"))  # (the old sum read an index: at its best)
    engine.dispose()
    print(f"ledger: {fills} fills already recorded today")


def start_skeleton(engine: Engine, database_url: str) -> list[subprocess.Popen[bytes]]:
    """bench/skeleton_app.py as three uvicorn processes (front, risk, compliance) on the
    fleet's PostgreSQL; returns once the front answers."""
    from bench.skeleton_app import TABLES

    with engine.begin() as conn:
        for ddl in TABLES:
            conn.execute(text(ddl))
    dsn = database_url.replace("postgresql+psycopg2://", "postgresql://", 1)
    peers = ",".join(f"http://127.0.0.1:{SKELETON_PORTS[n]}" for n in ("risk", "compliance"))
    processes = []
    for role, port in SKELETON_PORTS.items():
        env = {**os.environ, "SKELETON_ROLE": role, "SKELETON_DB": dsn, "SKELETON_PEERS": peers}
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "bench.skeleton_app:app",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                cwd=ROOT,
                env=env,
            )
        )
    for port in SKELETON_PORTS.values():
        wait_until_serving(port)
    return processes


def wait_until_serving(port: int, timeout_s: float = 10) -> None:
    """Wait for a FastAPI app on `port` to answer (its /docs page)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs")
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing answers on port {port} after {timeout_s} s") from None
            time.sleep(0.1)


def approval_batches(execution_url: str) -> tuple[float, float]:
    """Execution's approval batches so far: (how many, orders in them)."""
    text = httpx.get(execution_url + "/metrics").text
    found = dict.fromkeys(("count", "sum"), 0.0)
    for line in text.splitlines():
        for key in found:
            if line.startswith(f"volex_order_approval_batch_size_{key} "):
                found[key] = float(line.split()[1])
    return found["count"], found["sum"]


def audit_trail(engine: Engine, pattern: str, wait_s: float = 60) -> tuple[int, int]:
    """Wait (up to `wait_s`) for the outboxes to drain; then how many of the run's orders
    compliance has an `order.completed` event for, and how many events are still queued."""
    deadline = time.monotonic() + wait_s
    with engine.connect() as conn:
        while True:
            queued = conn.execute(text("SELECT count(*) FROM event_outbox")).scalar_one()
            conn.commit()
            if queued == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        completed = conn.execute(
            text(
                "SELECT count(DISTINCT subject) FROM audit_events"
                " WHERE kind = 'order.completed' AND subject LIKE :p"
            ),
            {"p": pattern},
        ).scalar_one()
    return int(completed), int(queued)


if __name__ == "__main__":
    main()
