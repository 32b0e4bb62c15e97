"""`create_service(name, routers, lifespan=...)`: every agent is built by this one factory.

It gives each service the same skeleton: bearer-token auth on every route but
the public ones, problem+json errors, request ids, JSON logs, Prometheus
metrics, `/health` that checks the service's own dependencies, Swagger UI served
from local files, and a lifespan that opens (and closes) the database engine,
Vault client, Redis and the agent clients (a connection pool per agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import fastapi_offline
import httpx
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from common import __version__
from common.auth import (
    OPERATOR,
    TOKEN_DIGESTS_PATH,
    TOKENS_ROTATED_CHANNEL,
    Authenticator,
    CallerDep,
    api_token_path,
    require_caller,
)
from common.clients import Agents
from common.contracts import CheckListing
from common.db import (
    DB_MAX_OVERFLOW,
    DB_POOL_SIZE,
    LoopDatabase,
    check_database,
    make_engine,
    make_session_factory,
)
from common.errors import PROBLEM_RESPONSES, ServiceUnavailable
from common.events import EventBus
from common.logging import configure_logging, register_secret
from common.metrics import ServiceMetrics
from common.middleware import RequestContextMiddleware, install_error_handlers
from common.settings import SERVICE_DEPENDENCIES, Settings
from common.vault import VaultClient

log = logging.getLogger(__name__)
# uvicorn keeps an idle connection this long; our clients keep theirs for less.
SERVER_KEEP_ALIVE_S = 15
CLIENT_KEEP_ALIVE_S = 5.0
# Connections from one service to each other agent. The checks behind them run one at a
# time (risk and compliance serialise on their locks), so more would only queue there.
AGENT_CONNECTIONS = 16
# Connections of the loop pool: its transactions are short and never wait on a thread.
LOOP_POOL_SIZE = 10
# Allocations (less deallocations) between the garbage collector's young passes, once a
# service has started (CPython's default is 700): a request allocates hundreds.
GEN0_THRESHOLD = 10_000

PUBLIC_PATHS = frozenset({"/health", "/metrics", "/docs", "/openapi.json"})
DOCS_STATIC = "/docs-static"

ServiceLifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
HealthCheck = Callable[[], Awaitable[tuple[bool, str]]]


@dataclass
class Kit:
    """What the factory opened for a service; reachable as `request.app.state.kit`."""

    name: str
    settings: Settings
    dependencies: tuple[str, ...]
    metrics: ServiceMetrics
    authenticator: Authenticator = field(default_factory=Authenticator)
    started_at: float = field(default_factory=time.time)
    engine: Engine | None = None
    session_factory: sessionmaker[Session] | None = None
    # The hot paths' transactions on the event loop (asyncpg): no thread hop, no ORM.
    loop_db: LoopDatabase | None = None
    vault: VaultClient | None = None
    events: EventBus | None = None
    agents: Agents | None = None
    background: list[asyncio.Task[None]] = field(default_factory=list)
    # A service's own readiness checks, reported in /health beside the dependencies.
    checks: dict[str, HealthCheck] = field(default_factory=dict)
    probes: dict[str, asyncio.Future[tuple[bool, str]]] = field(default_factory=dict)
    identity_changed: asyncio.Event = field(default_factory=asyncio.Event)


async def get_kit(request: Request) -> Kit:
    kit: Kit = request.app.state.kit
    return kit


KitDep = Annotated[Kit, Depends(get_kit)]


async def get_loop_db(kit: KitDep) -> LoopDatabase:
    if kit.loop_db is None:
        raise ServiceUnavailable("this service has no database configured")
    return kit.loop_db


async def get_vault(kit: KitDep) -> VaultClient:
    if kit.vault is None:
        raise ServiceUnavailable("this service has no Vault client")
    return kit.vault


async def get_agents(kit: KitDep) -> Agents:
    if kit.agents is None:
        raise ServiceUnavailable("agent clients are not ready")
    return kit.agents


async def get_events(kit: KitDep) -> EventBus:
    if kit.events is None:
        raise ServiceUnavailable("this service has no Redis connection")
    return kit.events


# The hot paths' database: `async with db.transaction() as connection:` on the event loop,
# committed when the block ends, before the response (common.db.LoopDatabase).
LoopDbDep = Annotated[LoopDatabase, Depends(get_loop_db)]
VaultDep = Annotated[VaultClient, Depends(get_vault)]
AgentsDep = Annotated[Agents, Depends(get_agents)]
EventsDep = Annotated[EventBus, Depends(get_events)]
# A batch check's `?checks=`: every rule's result in each decision, or only the failures.
CheckListingQuery = Annotated[
    CheckListing,
    Query(description="all: every rule's result; failed: only the rules that failed"),
]


# --- secrets upkeep ------------------------------------------------------------------
def _load_identity(kit: Kit) -> None:
    """Read the token digests and this service's own token; raise if Vault cannot answer."""
    assert kit.vault is not None
    digests = kit.vault.read(TOKEN_DIGESTS_PATH)
    kit.authenticator.load({str(k): str(v) for k, v in digests.items()})
    own = kit.vault.read(api_token_path(kit.name))
    if kit.agents is not None:
        kit.agents.set_token(str(own["token"]))
    kit.metrics.vault_token_ttl.set(kit.vault.token_ttl_remaining)


