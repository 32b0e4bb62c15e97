"""No secret value ever reaches a log file under VOLEX_HOME."""

from __future__ import annotations

import json

import httpx

from common.auth import api_token_path
from common.settings import SERVICES
from tests.conftest import Stack


def _every_log(stack: Stack) -> dict[str, str]:
    files = [*(stack.home / "logs").glob("*.log"), stack.home / "vault" / "audit.log"]
    return {str(path): path.read_text(errors="replace") for path in files if path.exists()}


def test_secret_values_never_appear_in_logs(stack: Stack) -> None:
    exchange = {"api_key": "LOGCHECK-KEY-8f3a1c", "secret": "LOGCHECK-SECRET-77d2e9"}
    stack.volex(
        "secrets",
        "set-exchange",
        "logcheck",
        input=f"{exchange['api_key']}\n{exchange['secret']}\n",
    )
    listing = stack.volex("secrets", "list").stdout
    assert "logcheck" in listing
    assert exchange["api_key"] not in listing and exchange["secret"] not in listing

    vault = stack.admin_vault()
    # Execution is the one service allowed to read exchange keys: make it read them.
    creds = json.loads(stack.settings.approle_file("execution").read_text())
    from common.vault import VaultClient

    client = VaultClient(
        stack.settings.resolved_vault_addr(), stack.settings.approle_file("execution")
    )
    assert client.read("exchanges/logcheck") == exchange

    # Traffic that carries tokens: good, bad, in headers and (wrongly) in query strings.
    for name in SERVICES:
        stack.get(name, "/info")
        httpx.get(stack.url(name) + f"/info?token={stack.token}", timeout=10)
        httpx.get(
            stack.url(name) + "/info", headers=stack.auth("wrong" + exchange["secret"]), timeout=10
        )
    stack.volex("restart", "execution")
    stack.wait_for(
        lambda: stack.healthy("execution"), timeout=60, what="execution back after restart"
    )

    secrets = {
        "exchange api key": exchange["api_key"],
        "exchange secret": exchange["secret"],
        "operator token": stack.token,
        "vault root token": stack.settings.admin_vault_token(),
        "postgres password": stack.settings.postgres_password_file.read_text().strip(),
        "redis password": stack.settings.redis_password_file.read_text().strip(),
        "execution secret_id": creds["secret_id"],
    }
    unseal = json.loads(stack.settings.vault_init_file.read_text())["unseal_keys"]
    secrets.update({f"unseal key {i}": key for i, key in enumerate(unseal)})
    for service in SERVICES:
        token = vault.secrets.kv.v2.read_secret_version(
            path=api_token_path(service), mount_point="secret", raise_on_deleted_version=True
        )["data"]["data"]["token"]
        secrets[f"{service} token"] = token

    logs = _every_log(stack)
    assert any("audit.log" in path for path in logs)
    assert any(path.endswith("execution.log") for path in logs)
    leaks = [
        (what, path)
        for what, value in secrets.items()
        for path, text in logs.items()
        if value in text
    ]
    assert leaks == []
