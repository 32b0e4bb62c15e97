"""Fixtures for the exchange adapter tests: pure unit tests, no servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agents.execution.exchange import SimExchange

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
