"""One agent of the test fleet over HTTP, plus a look into the database: the base of the
per-agent test clients (`Risk`, `Backtest`, `Signal` in tests/agents/*/conftest.py)."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import text

from tests.conftest import Stack


class AgentClient:
    """Calls `service` with the operator's token (or `token=`); `ok` checks the status."""

    service = ""  # set by each subclass
    timeout = 30.0

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.url = stack.url(self.service)

    def request(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {**self.stack.auth(token), **kwargs.pop("headers", {})}
        return httpx.request(
            method, self.url + path, headers=headers, timeout=self.timeout, **kwargs
        )

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, json=body, **kwargs)

    def put(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, json=body, **kwargs)

    def ok(self, response: httpx.Response, status: int = 200) -> Any:
        assert response.status_code == status, response.text
        return response.json()

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Rows of a read-only SQL query, as dicts."""
        return self.execute(text(sql), params)

    def execute(self, statement: Any, params: Any = None) -> list[dict[str, Any]]:
        """Run a statement in its own committed transaction; its rows as dicts, if any."""
        engine = self.stack.engine()
        try:
            with engine.begin() as conn:
                result = (
                    conn.execute(statement, params)
                    if params is not None
                    else conn.execute(statement)
                )
                return [dict(row._mapping) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()
