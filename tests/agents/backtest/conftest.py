"""Fixtures for the backtest agent's market-data tests: a client for the real service.

Tests share one fleet and one database, so each test uses symbols of its own
(`Backtest.symbol()` for imports) or a range of the sim's history no other test
fetches.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agents.backtest import repository
from common.quant.bars import TIMEFRAME_MS, Bars
from common.quant.engine import BacktestResult, EngineConfig, Sizing, run_backtest
from common.quant.strategies import Context, get_strategy
from tests.agents.signal.bars import sim_bars
from tests.client import AgentClient
from tests.conftest import Stack

_names = itertools.count(1)


class Backtest(AgentClient):
    """The backtest service over HTTP, plus a look into its tables."""

    service = "backtest"
    timeout = 60.0

    @staticmethod
    def symbol() -> str:
        """A symbol no other test stores candles for."""
        return f"T{next(_names)}X{int(time.time() * 1000) % 10**9}/USDT"

    # --- fetch jobs -----------------------------------------------------------------------
    def fetch(self, **body: Any) -> dict[str, Any]:
        job: dict[str, Any] = self.ok(self.post("/data/fetch", {"exchange": "sim", **body}), 202)
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.ok(self.get(f"/data/jobs/{job_id}"))
        return job

    def wait(self, job_id: str, until: Any = None, timeout: float = 180) -> dict[str, Any]:
        """Poll a job until `until(job)` (default: it has finished, one way or another)."""
        finished = until or (lambda job: job["status"] in ("done", "failed", "cancelled"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                job = self.job(job_id)
            except httpx.TransportError:  # the service is restarting
                job = None
            if job is not None and finished(job):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not get there in {timeout}s: {job}")

    # --- candles and backtests -------------------------------------------------------------
    def import_bars(self, symbol: str, timeframe: str, bars: Bars, exchange: str = "sim") -> None:
        """Store `bars` through CSV import (floats as repr: they come back bit for bit)."""
        columns = (bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume)
        rows = zip(*(c.tolist() for c in columns), strict=True)
        body = "timestamp,open,high,low,close,volume\n" + "\n".join(
            ",".join(repr(v) for v in row) for row in rows
        )
        params = {"exchange": exchange, "symbol": symbol.replace("/", "-"), "timeframe": timeframe}
        headers = {"Content-Type": "text/csv"}
        response = self.request(
            "POST", "/data/import", params=params, content=body, headers=headers
        )
        self.ok(response, 201)

    def run(self, **body: Any) -> dict[str, Any]:
        """POST /backtest/run and wait until the run has finished, one way or another."""
        accepted = self.ok(self.post("/backtest/run", {"exchange": "sim", **body}), 202)
        assert accepted["status"] == "queued", accepted
        return self.wait_run(accepted["id"])

    def wait_run(self, run_id: str, until: Any = None, timeout: float = 120) -> dict[str, Any]:
        finished = until or (lambda run: run["status"] in ("done", "failed", "cancelled"))
        deadline = time.monotonic() + timeout
        run = None
        while time.monotonic() < deadline:
            try:
                response = self.get(f"/backtest/{run_id}")
                run = response.json() if response.status_code == 200 else None
            except httpx.TransportError:  # the service is restarting
                run = None
            if run is not None and finished(run):
                return run
            time.sleep(0.05)
        raise AssertionError(f"backtest {run_id} did not get there in {timeout}s: {run}")

    # --- tables ---------------------------------------------------------------------------
    def candles(self, exchange: str, symbol: str, timeframe: str) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT time, open, high, low, close, volume FROM ohlcv WHERE exchange = :e"
            " AND symbol = :s AND timeframe = :tf ORDER BY time",
            e=exchange,
            s=symbol,
            tf=timeframe,
        )


def field_errors(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [e["field"] for e in response.json().get("errors") or []]


@pytest.fixture(scope="session")
def backtest(stack: Stack) -> Backtest:
    return Backtest(stack)


# --- backtest runs ---------------------------------------------------------------------------
HOUR = TIMEFRAME_MS["1h"]
COUNT = 3000  # hourly bars: ~125 days


@pytest.fixture(scope="session")
def market(backtest: Backtest) -> dict[str, Any]:
    """3000 of the sim's hourly BTC candles under a symbol of this module's own."""
    symbol = backtest.symbol()
    bars = sim_bars("BTC/USDT", "1h", COUNT, start_day=30)
    backtest.import_bars(symbol, "1h", bars)
    window = {
        "symbol": symbol,
        "timeframe": "1h",
        "since": int(bars.ts[0]),
        "until": int(bars.ts[-1]) + HOUR,
    }
    return {"symbol": symbol, "bars": bars, "window": window}


def stored(backtest: Backtest, symbol: str, timeframe: str, since: int, until: int) -> Bars:
    engine = backtest.stack.engine()
    try:
        return repository.load_bars(engine, "sim", symbol, timeframe, since, until)
    finally:
        engine.dispose()


def in_process(bars: Bars, run: dict[str, Any], context: Context | None = None) -> BacktestResult:
    request = run["request"]
    strategy = get_strategy(request["strategy"])
    config = EngineConfig(
        **{
            key: request[key]
            for key in (
                "initial_capital", "fee_rate", "slippage_bps", "slippage_vol_mult", "fill",
                "allow_short", "stop_loss_pct", "take_profit_pct", "trailing_stop_pct",
                "timeframe",
            )
        },
        sizing=Sizing(**request["sizing"]),
    )  # fmt: skip
    return run_backtest(bars, strategy.generate(bars, request["params"], context), config)


def all_trades(backtest: Backtest, run_id: str, page: int) -> Iterator[dict[str, Any]]:
    offset = 0
    while True:
        answer = backtest.ok(
            backtest.get(f"/backtest/{run_id}/trades", params={"offset": offset, "limit": page})
        )
        yield from answer["items"]
        if len(answer["items"]) < page:
            return
        offset += page


def check_against_engine(
    backtest: Backtest, run: dict[str, Any], bars: Bars, result: BacktestResult
) -> None:
    assert run["status"] == "done", run
    assert run["stats"] == result.stats  # exactly: every float survives JSONB
    assert run["bars"] == len(bars) and run["progress"] == 1.0 and run["stage"] == "finished"
    trades = list(all_trades(backtest, run["id"], page=7))
    assert len(trades) == run["stats"]["trade_count"] == len(result.trades)
    for got, want in zip(trades, result.trades, strict=True):
        assert got["side"] == want["side"] and got["exit_reason"] == want["exit_reason"]
        for key in ("size", "entry_price", "exit_price", "fees", "pnl", "return_pct", "entry_bar"):
            assert got[key] == want[key], key
    full = backtest.ok(backtest.get(f"/backtest/{run['id']}/equity", params={"points": 0}))
    assert full["points"] == full["bars"] == len(bars) and full["downsampling"] is None
    assert full["ts"] == bars.ts.tolist() and full["equity"] == result.equity.tolist()
    assert full["equity"][-1] == run["stats"]["final_equity"]
