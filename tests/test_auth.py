"""Every non-public route of every service refuses a missing or wrong token."""

from __future__ import annotations

import re

import httpx
import pytest

from common.auth import api_token_path
from common.settings import SERVICES
from tests.conftest import Stack

PUBLIC = {"/health", "/metrics", "/docs", "/openapi.json"}


def _routes(stack: Stack, service: str) -> list[tuple[str, str]]:
    spec = httpx.get(stack.url(service) + "/openapi.json", timeout=10).json()
    routes = []
    for path, methods in spec["paths"].items():
        for method in methods:
            if path not in PUBLIC:
                routes.append((method.upper(), re.sub(r"\{[^}]+\}", "x", path)))
    return routes


@pytest.mark.parametrize("service", SERVICES)
def test_private_routes_require_a_valid_token(stack: Stack, service: str) -> None:
    routes = _routes(stack, service)
    assert ("GET", "/info") in routes
    wrong_tokens = [
        None,
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": f"Bearer {stack.token}x"},
        {"Authorization": f"Basic {stack.token}"},
        {"Authorization": "Bearer"},
    ]
    for method, path in routes:
        for headers in wrong_tokens:
            response = httpx.request(method, stack.url(service) + path, headers=headers, timeout=10)
            assert response.status_code == 401, (service, method, path, headers, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            problem = response.json()
            assert problem["status"] == 401 and "token" in problem["detail"]
            assert response.headers.get("www-authenticate") == "Bearer"
        ok = httpx.request(method, stack.url(service) + path, headers=stack.auth(), timeout=10)
        assert ok.status_code != 401, (service, method, path)


@pytest.mark.parametrize("service", SERVICES)
def test_public_routes_need_no_token(stack: Stack, service: str) -> None:
    for path in ("/health", "/metrics", "/openapi.json", "/docs"):
        assert httpx.get(stack.url(service) + path, timeout=10).status_code == 200


def test_a_service_token_identifies_that_service(stack: Stack) -> None:
    vault = stack.admin_vault()
    token = vault.secrets.kv.v2.read_secret_version(
        path=api_token_path("execution"), mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]["token"]
    caller = stack.get("risk", "/info", headers=stack.auth(token)).json()["caller"]
    assert caller == {"kind": "service", "name": "execution"}
    operator = stack.get("risk", "/info").json()["caller"]
    assert operator == {"kind": "operator", "name": "operator"}


def test_meta_reports_fleet_health(stack: Stack) -> None:
    body = stack.get("meta", "/agents/health").json()
    assert body["healthy"] is True
    assert [a["name"] for a in body["agents"]] == list(SERVICES)
    assert all(a["dependencies"] for a in body["agents"])


def test_rotated_operator_token_replaces_the_old_one(stack: Stack) -> None:
    old = stack.token
    new = stack.volex("token", "--rotate").stdout.strip()
    assert new and new != old
    stack._token = new

    def switched() -> bool:
        return all(
            stack.get(name, "/info", headers=stack.auth(old)).status_code == 401
            and stack.get(name, "/info", headers=stack.auth(new)).status_code == 200
            for name in ("execution", "webui")
        )

    stack.wait_for(switched, timeout=30, what="services to accept only the rotated token")
