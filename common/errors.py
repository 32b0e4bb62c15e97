"""One error family; every error leaves a service as `application/problem+json`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

PROBLEM_JSON = "application/problem+json"


class VolexError(Exception):
    """An error a caller can act on: the message says what happened and what to fix."""

    status_code = 500
    title = "Internal error"

    def __init__(self, message: str, *, status_code: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.extra = extra


class BadRequest(VolexError):
    status_code = 400
    title = "Bad request"


class Unauthorized(VolexError):
    status_code = 401
    title = "Unauthorized"


class Forbidden(VolexError):
    status_code = 403
    title = "Forbidden"


class NotFound(VolexError):
    status_code = 404
    title = "Not found"


class Conflict(VolexError):
    status_code = 409
    title = "Conflict"


class Unprocessable(VolexError):
    status_code = 422
    title = "Unprocessable request"


class UpstreamError(VolexError):
    """Another agent answered with an error or garbage."""

    status_code = 502
    title = "Upstream error"


class ServiceUnavailable(VolexError):
    """A dependency (database, Vault, Redis, another agent) cannot be used right now."""

    status_code = 503
    title = "Service unavailable"


class Problem(BaseModel):
    """RFC 9457 problem details, as every VolexSwarm error is rendered."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = None


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing or wrong bearer token"},
    503: {"model": Problem, "description": "A dependency is unavailable"},
}
