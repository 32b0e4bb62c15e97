"""Typed httpx clients for agent-to-agent calls: service token, request id, timeouts.

Errors come back as VolexError: an agent that cannot be reached is a 503 naming
it; an agent's own 4xx is passed on with its message; anything else is a 502.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from common.errors import ServiceUnavailable, UpstreamError, VolexError
from common.logging import request_id_var
from common.settings import SERVICES, Settings


class AgentClient:
    """Calls one agent on behalf of this service."""

    def __init__(
        self, name: str, base_url: str, http: httpx.AsyncClient, token: str | None
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.token = token

    def _headers(self) -> dict[str, str]:
        headers = {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request_id = request_id_var.get()
        if request_id:
            headers["X-Request-ID"] = request_id
        return headers

    async def request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        try:
            return await self.http.request(
                method,
                self.base_url + path,
                headers=self._headers(),
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                **kwargs,
            )
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable(f"{self.name} did not answer {method} {path} in time") from exc
        except httpx.TransportError as exc:
            raise ServiceUnavailable(
                f"{self.name} is unreachable at {self.base_url} ({exc.__class__.__name__})"
            ) from exc

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and return its JSON body, or raise a VolexError saying why not."""
        response = await self.request(method, path, **kwargs)
        if response.is_success:
            return response.json() if response.content else None
        detail = _problem_detail(response)
        if response.status_code == 503:
            raise ServiceUnavailable(f"{self.name}: {detail}")
        if response.status_code in (401, 403):
            # About *our* credentials, not the end caller's: never pass it on as theirs.
            raise UpstreamError(
                f"{self.name} refused this service's credentials ({response.status_code}): {detail}"
            )
        if 400 <= response.status_code < 500:
            raise VolexError(f"{self.name}: {detail}", status_code=response.status_code)
        raise UpstreamError(f"{self.name} failed ({response.status_code}): {detail}")

    async def get(self, path: str, **kwargs: Any) -> Any:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Any:
        return await self.call("POST", path, **kwargs)


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)
    return str(body)[:200]


class Agents:
    """The fleet as seen from one service: `agents.risk.post("/checks/pre-trade", ...)`.

    Given one `http` client, every agent shares it. `Agents.pooled` gives each agent a
    pool of its own instead, of at most `connections` connections (calls beyond that wait
    for one): httpcore looks at every idle connection of a pool on every request, so one
    pool grown to a connection per concurrent call cost execution more CPU under load
    than anything else it did (bench/README.md, order path).
    """

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient | Mapping[str, httpx.AsyncClient],
        token: str | None,
    ) -> None:
        def pool(name: str) -> httpx.AsyncClient:
            return http if isinstance(http, httpx.AsyncClient) else http[name]

        self._clients = {
            name: AgentClient(name, settings.url_of(name), pool(name), token) for name in SERVICES
        }
        self._owned: list[httpx.AsyncClient] = []

    @classmethod
    def pooled(
        cls, settings: Settings, *, connections: int, keepalive_s: float, token: str | None = None
    ) -> Agents:
        limits = httpx.Limits(
            max_connections=connections,
            max_keepalive_connections=connections,
            keepalive_expiry=keepalive_s,
        )
        pools = {
            name: httpx.AsyncClient(timeout=settings.http_timeout, limits=limits)
            for name in SERVICES
        }
        agents = cls(settings, pools, token)
        agents._owned = list(pools.values())
        return agents

    async def aclose(self) -> None:
        """Close the pools this object made (a shared `http` client is its owner's)."""
        for pool in self._owned:
            await pool.aclose()

    def __getattr__(self, name: str) -> AgentClient:
        try:
            return self._clients[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> AgentClient:
        return self._clients[name]

    def set_token(self, token: str | None) -> None:
        for client in self._clients.values():
            client.token = token
