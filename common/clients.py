"""Typed clients for agent-to-agent calls: service token, request id, timeouts.

Errors come back as VolexError: an agent that cannot be reached is a 503 naming
it; an agent's own 4xx is passed on with its message; anything else is a 502.

The calls go through aiohttp: on the order path (three calls an order, plus the audit
relay) httpx cost ~1.3 ms of CPU a call in the caller, aiohttp ~0.4 ms (bench/README.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson
from pydantic import BaseModel, ValidationError

from common.errors import ServiceUnavailable, UpstreamError, VolexError
from common.logging import request_id_var
from common.settings import SERVICES, Settings

_JSON_OUT = orjson.OPT_NON_STR_KEYS
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class AgentResponse:
    """An agent's answer, read in full."""

    status_code: int
    reason_phrase: str
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not JSON."""
        return orjson.loads(self.content)


def _query(params: Mapping[str, Any]) -> dict[str, str]:
    """Query values as the agents' endpoints read them (`true`, not `True`; None empty)."""
    out = {}
    for key, value in params.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        else:
            out[key] = "" if value is None else str(value)
    return out


class AgentClient:
    """Calls one agent on behalf of this service, through its own connection pool."""

    def __init__(
        self,
        name: str,
        base_url: str,
        token: str | None,
        *,
        connections: int,
        keepalive_s: float,
        timeout: float,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.connections = connections
        self.keepalive_s = keepalive_s
        self.timeout = timeout
        self._http: aiohttp.ClientSession | None = None  # made on first use, in the loop

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.connections,
                    keepalive_timeout=self.keepalive_s,
                    use_dns_cache=True,
                ),
                # Our own Accept-Encoding, no cookies, no proxies from the environment:
                # these are calls between agents on this machine.
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._http

    def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        if has_body:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request_id = request_id_var.get()
        if request_id:
            headers["X-Request-ID"] = request_id
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> AgentResponse:
        """`json` is encoded here; `content` is a body encoded already (JSON)."""
        body = content if json is None else orjson.dumps(json, option=_JSON_OUT)
        try:
            async with self.http.request(
                method,
                self.base_url + path,
                data=body,
                params=_query(params) if params else None,
                headers=self._headers(body is not None),
                # Always a ClientTimeout: aiohttp reads timeout=None as "wait for ever".
                timeout=aiohttp.ClientTimeout(total=self.timeout if timeout is None else timeout),
                allow_redirects=False,
            ) as response:
                content = await response.read()
                return AgentResponse(response.status, response.reason or "", content)
        except TimeoutError as exc:
            raise ServiceUnavailable(f"{self.name} did not answer {method} {path} in time") from exc
        except aiohttp.ClientError as exc:
            raise ServiceUnavailable(
                f"{self.name} is unreachable at {self.base_url} ({exc.__class__.__name__})"
            ) from exc

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and return its JSON body, or raise a VolexError saying why not."""
        response = self._checked(await self.request(method, path, **kwargs))
        return response.json() if response.content else None

    async def post_model(
        self, path: str, body: BaseModel, answer: type[M], *, timeout: float | None = None
    ) -> M:
        """POST `body` and read the answer as an `answer`, or raise a VolexError saying why
        not (an answer that is not one: a 502). Both ways through pydantic's own JSON, no
        dict in between: on the order path's checks, building the dicts and validating them
        was a tenth of execution's CPU."""
        content = body.model_dump_json().encode()
        response = self._checked(await self.request("POST", path, content=content, timeout=timeout))
        return self._read(path, response, answer)

    async def get_model(self, path: str, answer: type[M]) -> M:
        """GET `path` and read the answer as an `answer` (as `post_model` does)."""
        return self._read(path, self._checked(await self.request("GET", path)), answer)

    def _read(self, path: str, response: AgentResponse, answer: type[M]) -> M:
        try:
            return answer.model_validate_json(response.content)
        except ValidationError as exc:
            raise UpstreamError(
                f"{self.name} answered {path} with a body that is not {answer.__name__} "
                f"({exc.error_count()} errors, first: {exc.errors()[0]['msg']})"
            ) from exc

    def _checked(self, response: AgentResponse) -> AgentResponse:
        """The response if it is a success; otherwise the VolexError it amounts to."""
        if response.is_success:
            return response
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

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def _problem_detail(response: AgentResponse) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)
    return str(body)[:200]


class Agents:
    """The fleet as seen from one service: `agents.risk.post("/checks/pre-trade", ...)`.

    Each agent has a connection pool of its own, of at most `connections` connections
    (calls beyond that wait for one). A pooled connection is dropped after `keepalive_s`
    idle, which must be shorter than the peer's own keep-alive: reusing a connection the
    peer is closing fails the call. Close with `aclose()`.
    """

    def __init__(
        self,
        settings: Settings,
        token: str | None,
        *,
        connections: int = 16,
        keepalive_s: float = 5.0,
        timeout: float | None = None,
    ) -> None:
        self._clients = {
            name: AgentClient(
                name,
                settings.url_of(name),
                token,
                connections=connections,
                keepalive_s=keepalive_s,
                timeout=settings.http_timeout if timeout is None else timeout,
            )
            for name in SERVICES
        }

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self._clients.values()))

    async def __aenter__(self) -> Agents:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

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
