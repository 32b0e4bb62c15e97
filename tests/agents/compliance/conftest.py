"""Helpers for the compliance tests: tokens, calls over HTTP, policies put back after each test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from common.auth import api_token_path
from tests.conftest import Stack

SERVICE = "compliance"
DEFAULT_POLICY: dict[str, Any] = {
    "restricted_symbols": [],
    "allowed_exchanges": ["sim"],
    "trading_windows": [],
    "max_orders_per_day": None,
}


@cache
def _service_token(vault_url: str, admin: str, service: str) -> str:
    import hvac

    client = hvac.Client(url=vault_url, token=admin)
    secret = client.secrets.kv.v2.read_secret_version(
        path=api_token_path(service), mount_point="secret", raise_on_deleted_version=True
    )
    return str(secret["data"]["data"]["token"])


def service_token(stack: Stack, service: str) -> str:
    settings = stack.settings
    return _service_token(settings.resolved_vault_addr(), settings.admin_vault_token(), service)


def call(
    stack: Stack, method: str, path: str, *, token: str | None = None, **kwargs: Any
) -> httpx.Response:
    headers = {**stack.auth(token), **kwargs.pop("headers", {})}
    return httpx.request(method, stack.url(SERVICE) + path, headers=headers, timeout=30, **kwargs)


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def order(**overrides: Any) -> dict[str, Any]:
    """A PolicyRequest that breaks no rule of the default policy."""
    body: dict[str, Any] = {
        "client_order_id": unique("coid-"),
        "exchange": "sim",
        "symbol": "BTC/USDT",
        "side": "buy",
        "type": "limit",
        "amount": "0.5",
        "price": "100",
        "reference_price": "100",
        "resting_orders": [],
        "requested_by": "operator",
    }
    body.update(overrides)
    return body


def rule(decision: dict[str, Any], name: str) -> dict[str, Any]:
    [result] = [c for c in decision["checks"] if c["rule"] == name]
    return result


@pytest.fixture(scope="session")
def engine(stack: Stack) -> Iterator[Engine]:
    engine = stack.engine()
    yield engine
    engine.dispose()


@pytest.fixture
def set_policy(stack: Stack) -> Iterator[Callable[..., dict[str, Any]]]:
    """Put a policy (the default plus `changes`) for one test; the default is restored after."""

    def put(**changes: Any) -> dict[str, Any]:
        response = call(stack, "PUT", "/policies", json={**DEFAULT_POLICY, **changes})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    yield put
    put()
