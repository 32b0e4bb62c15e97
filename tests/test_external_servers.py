"""With external DATABASE_URL, VAULT_ADDR (+ token) and REDIS_URL, no servers of our own."""

from __future__ import annotations

import json
from pathlib import Path

from common.settings import SERVICES
from tests.conftest import PORT_OFFSET, Stack, clean_env


def test_fleet_runs_on_external_servers(stack: Stack, tmp_path: Path) -> None:
    home = tmp_path / "external-home"
    s = stack.settings
    env = clean_env(
        {
            "VOLEX_HOME": str(home),
            "VOLEX_PORT_BASE": str(18400 + PORT_OFFSET),
            # Ports of embedded servers that must NOT be started: pick free ones to prove it.
            "VOLEX_PG_PORT": str(15499 + PORT_OFFSET),
            "VOLEX_REDIS_PORT": str(16499 + PORT_OFFSET),
            "VOLEX_VAULT_PORT": str(18498 + PORT_OFFSET),
            "DATABASE_URL": s.resolved_database_url(),
            "REDIS_URL": s.resolved_redis_url(),
            "VAULT_ADDR": s.resolved_vault_addr(),
            "VAULT_TOKEN": s.admin_vault_token(),
        }
    )
    external = Stack(home=home, env=env)
    try:
        external.volex("up")
        state = external.state()
        assert {name for name, c in state["components"].items()} == set(SERVICES)
        assert not (home / "postgres").exists() and not (home / "vault" / "init.json").exists()
        assert all(e["healthy"] for e in json.loads(external.volex("status", "--json").stdout))
        # Same Vault: the operator token is the one the embedded fleet uses.
        assert external.volex("token").stdout.strip() == stack.volex("token").stdout.strip()
        assert external.get("execution", "/info", headers=stack.auth()).status_code == 200
        # The admin token given to `volex up` never reaches a service process.
        admin = s.admin_vault_token().encode()
        for component in state["components"].values():
            assert admin not in Path(f"/proc/{component['pid']}/environ").read_bytes()
    finally:
        external.volex("down", check=False)
    assert stack.all_healthy()
