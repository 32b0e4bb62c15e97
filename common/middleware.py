"""Request ids, access logs and metrics (one pure-ASGI middleware), and the error handlers."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import PROBLEM_JSON, Problem, VolexError
from common.logging import request_id_var
from common.metrics import ServiceMetrics

log = logging.getLogger("volex.access")
errors_log = logging.getLogger("volex.errors")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_PATHS = frozenset({"/health", "/metrics"})


class RequestContextMiddleware:
    """Give each request an id (or keep a well-formed incoming one), time it, log it.

    The access line has the method, the route template, the status and the time:
    never headers, bodies or query strings, which may carry tokens.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        status_sent = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status = message["status"]
                status_sent = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Handled here rather than by Starlette's outermost handler, so that even a
            # crash answers with problem+json that carries the request id.
            errors_log.exception("unhandled error")
            if status_sent:
                raise
            status = 500
            await _send_problem(send, request_id, scope["path"])
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            self.metrics.observe(scope["method"], template, status, elapsed)
            level = logging.DEBUG if scope["path"] in _QUIET_PATHS else logging.INFO
            log.log(
                level,
                "request",
                extra={
                    "method": scope["method"],
                    "route": template,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                },
            )


async def _send_problem(send: Send, request_id: str, path: str) -> None:
    problem = Problem(
        title="Internal error",
        status=500,
        detail=f"the service failed unexpectedly; quote request id {request_id}",
        instance=path,
        request_id=request_id,
    )
    body = problem.model_dump_json(exclude_none=True).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def problem_response(
    request: Request, status: int, title: str, detail: str, **extra: Any
) -> JSONResponse:
    problem = Problem(
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        request_id=request_id_var.get(),
        **extra,
    )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VolexError)
    async def volex_error(request: Request, exc: VolexError) -> JSONResponse:
        if exc.status_code >= 500:
            errors_log.warning("request failed: %s", exc.message)
        # An error may list what is wrong item by item: [{"field": ..., "message": ...}].
        errors = exc.extra.get("errors")
        return problem_response(request, exc.status_code, exc.title, exc.message, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        return problem_response(request, exc.status_code, title, detail)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field(err.get("loc", ())), "message": err.get("msg", "invalid")}
            for err in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
        return problem_response(request, 422, "Invalid request", detail, errors=errors)
