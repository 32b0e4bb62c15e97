"""docker-compose.yml and docker/Dockerfile agree with common.settings (no servers, no Docker)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices

from common.settings import SERVICES, Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
INFRASTRUCTURE = ("timescaledb", "vault", "redis")
VOLEX_HOME = "/var/lib/volex"

_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


# --- helpers -------------------------------------------------------------------------
def _load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


COMPOSE = _load_compose()
COMPOSED: dict[str, dict[str, Any]] = COMPOSE["services"]


def _interpolate(value: str) -> str:
    """What compose makes of `${VAR:-default}` when VAR is not set (the defaults)."""
    return _INTERPOLATION.sub(lambda m: m.group("default") or "", value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    assert isinstance(env, dict)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def _ports(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(published, container) pairs, from short ("[ip:]host:container") or long syntax."""
    pairs = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            pairs.append((int(entry["published"]), int(entry["target"])))
        else:
            parts = str(entry).split("/")[0].split(":")
            assert len(parts) >= 2, f"port {entry!r} is not published"
            pairs.append((int(parts[-2]), int(parts[-1])))
    return pairs


def _settings_env_names() -> set[str]:
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        names.add("VOLEX_" + name.upper())
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias)
    return names


def _field_env_names(field_name: str) -> set[str]:
    field = Settings.model_fields[field_name]
    names = {"VOLEX_" + field_name.upper()}
    if isinstance(field.validation_alias, AliasChoices):
        names.update(c for c in field.validation_alias.choices if isinstance(c, str))
    return names


