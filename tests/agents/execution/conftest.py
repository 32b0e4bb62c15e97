"""Fixtures for execution's tests: a hand-moved clock and sim accounts for the adapter
tests (no servers), and for the tests over HTTP a fleet state in which look-alike test
orders pass (requested by name; they start the session fleet)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.execution.exchange import SimExchange
from tests.conftest import Stack

# 2024-03-04T10:00:00Z, a minute boundary, two months after the sim's epoch.
START = 1_709_546_400.0


class Clock:
    """A clock the test moves by hand (unix seconds)."""

    def __init__(self, t: float = START) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> Clock:
    return Clock()


SimFactory = Callable[..., SimExchange]


@pytest.fixture
async def make_sim(tmp_path: Path, clock: Clock) -> AsyncIterator[SimFactory]:
    """Build SimExchanges over `tmp_path/sim` (or `subdir`), closed after the test."""
    made: list[SimExchange] = []

    def make(subdir: str = "sim", **kwargs: Any) -> SimExchange:
        kwargs.setdefault("clock", clock)
        sim = SimExchange(tmp_path / subdir, **kwargs)
        made.append(sim)
        return sim

    yield make
    for sim in made:
        await sim.close()


@pytest.fixture(scope="module")
def repeatable_orders(stack: Stack) -> Iterator[None]:
    """These tests send many small look-alike orders on purpose: relax the duplicate and
    rate rules (risk's own tests cover them), and put the limits back afterwards."""
    url = stack.url("risk") + "/limits"
    saved = httpx.get(url, headers=stack.auth(), timeout=10).json()
    relaxed = {**saved, "duplicate_window_s": 0, "max_orders_per_minute": 100_000}
    httpx.put(url, json=_editable(relaxed), headers=stack.auth(), timeout=10).raise_for_status()
    yield
    httpx.put(url, json=_editable(saved), headers=stack.auth(), timeout=10).raise_for_status()


def _editable(limits: dict[str, object]) -> dict[str, object]:
    from agents.risk.schemas import Limits

    return {k: v for k, v in limits.items() if k in Limits.model_fields}


@pytest.fixture
def active(stack: Stack) -> None:
    # Risk's own tests leave a synthetic 100,000 equity peak; the sim account is ~10,000.
    reset = {"reason": "test setup", "equity": "1"}
    stack.post("risk", "/drawdown/reset", reset).raise_for_status()
    # The sim account's own peak at its equity now (404 before its first order: none yet).
    stack.post("risk", "/drawdown/reset", {"reason": "test setup", "account": "sim"})
    # Always: a halt risk could not record (its database-outage test) still closed
    # execution's own gate, and only a resume opens it again.
    stack.post("risk", "/resume", {"reason": "test setup"}).raise_for_status()
    httpx.delete(stack.url("execution") + "/exchanges/sim/faults", headers=stack.auth(), timeout=10)
