"""Redis: JSON events on named channels (trading-state broadcast, live event stream)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

CHANNEL_PREFIX = "volex:"


class EventBus:
    """Publish and subscribe JSON events; one connection pool per process."""

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        # A restarted Redis leaves dead pooled connections behind: retry once on a fresh one
        # rather than report an outage that is already over.
        self.redis: aioredis.Redis = aioredis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )

    async def ping(self) -> None:
        await self.redis.ping()

    async def publish(self, channel: str, event: dict[str, Any]) -> int:
        """Send `event` to everyone subscribed to `channel`; returns how many got it."""
        receivers: int = await self.redis.publish(
            CHANNEL_PREFIX + channel, json.dumps(event, default=str)
        )
        return receivers

    async def subscribe(
        self, channel: str, on_subscribed: Callable[[], None] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield events published on `channel` from now on, until the caller stops.
        `on_subscribed` runs once Redis has confirmed the subscription: from then on no
        event is missed (while the connection holds)."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(CHANNEL_PREFIX + channel)
        try:
            async for message in pubsub.listen():
                kind = message.get("type")
                if kind == "message":
                    yield json.loads(message["data"])
                elif kind == "subscribe" and on_subscribed is not None:
                    on_subscribed()
        finally:
            await pubsub.aclose()

    async def close(self) -> None:
        await self.redis.aclose()


__all__ = ["EventBus", "RedisError"]