PROJECT_IMAGE = COMPOSED.get("meta", {}).get("image")
PROJECT_SERVICES = sorted(
    name
    for name, service in COMPOSED.items()
    if "build" in service or (PROJECT_IMAGE and service.get("image") == PROJECT_IMAGE)
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No VOLEX_* (or alias) variable of the test run leaks into Settings()."""
    for name in _settings_env_names():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _container_settings(monkeypatch: pytest.MonkeyPatch, service: str) -> Settings:
    for key, value in _environment(COMPOSED[service]).items():
        monkeypatch.setenv(key, _interpolate(value))
    return Settings()


# --- the app services ----------------------------------------------------------------
def test_project_services_are_bootstrap_and_the_nine() -> None:
    assert PROJECT_IMAGE, "meta has no image"
    assert set(PROJECT_SERVICES) == {"bootstrap", *SERVICES}


@pytest.mark.parametrize("name", SERVICES)
def test_service_command(name: str) -> None:
    assert name in COMPOSED, f"no compose service for {name}"
    assert COMPOSED[name].get("command") == ["serve", name]


@pytest.mark.parametrize("name", SERVICES)
def test_ports_match_default_settings(clean_env: pytest.MonkeyPatch, name: str) -> None:
    settings = Settings()
    assert settings.port_base == 8000
    port = settings.port_of(name)
    assert _ports(COMPOSED[name]) == [(port, port)]


def test_webui_port_is_8080(clean_env: pytest.MonkeyPatch) -> None:
    assert Settings().port_of("webui") == 8080
    assert _ports(COMPOSED["webui"]) == [(8080, 8080)]


def test_environment_names_are_settings_fields() -> None:
    known = _settings_env_names()
    for name in PROJECT_SERVICES:
        unknown = set(_environment(COMPOSED[name])) - known
        assert not unknown, f"{name}: {sorted(unknown)} are not Settings env names"


@pytest.mark.parametrize("name", SERVICES)
def test_app_service_environment(name: str) -> None:
    env = _environment(COMPOSED[name])
    for key in ("VOLEX_DATABASE_URL", "VOLEX_VAULT_ADDR", "VOLEX_REDIS_URL", "VOLEX_HOME"):
        assert env.get(key), f"{name} lacks {key}"
    assert env["VOLEX_HOME"] == VOLEX_HOME
    assert env.get("VOLEX_BIND_HOST") == "0.0.0.0"


def test_only_bootstrap_gets_the_vault_token() -> None:
    token_names = _field_env_names("vault_token")
    assert "VOLEX_VAULT_TOKEN" in token_names
    holders = {name for name in PROJECT_SERVICES if token_names & set(_environment(COMPOSED[name]))}
    assert holders == {"bootstrap"}
    assert _environment(COMPOSED["bootstrap"]).get("VOLEX_VAULT_TOKEN")


@pytest.mark.parametrize("name", SERVICES)
def test_container_settings(clean_env: pytest.MonkeyPatch, name: str) -> None:
    """What Settings() resolves to inside the container, from its compose environment."""
    settings = _container_settings(clean_env, name)
    port = settings.port_of(name)
    assert _ports(COMPOSED[name]) == [(port, port)]
    assert settings.bind_host == "0.0.0.0"
    assert str(settings.home) == VOLEX_HOME
    assert not settings.embedded_postgres
    assert not settings.embedded_redis
    assert not settings.embedded_vault
    assert settings.vault_token is None
    assert urlsplit(settings.resolved_vault_addr()).hostname == "vault"
    assert urlsplit(settings.resolved_database_url()).hostname == "timescaledb"
    assert urlsplit(settings.resolved_redis_url()).hostname == "redis"


@pytest.mark.parametrize("name", SERVICES)
def test_agent_urls_use_compose_dns_names(clean_env: pytest.MonkeyPatch, name: str) -> None:
    template = _environment(COMPOSED[name]).get("VOLEX_AGENT_URL_TEMPLATE")
    assert template, f"{name} lacks VOLEX_AGENT_URL_TEMPLATE"
    settings = _container_settings(clean_env, name)
    for peer in SERVICES:
        port = settings.port_of(peer)
        assert template.format(name=peer, port=port) == f"http://{peer}:{port}"
        assert settings.url_of(peer) == f"http://{peer}:{port}"
        assert peer in COMPOSED


@pytest.mark.parametrize("name", SERVICES)
def test_app_healthcheck(clean_env: pytest.MonkeyPatch, name: str) -> None:
    check = COMPOSED[name].get("healthcheck")
    assert check and check.get("test"), f"{name} has no healthcheck"
    test = check["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    text = " ".join(test[1:])
    assert "curl" not in text, "the image has no curl"
    assert text.startswith("python")
    port = Settings().port_of(name)
    assert f"http://127.0.0.1:{port}/health" in text


@pytest.mark.parametrize("name", SERVICES)
def test_app_depends_on_bootstrap_and_servers(name: str) -> None:
    depends = COMPOSED[name].get("depends_on")
    assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
    assert depends.get("bootstrap", {}).get("condition") == "service_completed_successfully"
    for server in INFRASTRUCTURE:
        assert depends.get(server, {}).get("condition") == "service_healthy"


@pytest.mark.parametrize("name", SERVICES)
def test_app_mounts_volex_home(name: str) -> None:
    volumes = [str(v) for v in COMPOSED[name].get("volumes") or []]
    assert any(v.split(":")[:2] == ["volex-home", VOLEX_HOME] for v in volumes), volumes


# --- bootstrap and the servers -------------------------------------------------------
def test_bootstrap() -> None:
    bootstrap = COMPOSED["bootstrap"]
    assert bootstrap.get("command") == ["bootstrap"]
    assert f"volex-home:{VOLEX_HOME}" in [str(v) for v in bootstrap.get("volumes") or []]
    assert "volex-home" in (COMPOSE.get("volumes") or {})
    env = _environment(bootstrap)
    for key in ("VOLEX_DATABASE_URL", "VOLEX_VAULT_ADDR", "VOLEX_HOME"):
        assert env.get(key), f"bootstrap lacks {key}"
    depends = bootstrap.get("depends_on") or {}
    assert "bootstrap" not in depends
    for server in ("timescaledb", "vault"):
        assert depends.get(server, {}).get("condition") == "service_healthy"


@pytest.mark.parametrize("name", INFRASTRUCTURE)
def test_infrastructure_has_healthcheck(name: str) -> None:
    assert name in COMPOSED
    check = COMPOSED[name].get("healthcheck") or {}
    assert check.get("test"), f"{name} has no healthcheck"


def test_infrastructure_images() -> None:
    assert COMPOSED["timescaledb"]["image"] == "timescale/timescaledb:latest-pg16"
    assert COMPOSED["vault"]["image"].split(":")[0] == "hashicorp/vault"
    assert COMPOSED["redis"]["image"] == "redis:7"
    assert "pg_isready" in " ".join(COMPOSED["timescaledb"]["healthcheck"]["test"])


def test_vault_root_token_is_the_bootstrap_token() -> None:
    vault_env = _environment(COMPOSED["vault"])
    root = vault_env.get("VAULT_DEV_ROOT_TOKEN_ID")
    assert root and "${VOLEX_VAULT_ROOT_TOKEN" in root
    assert _environment(COMPOSED["bootstrap"])["VOLEX_VAULT_TOKEN"] == root


def test_database_url_matches_timescaledb(clean_env: pytest.MonkeyPatch) -> None:
    db_env = {k: _interpolate(v) for k, v in _environment(COMPOSED["timescaledb"]).items()}
    for name in ("bootstrap", *SERVICES):
        url = urlsplit(_interpolate(_environment(COMPOSED[name])["VOLEX_DATABASE_URL"]))
        assert url.scheme == "postgresql+psycopg2"
        assert (url.hostname, url.port) == ("timescaledb", 5432)
        assert url.username == db_env["POSTGRES_USER"]
        assert url.password == db_env["POSTGRES_PASSWORD"]
        assert url.path == "/" + db_env["POSTGRES_DB"]


def test_redis_url_matches_requirepass() -> None:
    command = [_interpolate(str(part)) for part in COMPOSED["redis"]["command"]]
    assert "--appendonly" in command
    assert command[command.index("--appendonly") + 1] == "yes"
    password = command[command.index("--requirepass") + 1]
    assert password
    for name in SERVICES:
        url = urlsplit(_interpolate(_environment(COMPOSED[name])["VOLEX_REDIS_URL"]))
        assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379)
        assert url.password == password


# --- the image -----------------------------------------------------------------------
def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _last(keyword: str) -> str:
    values = [rest for kw, rest in _dockerfile_instructions() if kw == keyword]
    assert values, f"Dockerfile has no {keyword}"
    return values[-1]


def test_dockerfile_entrypoint_and_cmd() -> None:
    assert json.loads(_last("ENTRYPOINT")) == ["volex"]
    assert json.loads(_last("CMD")) == ["serve", "meta"]


def test_dockerfile_base_user_and_env() -> None:
    assert _last("FROM").split()[0] == "python:3.11-slim"
    user = _last("USER").split(":")[0]
    assert user not in ("root", "0")
    env = " ".join(rest for kw, rest in _dockerfile_instructions() if kw == "ENV")
    assert f"VOLEX_HOME={VOLEX_HOME}" in env
    assert "VOLEX_BIND_HOST=0.0.0.0" in env
    runs = " ".join(rest for kw, rest in _dockerfile_instructions() if kw == "RUN")
    assert "pip install -r requirements.txt" in runs
    assert "pip install --no-deps ." in runs


def test_compose_builds_this_dockerfile() -> None:
    build = COMPOSED["bootstrap"].get("build") or COMPOSED["meta"].get("build")
    assert isinstance(build, dict)
    assert (ROOT / build.get("context", ".") / build["dockerfile"]).resolve() == DOCKERFILE
