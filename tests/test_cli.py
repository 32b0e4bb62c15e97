"""The `volex` command's answers to good and bad input."""

from __future__ import annotations

import json

from tests.conftest import Stack


def test_set_exchange_rejects_bad_input(stack: Stack) -> None:
    bad_id = stack.volex("secrets", "set-exchange", "Not An Id", input="k\ns\n", check=False)
    assert bad_id.returncode == 2 and "not an exchange id" in bad_id.stderr
    empty = stack.volex("secrets", "set-exchange", "okx", input="\n\n", check=False)
    assert empty.returncode == 2 and "API key is empty" in empty.stderr
    # Nothing half-written: okx has no entry.
    assert "okx" not in stack.volex("secrets", "list", check=False).stdout


def test_set_exchange_with_passphrase(stack: Stack) -> None:
    stack.volex(
        "secrets",
        "set-exchange",
        "coinbase",
        "--passphrase",
        input="cb-key-123\ncb-secret-456\ncb-pass-789\n",
    )
    stored = stack.admin_vault().secrets.kv.v2.read_secret_version(
        path="exchanges/coinbase", mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]
    assert stored == {"api_key": "cb-key-123", "secret": "cb-secret-456", "password": "cb-pass-789"}


def test_logs_shows_a_service_log_and_refuses_unknown_ones(stack: Stack) -> None:
    out = stack.volex("logs", "risk", "-n", "5").stdout.strip().splitlines()
    assert 0 < len(out) <= 5
    assert all(json.loads(line)["service"] == "risk" for line in out if line.startswith("{"))
    bad = stack.volex("logs", "nope", check=False)
    assert bad.returncode == 2 and "unknown component" in bad.stderr


def test_status_table_lists_every_service(stack: Stack) -> None:
    out = stack.volex("status").stdout
    for name in ("meta", "execution", "webui", "/docs"):
        assert name in out
