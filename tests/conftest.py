"""Test fixtures: one real fleet (`volex up`) per test session, on ports of its own.

The fleet runs from a fresh VOLEX_HOME under pytest's temp dir with ports that do
not collide with a `make run` on the defaults. Nothing of ours is mocked: the
tests talk to real PostgreSQL, OpenBao and Redis servers and to the nine
services over HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest
from sqlalchemy import Engine, create_engine

from common.settings import SERVICES, Settings
from tests.agents.execution.fake_binance import BackgroundFake, FakeBinance

# VOLEX_TEST_PORT_OFFSET lets two test sessions run side by side (e.g. in two worktrees).
PORT_OFFSET = int(os.environ.get("VOLEX_TEST_PORT_OFFSET", "0"))
TEST_ENV = {
    "VOLEX_PORT_BASE": str(18100 + PORT_OFFSET),
    "VOLEX_PG_PORT": str(15439 + PORT_OFFSET),
    "VOLEX_REDIS_PORT": str(16399 + PORT_OFFSET),
    "VOLEX_VAULT_PORT": str(18300 + PORT_OFFSET),
    # Quick token pick-up so rotation and outage tests do not wait 30 s.
    "VOLEX_SECRETS_REFRESH_INTERVAL": "2",
    # Risk's tests post synthetic portfolios (equity 100,000); execution's real 10,000 USDT
    # snapshots in between would trip the drawdown breaker and halt the fleet mid-test.
    "VOLEX_SNAPSHOT_INTERVAL": "86400",
}
# Variables that would point a test fleet at someone else's servers.
_FOREIGN = ("DATABASE_URL", "REDIS_URL", "VAULT_ADDR", "VAULT_TOKEN")


# The tests run their own fleet: a developer's exported settings (say, an external
# DATABASE_URL from the README) must never point them at real servers.
for _name in [n for n in os.environ if n.startswith("VOLEX_") and n != "VOLEX_TEST_PORT_OFFSET"]:
    os.environ.pop(_name)
for _name in _FOREIGN:
    os.environ.pop(_name, None)


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLEX_") and k not in _FOREIGN}
    env.update(TEST_ENV)
    env.update(extra)
    return env


@dataclass
class Stack:
    """A running fleet and the ways a test reaches into it."""

    home: Path
    env: dict[str, str]
    settings: Settings = field(init=False)
    binance: FakeBinance | None = None  # the fake Binance the fleet's execution talks to
    _token: str | None = None

    def __post_init__(self) -> None:
        self.settings = Settings(
            **{
                "home": self.home,
                "port_base": int(self.env["VOLEX_PORT_BASE"]),
                "pg_port": int(self.env["VOLEX_PG_PORT"]),
                "redis_port": int(self.env["VOLEX_REDIS_PORT"]),
                "vault_port": int(self.env["VOLEX_VAULT_PORT"]),
                "database_url": self.env.get("DATABASE_URL"),
                "redis_url": self.env.get("REDIS_URL"),
                "vault_addr": self.env.get("VAULT_ADDR"),
                "vault_token": self.env.get("VAULT_TOKEN"),
            }
        )

    def volex(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "volex.cli", *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"volex {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def url(self, service: str) -> str:
        return self.settings.url_of(service)

    @property
    def token(self) -> str:
        if self._token is None:
            self._token = self.volex("token").stdout.strip()
        return self._token

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def get(self, service: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", None) or self.auth()
        return httpx.get(self.url(service) + path, headers=headers, timeout=10, **kwargs)

    def post(
        self,
        service: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        timeout: float = 30,
    ) -> httpx.Response:
        """POST `body` as JSON to `service` with the operator's token (or `token`)."""
        return httpx.post(
            self.url(service) + path, json=body, headers=self.auth(token), timeout=timeout
        )

    def health(self, service: str) -> httpx.Response:
        return httpx.get(self.url(service) + "/health", timeout=10)

    def healthy(self, service: str) -> bool:
        """True once `service` answers /health with 200; False while it is (re)starting."""
        try:
            return self.health(service).status_code == 200
        except httpx.HTTPError:
            return False

    def admin_vault(self) -> hvac.Client:
        return hvac.Client(
            url=self.settings.resolved_vault_addr(), token=self.settings.admin_vault_token()
        )

    def engine(self) -> Engine:
        return create_engine(self.settings.resolved_database_url())

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.home / "run" / "state.json").read_text())
        return state

    def wait_for(self, predicate: Any, timeout: float = 60, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def all_healthy(self) -> bool:
        return all(self.healthy(name) for name in SERVICES)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # Not under pytest's own temp root: pytest resets that to 0700 when another session
    # starts, which would lock PostgreSQL's account out of its data directory mid-run.
    base = Path(tempfile.mkdtemp(prefix="volex-test-"))
    home = base / "home"
    # Binance is the one remote exchange we cannot reach: the fleet talks to a fake of its
    # REST API instead (paper trading on its prices, tests/agents/execution).
    binance = BackgroundFake()
    hosts = json.dumps({"binance": binance.server.url})
    fleet = Stack(
        home=home, env=clean_env({"VOLEX_HOME": str(home), "VOLEX_EXCHANGE_API_HOSTS": hosts})
    )
    fleet.binance = binance.server
    try:
        fleet.volex("up")
        yield fleet
    finally:
        fleet.volex("down", check=False)
        binance.stop()
        shutil.rmtree(base, ignore_errors=True)
