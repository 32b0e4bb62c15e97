"""Settings for every VolexSwarm process, read from `VOLEX_*` environment variables.

Settings hold addresses, ports and Vault paths, never secrets: the embedded
servers' passwords live in 0600 files under `VOLEX_HOME`, everything else in
Vault. The only secret a setting may carry is the Vault bootstrap token for an
external Vault, and only the operator CLI reads it.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Every deployable service and its port's offset from `VOLEX_PORT_BASE`.
SERVICE_PORTS: dict[str, int] = {
    "meta": 0,
    "execution": 1,
    "signal": 2,
    "backtest": 3,
    "risk": 4,
    "compliance": 5,
    "monitor": 6,
    "optimize": 7,
    "webui": 80,
}
SERVICES: tuple[str, ...] = tuple(SERVICE_PORTS)

# Where each service's FastAPI app lives (module path, attribute `app`).
APP_MODULES: dict[str, str] = {
    "meta": "meta.app",
    "webui": "webui.app",
    **{name: f"agents.{name}.app" for name in SERVICES if name not in ("meta", "webui")},
}

# The dependencies each service needs to be healthy. The web UI owns no data.
SERVICE_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    name: ("database", "vault", "redis") for name in SERVICES
}
SERVICE_DEPENDENCIES["webui"] = ("vault",)

Dependency = Literal["database", "vault", "redis"]


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Everything a VolexSwarm process needs to find its peers and its servers."""

    model_config = SettingsConfigDict(env_prefix="VOLEX_", extra="ignore")

    home: Path = Field(default=Path(".volex"), description="all local state lives here")
    bind_host: str = Field(default="127.0.0.1", description="address the services listen on")
    port_base: int = Field(default=8000, ge=1, le=65000, description="meta's port; others follow")
    agent_url_template: str = Field(
        default="http://127.0.0.1:{port}",
        description="how one agent reaches another; {name} and {port} are filled in",
    )
    log_level: str = Field(default="INFO")

    # Embedded servers (used when the matching *_url is not set).
    pg_port: int = Field(default=54329, ge=1, le=65535)
    redis_port: int = Field(default=6390, ge=1, le=65535)
    vault_port: int = Field(default=8200, ge=1, le=65534)

    # External servers: when set, nothing of our own is started for them.
    database_url: str | None = Field(
        default=None, validation_alias=_env("VOLEX_DATABASE_URL", "DATABASE_URL")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=_env("VOLEX_REDIS_URL", "REDIS_URL")
    )
    vault_addr: str | None = Field(
        default=None, validation_alias=_env("VOLEX_VAULT_ADDR", "VAULT_ADDR")
    )
    vault_token: SecretStr | None = Field(
        default=None,
        validation_alias=_env("VOLEX_VAULT_TOKEN", "VAULT_TOKEN"),
        description="bootstrap/admin token for an external Vault; read by the CLI only",
    )

    # Vault identities.
    vault_token_ttl: int = Field(default=3600, ge=5, description="AppRole token TTL, seconds")
    vault_token_max_ttl: int = Field(default=86400, ge=5)
    vault_timeout: float = Field(default=3.0, gt=0)
    secrets_refresh_interval: float = Field(
        default=300.0, gt=0, description="re-read tokens from Vault this often (seconds)"
    )

    # Agent-to-agent calls.
    http_timeout: float = Field(default=5.0, gt=0)
    health_timeout: float = Field(default=2.0, gt=0)

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    # --- ports and URLs ---------------------------------------------------------------
    def port_of(self, service: str) -> int:
        return self.port_base + SERVICE_PORTS[service]

    def url_of(self, service: str) -> str:
        return self.agent_url_template.format(name=service, port=self.port_of(service))

    # --- which servers are ours -------------------------------------------------------
    @property
    def embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def embedded_vault(self) -> bool:
        return self.vault_addr is None

    # --- resolved addresses -----------------------------------------------------------
    @property
    def postgres_password_file(self) -> Path:
        return self.home_dir / "postgres" / "password"

    @property
    def redis_password_file(self) -> Path:
        return self.home_dir / "redis" / "password"

    @property
    def vault_init_file(self) -> Path:
        return self.home_dir / "vault" / "init.json"

    def approle_file(self, service: str) -> Path:
        return self.home_dir / "vault" / "approle" / f"{service}.json"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        password = quote(_read_secret_file(self.postgres_password_file), safe="")
        return f"postgresql+psycopg2://volex:{password}@127.0.0.1:{self.pg_port}/volex"

    def resolved_redis_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        password = quote(_read_secret_file(self.redis_password_file), safe="")
        return f"redis://:{password}@127.0.0.1:{self.redis_port}/0"

    def resolved_vault_addr(self) -> str:
        return self.vault_addr or f"http://127.0.0.1:{self.vault_port}"

    def admin_vault_token(self) -> str:
        """The token the operator CLI and bootstrap use; never handed to a service."""
        if self.vault_token is not None:
            return self.vault_token.get_secret_value()
        if self.embedded_vault and self.vault_init_file.exists():
            return str(json.loads(self.vault_init_file.read_text())["root_token"])
        raise RuntimeError(
            "no Vault admin token: set VAULT_TOKEN for an external Vault, "
            f"or run `volex up` to initialise the embedded one under {self.home_dir}"
        )


def _read_secret_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError as exc:
        raise RuntimeError(
            f"{path} is missing: run `volex up` once to create the embedded servers' state"
        ) from exc
