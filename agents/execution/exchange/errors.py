"""One error taxonomy for every exchange, mapped once at the adapter boundary.

Callers branch on two questions only: whose fault is it (the caller's: 4xx; the
exchange's or the network's: 5xx) and may it be tried again (`retryable`). Reads are
retried with `retry_read`; an order create never is: an `ExchangeTimeout` means the
order may exist, and is reconciled by its client order id.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from common.errors import VolexError

T = TypeVar("T")


class ExchangeError(VolexError):
    """Something went wrong talking to an exchange; the message carries its reason."""

    status_code = 502
    title = "Exchange error"
    retryable = False

    def __init__(self, message: str, *, exchange: str | None = None, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.exchange = exchange


class BadRequest(ExchangeError):
    """The exchange refused the request as malformed; the caller must change it."""

    status_code = 422
    title = "Request refused by the exchange"


class InvalidOrder(BadRequest):
    """The exchange refused the order (precision, limits, symbol, order state)."""

    title = "Order refused by the exchange"


class BadSymbol(InvalidOrder):
    """The exchange does not list this symbol."""


class DuplicateOrder(InvalidOrder):
    """The client order id is taken; `existing_order_id` is the order that holds it."""

    def __init__(self, message: str, *, existing_order_id: str, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.existing_order_id = existing_order_id


class InsufficientFunds(ExchangeError):
    """The account cannot pay for the order (free balance too small)."""

    status_code = 422
    title = "Insufficient funds"


class OrderNotFound(ExchangeError):
    """No order with that id (for that symbol) exists on the exchange."""

    status_code = 404
    title = "Order not found"


class NetworkError(ExchangeError):
    """The request did not get through or its answer did not come back; safe to retry
    for reads, never for a create (see `ExchangeTimeout`)."""

    status_code = 503
    title = "Exchange unreachable"
    retryable = True


class RateLimited(NetworkError):
    """The exchange asked us to slow down."""

    status_code = 503
    title = "Exchange rate limit"


class ExchangeTimeout(ExchangeError):
    """An order create (or cancel) whose outcome is unknown: it may have been accepted.
    Never retried; reconcile with `fetch_order_by_client_id`."""

    status_code = 504
    title = "Exchange outcome unknown"
    retryable = False


class AuthenticationError(ExchangeError):
    """Keys wrong, expired or lacking permission: a human must fix it; trading halts."""

    status_code = 502
    title = "Exchange authentication failed"


_jitter = random.SystemRandom()  # spreads retries apart; any source of randomness will do


async def retry_read(
    fn: Callable[[], Awaitable[T]],
    attempts: int = 4,
    base_delay: float = 0.2,
    *,
    max_delay: float = 5.0,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T:
    """Call the read `fn` until it succeeds, retrying only `retryable` errors.

    Exponential backoff with full jitter: before attempt n+1 wait a uniform random
    time in [0, min(max_delay, base_delay * 2**n)]. The last error is re-raised.
    Do not wrap `create_order` in this: a lost create must be reconciled, not resent.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(attempts):
        try:
            return await fn()
        except ExchangeError as exc:
            if not exc.retryable or attempt == attempts - 1:
                raise
            await sleep(_jitter.uniform(0, min(max_delay, base_delay * 2**attempt)))
    raise AssertionError("unreachable")  # pragma: no cover
