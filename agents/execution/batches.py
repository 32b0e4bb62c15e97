"""Work done one batch at a time per key, by whoever is waiting for it.

Execution approves orders per account and records exchange answers per market this way:
an item queues under its key; whoever holds the key's lock takes everything queued
meanwhile (up to `size`) and hands it to `handle`, which settles each item's future.
Orders that arrive together share one call to risk and compliance, or one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from common.errors import ServiceUnavailable

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Batches(Generic[K, T]):
    def __init__(
        self,
        handle: Callable[[K, list[T]], Awaitable[None]],
        future: Callable[[T], asyncio.Future[Any]],
        size: int,
    ) -> None:
        self.handle = handle  # must settle the future of every item it is given
        self.future = future  # an item's future: settled once the item is handled
        self.size = size
        self.locks: dict[K, asyncio.Lock] = {}
        self.queues: dict[K, list[T]] = {}

    async def wait(self, key: K, item: T) -> None:
        """Queue `item` and return once its future is settled."""
        self.queues.setdefault(key, []).append(item)
        while not self.future(item).done():
            # Shielded: a caller that stops waiting neither stops the batch it is handling
            # (the others' items) nor frees the key before that batch is done.
            await asyncio.shield(self._next(key, item))

    async def _next(self, key: K, item: T) -> None:
        async with self.locks.setdefault(key, asyncio.Lock()):
            if self.future(item).done():  # handled in the batch before
                return
            queue = self.queues[key]
            batch = queue[: self.size]
            del queue[: len(batch)]
            try:
                await self.handle(key, batch)
            finally:  # a handler that failed to settle one: its waiter must not wait for ever
                for left in batch:
                    if not self.future(left).done():
                        self.future(left).set_exception(ServiceUnavailable("interrupted"))
