"""A second, live execution service for end-to-end tests of live trading.

The session fleet's execution trades real exchanges on paper (live trading is off), so
live orders get an execution process of their own: `VOLEX_LIVE_TRADING=1`, keys from the
fleet's OpenBao, the fleet's risk, compliance and Redis, but its own database (a fresh one
in the fleet's PostgreSQL, migrated) and its own home (its own `sim`): it shares no
order, position or simulated account with the fleet's execution. Each exchange it
trades on is a fake Binance of its own (`fakes`), reached through
`VOLEX_EXCHANGE_API_HOSTS`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine

from common import migrations
from tests.agents.execution.fake_binance import BackgroundFake, FakeBinance
from tests.conftest import Stack


class LiveExecution:
    def __init__(self, stack: Stack, exchanges: tuple[str, ...]) -> None:
        self.stack = stack
        self.backgrounds = {name: BackgroundFake() for name in exchanges}
        self.fakes: dict[str, FakeBinance] = {n: b.server for n, b in self.backgrounds.items()}
        self.base = Path(tempfile.mkdtemp(prefix="volex-live-"))
        self.database = f"volex_live_{uuid.uuid4().hex[:8]}"
        self.process: subprocess.Popen[bytes] | None = None
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        for name in self.fakes:
            self.stack.volex(
                "secrets", "set-exchange", name, input=f"{name}-live-key\n{name}-live-secret\n"
            )
        database_url = self._create_database()
        home = self.base / "home"
        approle = home / "vault" / "approle"
        approle.mkdir(parents=True)
        fleet = self.stack.settings
        shutil.copy(fleet.approle_file("execution"), approle / "execution.json")
        env = {
            **self.stack.env,
            "VOLEX_HOME": str(home),
            "DATABASE_URL": database_url,
            "REDIS_URL": fleet.resolved_redis_url(),
            "VOLEX_LIVE_TRADING": "1",
            "VOLEX_EXCHANGE_API_HOSTS": json.dumps({n: f.url for n, f in self.fakes.items()}),
        }
        self.log = self.base / "execution.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "agents.execution.app:app",
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.stack.wait_for(self._healthy, timeout=90, what="the live execution service")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for background in self.backgrounds.values():
            background.stop()
        with self._admin().connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
        shutil.rmtree(self.base, ignore_errors=True)

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"live execution exited:\n{self.log.read_text()[-4000:]}")
        try:
            return httpx.get(self.url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _admin(self) -> Engine:
        return create_engine(
            self.stack.settings.resolved_database_url(), isolation_level="AUTOCOMMIT"
        )

    def _create_database(self) -> str:
        with self._admin().connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.database}"'))
        url = make_url(self.stack.settings.resolved_database_url()).set(database=self.database)
        rendered = url.render_as_string(hide_password=False)
        migrations.upgrade(rendered)
        self.database_url = rendered
        return rendered

    # --- reaching in ---------------------------------------------------------------------
    def engine(self) -> Engine:
        return create_engine(self.database_url)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.stack.auth(), timeout=30, **kwargs)

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.stack.auth(), timeout=60)

    def position(self, exchange: str, symbol: str) -> dict[str, Any] | None:
        response = self.get(f"/positions/{exchange}")
        assert response.status_code == 200, response.text
        rows = response.json()
        found = [p for p in rows if p["symbol"] == symbol and Decimal(p["amount"]) != 0]
        return found[0] if found else None

    def orders(self, exchange: str, symbol: str) -> list[dict[str, Any]]:
        rows = self.get(f"/orders/{exchange}", params={"symbol": symbol, "limit": 50}).json()
        return sorted(rows, key=lambda o: o["id"])

    def wait_for(
        self, predicate: Any, timeout: float = 60, what: str = "condition", state: Any = None
    ) -> Any:
        """Poll `predicate`; on a timeout, say what `state()` shows and the service logged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        seen = f"\nstate: {state()}" if state is not None else ""
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}{seen}\n"
            f"log:\n{self.log.read_text()[-4000:]}"
        )