async def _keep_identity(kit: Kit) -> None:
    """Renew the Vault token and re-read the tokens, so rotation needs no restart.

    Wakes on its interval, or at once when `volex token --rotate` announces a rotation.
    """
    assert kit.vault is not None
    last_error: str | None = None
    while True:
        kit.identity_changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(kit.identity_changed.wait(), _upkeep_delay(kit))
        try:
            await asyncio.to_thread(_load_identity, kit)
            last_error = None
        except Exception as exc:  # this loop must never die: log once per distinct error
            message = exc.message if isinstance(exc, ServiceUnavailable) else repr(exc)
            if message != last_error:
                log.warning(
                    "vault upkeep failed",
                    extra={"reason": message},
                    exc_info=not isinstance(exc, ServiceUnavailable),
                )
            last_error = message
            if not kit.authenticator.ready:
                kit.authenticator.unavailable_reason = message


async def _watch_rotations(kit: Kit) -> None:
    assert kit.events is not None
    while True:
        try:
            async for _ in kit.events.subscribe(TOKENS_ROTATED_CHANNEL):
                kit.identity_changed.set()
        except Exception:  # Redis away: the periodic refresh still picks rotations up
            await asyncio.sleep(5.0)


def _upkeep_delay(kit: Kit) -> float:
    interval = kit.settings.secrets_refresh_interval
    if kit.vault is not None and kit.vault.token_ttl_remaining > 0:
        # Wake well before the renewal point (two thirds of the TTL).
        interval = min(interval, max(0.5, kit.vault.token_ttl_remaining / 4))
    return interval


# --- lifespan ------------------------------------------------------------------------
def _open(kit: Kit) -> None:
    settings = kit.settings
    if "database" in kit.dependencies:
        url = settings.resolved_database_url()
        register_secret(make_url(url).password)
        kit.engine = make_engine(url)
        kit.session_factory = make_session_factory(kit.engine)
        kit.loop_db = LoopDatabase(url, size=LOOP_POOL_SIZE)
    if "redis" in kit.dependencies:
        url = settings.resolved_redis_url()
        register_secret(httpx.URL(url).password)
        kit.events = EventBus(url, timeout=settings.health_timeout)
    kit.vault = VaultClient(
        settings.resolved_vault_addr(),
        settings.approle_file(kit.name),
        timeout=settings.vault_timeout,
    )
    # A pooled connection must be dropped before the peer's uvicorn closes it (its
    # keep-alive is SERVER_KEEP_ALIVE_S): reusing one it is closing is a ReadError.
    kit.agents = Agents(
        settings, None, connections=AGENT_CONNECTIONS, keepalive_s=CLIENT_KEEP_ALIVE_S
    )


async def _close(kit: Kit) -> None:
    for task in kit.background:
        task.cancel()
    await asyncio.gather(*kit.background, return_exceptions=True)
    if kit.agents is not None:
        await kit.agents.aclose()
    if kit.events is not None:
        await kit.events.close()
    if kit.loop_db is not None:
        await kit.loop_db.close()
    if kit.engine is not None:
        kit.engine.dispose()


