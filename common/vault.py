"""Vault (OpenBao) for a service: AppRole login, KV v2 reads, renewal, in-memory cache.

A service logs in with its own role (role_id/secret_id in a 0600 file written by
the bootstrap), renews its token before it expires and logs in again when a
renewal fails. Secrets are cached in memory only and registered for log
redaction. When Vault is unreachable or sealed the service keeps running:
`/health` says so and callers of `read(..., fresh=True)` get a 503 naming Vault.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests

from common.errors import ServiceUnavailable
from common.logging import register_secret

log = logging.getLogger(__name__)

KV_MOUNT = "secret"
RENEW_AT_FRACTION = 2 / 3  # renew once two thirds of the token's TTL has passed


class SecretNotFound(ServiceUnavailable):
    title = "Secret not found"


class VaultAccessDenied(ServiceUnavailable):
    title = "Vault refused access"


@dataclass
class VaultStatus:
    ok: bool
    detail: str


@dataclass
class _Token:
    value: str
    ttl: int
    obtained_at: float
    renewable: bool

    def renew_due(self) -> bool:
        return time.monotonic() - self.obtained_at >= self.ttl * RENEW_AT_FRACTION

    def expired(self) -> bool:
        return time.monotonic() - self.obtained_at >= self.ttl


@dataclass
class VaultCounters:
    logins: int = 0
    renewals: int = 0
    failed_renewals: int = 0
    reads: int = 0


@dataclass
class _CachedSecret:
    data: dict[str, Any]
    loaded_at: float = field(default_factory=time.monotonic)


class VaultClient:
    """One service's view of Vault, holding its AppRole token and the secrets it read."""

    def __init__(self, addr: str, role_file: Path, *, timeout: float = 3.0) -> None:
        self.addr = addr
        self.role_file = role_file
        self.timeout = timeout
        self.counters = VaultCounters()
        self._token: _Token | None = None
        self._cache: dict[str, _CachedSecret] = {}
        self._lock = threading.RLock()

    # --- login and renewal ------------------------------------------------------------
    def _client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token, timeout=math.ceil(self.timeout))

    def _credentials(self) -> tuple[str, str]:
        try:
            data = json.loads(self.role_file.read_text())
        except FileNotFoundError as exc:
            raise ServiceUnavailable(
                f"Vault credentials file {self.role_file} is missing: run `volex up` "
                "(or `volex bootstrap` against an external Vault)"
            ) from exc
        register_secret(data.get("secret_id"))
        return str(data["role_id"]), str(data["secret_id"])

    def login(self) -> None:
        role_id, secret_id = self._credentials()
        with self._lock, _vault_errors("log in"):
            auth = self._client().auth.approle.login(role_id=role_id, secret_id=secret_id)["auth"]
            register_secret(auth["client_token"])
            token = _Token(
                value=auth["client_token"],
                ttl=int(auth["lease_duration"]),
                obtained_at=time.monotonic(),
                renewable=bool(auth["renewable"]),
            )
            self._token = token
            self.counters.logins += 1
        log.info("vault login", extra={"ttl": token.ttl})

    def renew(self) -> None:
        """Renew the token; log in again if renewal is refused or the token is gone."""
        token = self._token
        if token is None or token.expired() or not token.renewable:
            self.login()
            return
        try:
            with _vault_errors("renew its token"):
                auth = self._client(token.value).auth.token.renew_self()["auth"]
        except ServiceUnavailable as exc:
            self.counters.failed_renewals += 1
            log.warning("vault renewal failed, logging in again", extra={"reason": exc.message})
            self.login()
            return
        ttl = int(auth["lease_duration"])
        if ttl < token.ttl * (1 - RENEW_AT_FRACTION):
            # Max TTL reached: renewal no longer buys time, so start a fresh token.
            self.login()
            return
        with self._lock:
            self._token = _Token(token.value, ttl, time.monotonic(), bool(auth["renewable"]))
            self.counters.renewals += 1

    def ensure_token(self) -> str:
        with self._lock:
            token = self._token
        if token is None or token.expired():
            self.login()
        elif token.renew_due():
            self.renew()
        assert self._token is not None
        return self._token.value

    @property
    def token_ttl_remaining(self) -> float:
        token = self._token
        if token is None:
            return 0.0
        return max(0.0, token.ttl - (time.monotonic() - token.obtained_at))

    # --- secrets ----------------------------------------------------------------------
    def read(self, path: str, *, fresh: bool = False) -> dict[str, Any]:
        """Read a KV v2 secret (`path` under `secret/`).

        Without `fresh`, a cached copy answers when Vault cannot (so paper trading
        and authentication go on through an outage); with `fresh`, an outage is a
        503 — the choice for anything that must not act on stale credentials.
        """
        try:
            try:
                response = self._read_once(path)
            except VaultAccessDenied:
                # A revoked or expired token looks like a refusal: log in again once.
                self.login()
                response = self._read_once(path)
        except (SecretNotFound, VaultAccessDenied):
            raise
        except ServiceUnavailable:
            cached = self._cache.get(path)
            if cached is None or fresh:
                raise
            return dict(cached.data)
        data: dict[str, Any] = response["data"]["data"]
        register_secret(data)
        self._cache[path] = _CachedSecret(data)
        self.counters.reads += 1
        return dict(data)

    def _read_once(self, path: str) -> dict[str, Any]:
        token = self.ensure_token()
        with _vault_errors(f"read secret/{path}"):
            try:
                response: dict[str, Any] = self._client(token).secrets.kv.v2.read_secret_version(
                    path=path, mount_point=KV_MOUNT, raise_on_deleted_version=True
                )
            except hvac.exceptions.InvalidPath as exc:
                raise SecretNotFound(f"secret/{path} does not exist in Vault") from exc
        return response

    def cached(self, path: str) -> dict[str, Any] | None:
        cached = self._cache.get(path)
        return dict(cached.data) if cached else None

    # --- health -----------------------------------------------------------------------
    def status(self) -> VaultStatus:
        """Is Vault reachable and unsealed, and do we hold a valid token?"""
        try:
            health = self._client().sys.read_health_status(method="GET")
        except (requests.RequestException, hvac.exceptions.VaultError) as exc:
            return VaultStatus(False, f"unreachable at {self.addr}: {exc.__class__.__name__}")
        if isinstance(health, dict):
            body = health
        else:  # hvac returns the raw response for non-200 health codes
            try:
                body = health.json()
            except ValueError:
                return VaultStatus(False, f"unexpected health answer ({health.status_code})")
        if not body.get("initialized", False):
            return VaultStatus(False, "not initialised: run `volex up`")
        if body.get("sealed", True):
            return VaultStatus(False, "sealed: run `volex up` to unseal it")
        if self._token is None or self._token.expired():
            try:
                self.login()
            except ServiceUnavailable as exc:
                return VaultStatus(False, exc.message)
        return VaultStatus(True, f"token valid for {int(self.token_ttl_remaining)}s")


@contextmanager
def _vault_errors(action: str) -> Iterator[None]:
    """Turn hvac/requests failures into ServiceUnavailable naming what we tried."""
    try:
        yield
    except ServiceUnavailable:
        raise
    except hvac.exceptions.Forbidden as exc:
        raise VaultAccessDenied(f"Vault refused to let this service {action}") from exc
    except hvac.exceptions.VaultDown as exc:
        raise ServiceUnavailable(f"Vault is sealed; could not {action}") from exc
    except requests.RequestException as exc:
        raise ServiceUnavailable(
            f"Vault unreachable; could not {action} ({exc.__class__.__name__})"
        ) from exc
    except hvac.exceptions.VaultError as exc:
        raise ServiceUnavailable(f"Vault could not {action}: {exc.__class__.__name__}") from exc
