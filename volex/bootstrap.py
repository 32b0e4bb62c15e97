"""Vault bootstrap: KV v2, AppRole, one least-privilege policy and role per service, API tokens.

Idempotent: run by every `volex up` (and by `volex bootstrap` against an external
Vault). What exists is checked and kept; what is missing is created.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import hvac
import hvac.exceptions

from common.auth import OPERATOR, TOKEN_DIGESTS_PATH, api_token_path, digest, new_token
from common.logging import register_secret
from common.settings import SERVICES, Settings
from volex.servers import write_private

log = logging.getLogger(__name__)

KV_MOUNT = "secret"
APPROLE_MOUNT = "approle"


def policy_name(service: str) -> str:
    return f"volex-{service}"


def policy_for(service: str) -> str:
    """What `service` may do in Vault: read its own things, write nothing."""
    rules = [
        f"# {policy_name(service)}: written by `volex up`; read-only by design.",
        'path "secret/data/volex/api-token-digests" { capabilities = ["read"] }',
        f'path "secret/data/{api_token_path(service)}" {{ capabilities = ["read"] }}',
        f'path "secret/data/volex/services/{service}/*" {{ capabilities = ["read"] }}',
    ]
    if service == "execution":
        # Only execution talks to exchanges, so only it may read their keys.
        rules += [
            'path "secret/data/exchanges/*" { capabilities = ["read"] }',
            'path "secret/metadata/exchanges" { capabilities = ["list"] }',
            'path "secret/metadata/exchanges/*" { capabilities = ["read", "list"] }',
        ]
    return "\n".join(rules) + "\n"


@dataclass
class BootstrapReport:
    created: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.created.append(what)
        log.info("bootstrap created %s", what)


def _ensure_engines(client: hvac.Client, report: BootstrapReport) -> None:
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    kv = mounts.get(f"{KV_MOUNT}/")
    if kv is None:
        client.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"})
        report.note("kv-v2 engine at secret/")
    elif kv.get("type") != "kv" or (kv.get("options") or {}).get("version") != "2":
        raise RuntimeError("Vault has secret/ mounted, but not as KV version 2; move it away")
    auth_methods = client.sys.list_auth_methods()["data"]
    if f"{APPROLE_MOUNT}/" not in auth_methods:
        client.sys.enable_auth_method("approle", path=APPROLE_MOUNT)
        report.note("approle auth method")


def _approle_login_works(client: hvac.Client, role_id: str, secret_id: str) -> bool:
    probe = hvac.Client(url=client.url, timeout=10)
    try:
        probe.auth.approle.login(role_id=role_id, secret_id=secret_id)
    except hvac.exceptions.VaultError:
        return False
    token = probe.token
    probe.auth.token.revoke_self()
    return bool(token)


def _ensure_service_identity(
    client: hvac.Client, settings: Settings, service: str, report: BootstrapReport
) -> None:
    name = policy_name(service)
    client.sys.create_or_update_acl_policy(name=name, policy=policy_for(service))
    client.auth.approle.create_or_update_approle(
        role_name=name,
        token_policies=[name],
        token_ttl=f"{settings.vault_token_ttl}s",
        token_max_ttl=f"{settings.vault_token_max_ttl}s",
        secret_id_ttl="0",  # noqa: S106 - a lifetime, not a secret
        secret_id_num_uses=0,
        token_type="service",  # noqa: S106 - a kind, not a secret
        mount_point=APPROLE_MOUNT,
    )
    role_id = client.auth.approle.read_role_id(name, mount_point=APPROLE_MOUNT)["data"]["role_id"]
    path = settings.approle_file(service)
    if path.exists():
        saved = json.loads(path.read_text())
        register_secret(saved.get("secret_id"))
        if saved.get("role_id") == role_id and _approle_login_works(
            client, role_id, saved.get("secret_id", "")
        ):
            return
    secret_id = client.auth.approle.generate_secret_id(name, mount_point=APPROLE_MOUNT)["data"][
        "secret_id"
    ]
    register_secret(secret_id)
    write_private(path, json.dumps({"role": name, "role_id": role_id, "secret_id": secret_id}))
    report.note(f"AppRole credentials for {service}")


def _read(client: hvac.Client, path: str) -> dict[str, str] | None:
    try:
        response = client.secrets.kv.v2.read_secret_version(
            path=path, mount_point=KV_MOUNT, raise_on_deleted_version=True
        )
    except hvac.exceptions.InvalidPath:
        return None
    data: dict[str, str] = response["data"]["data"]
    return data


def _ensure_api_tokens(client: hvac.Client, report: BootstrapReport) -> None:
    digests: dict[str, str] = {}
    for identity in (OPERATOR, *SERVICES):
        stored = _read(client, api_token_path(identity))
        if stored is None or not stored.get("token"):
            stored = {"token": new_token()}
            client.secrets.kv.v2.create_or_update_secret(
                path=api_token_path(identity), secret=stored, mount_point=KV_MOUNT
            )
            report.note(f"API token for {identity}")
        register_secret(stored["token"])
        digests[identity] = digest(stored["token"])
    if _read(client, TOKEN_DIGESTS_PATH) != digests:
        client.secrets.kv.v2.create_or_update_secret(
            path=TOKEN_DIGESTS_PATH, secret=digests, mount_point=KV_MOUNT
        )
        report.note("token digests")


def bootstrap_vault(settings: Settings) -> BootstrapReport:
    """Bring Vault to the state the fleet needs; safe to run any number of times."""
    client = hvac.Client(
        url=settings.resolved_vault_addr(), token=settings.admin_vault_token(), timeout=10
    )
    report = BootstrapReport()
    _ensure_engines(client, report)
    for service in SERVICES:
        _ensure_service_identity(client, settings, service, report)
    _ensure_api_tokens(client, report)
    return report


def rotate_api_token(settings: Settings, identity: str) -> None:
    """Replace one API token; services pick the change up within their refresh interval."""
    client = hvac.Client(
        url=settings.resolved_vault_addr(), token=settings.admin_vault_token(), timeout=10
    )
    client.secrets.kv.v2.create_or_update_secret(
        path=api_token_path(identity), secret={"token": new_token()}, mount_point=KV_MOUNT
    )
    _ensure_api_tokens(client, BootstrapReport())
