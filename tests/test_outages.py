"""A service whose dependency goes away says so on /health, keeps running, and recovers."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Stack


def _deps(stack: Stack, service: str) -> tuple[int, dict[str, Any]]:
    response = stack.health(service)
    return response.status_code, response.json()["dependencies"]


@pytest.mark.parametrize(
    ("server", "dependency"),
    [("postgres", "database"), ("redis", "redis"), ("vault", "vault")],
)
def test_dependency_outage_is_reported_and_recovers_without_restart(
    stack: Stack, server: str, dependency: str
) -> None:
    pid = stack.get("execution", "/info").json()["pid"]
    stack.volex("stop", server)
    try:

        def down() -> bool:
            code, deps = _deps(stack, "execution")
            return code == 503 and deps[dependency]["ok"] is False

        stack.wait_for(down, timeout=30, what=f"/health to report {dependency} down")
        _, deps = _deps(stack, "execution")
        assert [name for name, dep in deps.items() if not dep["ok"]] == [dependency]
        assert deps[dependency]["detail"]
        # The service is still up and still authenticates callers (digests are cached).
        assert stack.get("execution", "/info").status_code == 200
    finally:
        stack.volex("start", server)

    stack.wait_for(
        lambda: stack.healthy("execution"),
        timeout=60,
        what=f"execution to recover from the {server} outage",
    )
    assert stack.get("execution", "/info").json()["pid"] == pid  # recovered, not restarted
    assert stack.wait_for(stack.all_healthy, timeout=60, what="whole fleet healthy")
