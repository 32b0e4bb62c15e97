"""The exchange error taxonomy and retry_read: reads retry, creates never do."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from agents.execution.exchange import (
    AuthenticationError,
    BadSymbol,
    ExchangeError,
    ExchangeTimeout,
    InsufficientFunds,
    InvalidOrder,
    NetworkError,
    OrderNotFound,
    RateLimited,
    retry_read,
)
from common.errors import VolexError

pytestmark = pytest.mark.anyio


class Flaky:
    """A read that fails with `errors` in turn, then answers "ok"."""

    def __init__(self, *errors: ExchangeError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def recorder() -> tuple[list[float], Callable[[float], Awaitable[None]]]:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    return delays, sleep


def test_retryable_is_what_may_be_tried_again() -> None:
    assert NetworkError("x").retryable and RateLimited("x").retryable
    for cls in (
        InvalidOrder,
        InsufficientFunds,
        OrderNotFound,
        ExchangeTimeout,
        AuthenticationError,
    ):
        assert not cls("x").retryable, cls
    assert issubclass(BadSymbol, InvalidOrder) and issubclass(RateLimited, NetworkError)
    # Caller's fault is 4xx, the exchange's or the network's is 5xx.
    assert InvalidOrder("x").status_code == 422 == InsufficientFunds("x").status_code
    assert OrderNotFound("x").status_code == 404
    assert ExchangeTimeout("x").status_code == 504 and NetworkError("x").status_code == 503
    error = InvalidOrder("amount below minimum", exchange="binance")
    assert isinstance(error, VolexError) and error.message == "amount below minimum"
    assert error.exchange == "binance"


async def test_retry_read_retries_retryable_errors_with_jittered_backoff() -> None:
    delays, sleep = recorder()
    read = Flaky(NetworkError("reset"), RateLimited("slow down"), NetworkError("reset"))
    assert await retry_read(read, attempts=4, base_delay=0.2, sleep=sleep) == "ok"
    assert read.calls == 4
    assert len(delays) == 3
    for n, delay in enumerate(delays):
        assert 0 <= delay <= 0.2 * 2**n


async def test_retry_read_gives_up_after_the_last_attempt() -> None:
    delays, sleep = recorder()
    read = Flaky(*(NetworkError(f"try {n}") for n in range(5)))
    with pytest.raises(NetworkError, match="try 2"):
        await retry_read(read, attempts=3, sleep=sleep)
    assert read.calls == 3 and len(delays) == 2


@pytest.mark.parametrize(
    "error",
    [
        ExchangeTimeout("unknown"),
        InvalidOrder("bad"),
        AuthenticationError("keys"),
        OrderNotFound("?"),
    ],
)
async def test_retry_read_does_not_retry_what_must_not_be_retried(error: ExchangeError) -> None:
    delays, sleep = recorder()
    read = Flaky(error)
    with pytest.raises(type(error)):
        await retry_read(read, sleep=sleep)
    assert read.calls == 1 and delays == []


async def test_retry_read_caps_the_delay() -> None:
    delays, sleep = recorder()
    read = Flaky(*(NetworkError("x") for _ in range(6)))
    await retry_read(read, attempts=7, base_delay=1.0, max_delay=2.0, sleep=sleep)
    assert max(delays) <= 2.0
