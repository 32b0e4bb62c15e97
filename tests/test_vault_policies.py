"""Least privilege: each service's AppRole may read only what it needs and write nothing."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import hvac
import hvac.exceptions
import pytest

from common.auth import api_token_path
from common.settings import SERVICES
from tests.conftest import Stack


def _login(stack: Stack, service: str) -> hvac.Client:
    path = stack.settings.approle_file(service)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = json.loads(path.read_text())
    client = hvac.Client(url=stack.settings.resolved_vault_addr())
    client.auth.approle.login(role_id=creds["role_id"], secret_id=creds["secret_id"])
    return client


@pytest.fixture(scope="module")
def exchange_secret(stack: Stack) -> None:
    stack.admin_vault().secrets.kv.v2.create_or_update_secret(
        path="exchanges/x",
        secret={"api_key": "policy-key", "secret": "policy-secret"},
        mount_point="secret",
    )


def _read(client: hvac.Client, path: str) -> dict[str, str]:
    data: dict[str, str] = client.secrets.kv.v2.read_secret_version(
        path=path, mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]
    return data


@pytest.mark.parametrize("service", SERVICES)
def test_policy_matrix(stack: Stack, service: str, exchange_secret: None) -> None:
    client = _login(stack, service)
    if service == "execution":
        assert _read(client, "exchanges/x")["api_key"] == "policy-key"
    else:
        with pytest.raises(hvac.exceptions.Forbidden):
            _read(client, "exchanges/x")
    with pytest.raises(hvac.exceptions.Forbidden):
        client.sys.create_or_update_acl_policy(
            name="evil", policy='path "*" {capabilities=["sudo"]}'
        )
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.create_or_update_secret(
            path=api_token_path(service), secret={"token": "mine now"}, mount_point="secret"
        )
    # Its own token and the digests, yes; anybody else's token or role credentials, no.
    assert _read(client, api_token_path(service))["token"]
    assert set(_read(client, "volex/api-token-digests")) == {"operator", *SERVICES}
    other = "risk" if service != "risk" else "meta"
    for forbidden in (api_token_path(other), api_token_path("operator")):
        with pytest.raises(hvac.exceptions.Forbidden):
            _read(client, forbidden)
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.approle.read_role_id(f"volex-{other}")
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.approle.generate_secret_id(f"volex-{other}")


def test_no_running_service_holds_the_root_token(stack: Stack) -> None:
    root = stack.settings.admin_vault_token()
    for service in SERVICES:
        env = (stack.home / "logs" / f"{service}.log").read_text()
        assert root not in env
    for pid in [c["pid"] for c in stack.state()["components"].values() if c["pid"]]:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert root.encode() not in environ


def test_init_file_is_private(stack: Stack) -> None:
    assert stat.S_IMODE(stack.settings.vault_init_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(stack.settings.postgres_password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(stack.settings.redis_password_file.stat().st_mode) == 0o600