def _settle_heap() -> None:
    """Once a service has started: keep the objects it started with (modules, models,
    schemas, routes: ~200,000 of them) out of the garbage collector's passes, and let
    more allocations pass between its young-generation passes (GEN0_THRESHOLD). With
    CPython's defaults, collections took ~9 % of execution's CPU under the order
    benchmark, mostly walking objects that live as long as the process (bench/README.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, *gc.get_threshold()[1:])


def _make_lifespan(
    kit: Kit, service_lifespan: ServiceLifespan | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Blocking work (SQLAlchemy, hvac) runs in threads: size the pool to the DB pool,
        # not to the CPU count, or requests queue for a thread while connections idle.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=DB_POOL_SIZE + DB_MAX_OVERFLOW, thread_name_prefix="io")
        )
        _open(kit)
        if kit.loop_db is not None:
            await kit.loop_db.open()  # (connects on first use)
        try:
            await asyncio.to_thread(_load_identity, kit)
        except ServiceUnavailable as exc:
            kit.authenticator.unavailable_reason = exc.message
            log.warning("starting without Vault", extra={"reason": exc.message})
        kit.background.append(asyncio.create_task(_keep_identity(kit)))
        if kit.events is not None:
            kit.background.append(asyncio.create_task(_watch_rotations(kit)))
        log.info("service started", extra={"port": kit.settings.port_of(kit.name)})
        try:
            if service_lifespan is None:
                _settle_heap()
                yield
            else:
                async with service_lifespan(app):
                    _settle_heap()
                    yield
        finally:
            await _close(kit)
            log.info("service stopped")

    return lifespan


# --- health --------------------------------------------------------------------------
class DependencyHealth(BaseModel):
    ok: bool
    detail: str
    latency_ms: float


class Health(BaseModel):
    service: str
    status: str
    version: str
    uptime_s: float
    dependencies: dict[str, DependencyHealth]


async def _probe(kit: Kit, dependency: str) -> tuple[bool, str]:
    timeout = kit.settings.health_timeout
    try:
        if dependency == "database":
            assert kit.engine is not None
            await asyncio.to_thread(check_database, kit.engine)
            return True, "ok"
        if dependency == "redis":
            assert kit.events is not None
            await asyncio.wait_for(kit.events.ping(), timeout)
            return True, "ok"
        if dependency in kit.checks:
            return await kit.checks[dependency]()
        return await _check_vault(kit)
    except Exception as exc:  # any failure of a dependency is reported, not raised
        return False, f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:160]}"


async def _check(kit: Kit, dependency: str) -> DependencyHealth:
    """One probe in flight per dependency: a hung database does not pile up threads,
    later /health calls wait on the same probe (up to the timeout) instead."""
    started = time.perf_counter()
    timeout = kit.settings.health_timeout * (2 if dependency == "vault" else 1)
    task = kit.probes.get(dependency)
    if task is None or task.done():
        task = asyncio.ensure_future(_probe(kit, dependency))
        kit.probes[dependency] = task
    try:
        ok, detail = await asyncio.wait_for(asyncio.shield(task), timeout)
    except TimeoutError:
        ok, detail = False, f"no answer within {timeout}s"
    kit.metrics.dependency_up.labels(dependency).set(1 if ok else 0)
    return DependencyHealth(
        ok=ok, detail=detail, latency_ms=round((time.perf_counter() - started) * 1000, 2)
    )


async def _check_vault(kit: Kit) -> tuple[bool, str]:
    assert kit.vault is not None
    status = await asyncio.to_thread(kit.vault.status)
    if status.ok and not kit.authenticator.ready:
        try:
            await asyncio.to_thread(_load_identity, kit)
        except ServiceUnavailable as exc:
            return False, exc.message
    kit.metrics.vault_token_ttl.set(kit.vault.token_ttl_remaining)
    return status.ok, status.detail


def _kit_router(kit: Kit) -> tuple[APIRouter, APIRouter]:
    public = APIRouter(tags=["service"])
    private = APIRouter(tags=["service"])

    @public.get(
        "/health",
        response_model=Health,
        responses={503: {"model": Health, "description": "a dependency is down"}},
    )
    async def health() -> JSONResponse:
        """Liveness and the state of each of this service's dependencies."""
        names = [*kit.dependencies, *kit.checks]
        checks = await asyncio.gather(*(_check(kit, name) for name in names))
        dependencies = dict(zip(names, checks, strict=True))
        ok = all(check.ok for check in checks)
        body = Health(
            service=kit.name,
            status="ok" if ok else "unavailable",
            version=__version__,
            uptime_s=round(time.time() - kit.started_at, 1),
            dependencies=dependencies,
        )
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @public.get("/metrics", response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics for this service."""
        return Response(generate_latest(kit.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @private.get("/info")
    def info(caller: CallerDep) -> dict[str, Any]:
        """Who this service is and who you are to it (a quick check of your token)."""
        return {
            "service": kit.name,
            "version": __version__,
            "pid": os.getpid(),
            "started_at": kit.started_at,
            "uptime_s": round(time.time() - kit.started_at, 1),
            "caller": {"kind": caller.kind, "name": caller.name},
            "is_operator": caller.name == OPERATOR,
        }

    return public, private


def _install_docs(app: FastAPI, name: str) -> None:
    static_dir = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_STATIC, StaticFiles(directory=static_dir), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"VolexSwarm {name} — API",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )


# --- the factory ---------------------------------------------------------------------
def create_service(
    name: str,
    routers: Sequence[APIRouter] = (),
    *,
    lifespan: ServiceLifespan | None = None,
    settings: Settings | None = None,
    description: str = "",
) -> FastAPI:
    """Build the FastAPI app for service `name`; its routers all require a bearer token."""
    settings = settings or Settings()
    configure_logging(name, settings.log_level)
    kit = Kit(
        name=name,
        settings=settings,
        dependencies=SERVICE_DEPENDENCIES[name],
        metrics=ServiceMetrics(name, __version__),
    )
    app = FastAPI(
        title=f"VolexSwarm {name}",
        version=__version__,
        description=description,
        lifespan=_make_lifespan(kit, lifespan),
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.kit = kit
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=kit.metrics)
    _install_docs(app, name)
    public, private = _kit_router(kit)
    app.include_router(public)
    app.include_router(private, responses=PROBLEM_RESPONSES)
    for router in routers:
        # Auth is put on each router here, so a service cannot add a public route by mistake.
        app.include_router(
            router, dependencies=[Depends(require_caller)], responses=PROBLEM_RESPONSES
        )
    return app
