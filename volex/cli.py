"""`volex`: start, stop and inspect the fleet; manage its secrets.

volex up [--foreground]      start everything (detached by default)
volex down                   stop everything
volex status [--json]        health of every service
volex logs SERVICE [-f]      a component's log
volex token [--rotate]       the operator API token
volex secrets set-exchange   store exchange API keys in Vault (read from a prompt/stdin)
volex secrets list           exchanges with stored keys (names only)
volex start|stop|restart X   control one supervised component
volex bootstrap              Vault identities + migrations against external servers
volex serve SERVICE          run one service in the foreground (what the supervisor runs)
"""

from __future__ import annotations

import getpass
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from common.settings import APP_MODULES, SERVICES, Settings
from volex import status as fleet_status
from volex.process import pid_alive
from volex.servers import prepare_home
from volex.supervisor import control_dir, state_file, supervisor_running

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Run and inspect VolexSwarm.")
secrets_app = typer.Typer(no_args_is_help=True, help="Exchange credentials in Vault.")
app.add_typer(secrets_app, name="secrets")
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)

BOOT_TIMEOUT = 240.0
EXCHANGE_ID = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _supervisor_pid(settings: Settings) -> int | None:
    return supervisor_running(settings) if settings.home_dir.exists() else None


def _read_state(settings: Settings) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(state_file(settings).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return state


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


# --- up / down -----------------------------------------------------------------------
def _wait_until_up(settings: Settings, pid: int) -> list[fleet_status.ServiceStatus]:
    deadline = time.monotonic() + BOOT_TIMEOUT
    last_phase = ""
    while time.monotonic() < deadline:
        state = _read_state(settings)
        phase = state.get("phase", "booting")
        if phase != last_phase:
            err.print(f"supervisor: {phase}")
            last_phase = phase
        if phase == "failed" or not pid_alive(pid):
            log = settings.home_dir / "logs" / "supervisor.log"
            print(_tail(log, 30), file=sys.stderr)
            raise _fail(f"start-up failed: {state.get('error') or 'supervisor exited'}; see {log}")
        if phase == "running":
            services = fleet_status.collect(settings, timeout=2.0)
            if all(s.healthy for s in services):
                return services
        time.sleep(0.5)
    raise _fail(f"the fleet was not healthy within {BOOT_TIMEOUT:.0f}s: run `volex status`")


@app.command()
def up(
    foreground: Annotated[bool, typer.Option("--foreground", help="stay attached")] = False,
) -> None:
    """Start the embedded servers and all nine services; wait until they are healthy."""
    settings = Settings()
    home = settings.home_dir
    pid = _supervisor_pid(settings)
    if pid is not None:
        err.print(f"already running (supervisor pid {pid})")
    elif foreground:
        from common.logging import configure_logging
        from volex.supervisor import Supervisor

        prepare_home(settings)
        configure_logging("supervisor", settings.log_level)
        raise typer.Exit(Supervisor(settings).run())
    else:
        prepare_home(settings)
        state_file(settings).unlink(missing_ok=True)
        log = home / "logs" / "supervisor.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "volex.supervisor"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "VOLEX_HOME": str(home)},
                start_new_session=True,
            )
        pid = process.pid
        err.print(f"starting VolexSwarm in {home} (supervisor pid {pid}) ...")
    services = _wait_until_up(settings, pid)
    _print_table(settings, services)
    console.print(
        f"\nState: {home}   Logs: {home / 'logs'}\n"
        "Operator API token: run [bold]volex token[/bold] "
        "(kept in Vault at secret/volex/api-tokens/operator)\n"
        "Stop with [bold]volex down[/bold]."
    )


@app.command()
def down() -> None:
    """Stop every service, then the embedded servers. Data stays in VOLEX_HOME."""
    settings = Settings()
    pid = _supervisor_pid(settings)
    if pid is None:
        err.print("not running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        raise _fail(f"supervisor {pid} did not stop within 120s")
    err.print("stopped")


# --- status / logs -------------------------------------------------------------------
def _print_table(settings: Settings, services: list[fleet_status.ServiceStatus]) -> None:
    table = Table(title="VolexSwarm")
    for column in ("service", "url", "swagger", "health", "pid", "restarts"):
        table.add_column(column)
    for s in services:
        health = "[green]healthy[/green]" if s.healthy else f"[red]{s.summary}[/red]"
        table.add_row(s.name, s.url, s.url + "/docs", health, str(s.pid or "-"), str(s.restarts))
    console.print(table)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Health of every service and of each one's dependencies."""
    settings = Settings()
    services = fleet_status.collect(settings, timeout=2.0)
    if as_json:
        print(json.dumps([s.as_dict() for s in services], indent=2))
    else:
        _print_table(settings, services)
        state = _read_state(settings)
        servers = {
            name: c for name, c in state.get("components", {}).items() if c["kind"] == "server"
        }
        for name, comp in servers.items():
            console.print(f"{name}: {comp['state']} (pid {comp['pid']}, port {comp['port']})")
    if not all(s.healthy for s in services):
        raise typer.Exit(1)


@app.command()
def logs(
    component: Annotated[str, typer.Argument(help="a service, postgres, vault, redis, supervisor")],
    follow: Annotated[bool, typer.Option("-f", "--follow")] = False,
    lines: Annotated[int, typer.Option("-n", "--lines")] = 100,
) -> None:
    """Show the last lines of a component's log (and follow it with -f)."""
    settings = Settings()
    known = {*SERVICES, "postgres", "vault", "redis", "supervisor"}
    if component not in known:
        raise _fail(f"unknown component {component!r}; choose one of {', '.join(sorted(known))}", 2)
    path = settings.home_dir / "logs" / f"{component}.log"
    print(_tail(path, lines))
    if not follow:
        return
    with open(path, errors="replace") as handle:
        handle.seek(0, os.SEEK_END)
        try:
            while True:
                line = handle.readline()
                if line:
                    print(line, end="", flush=True)
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return


# --- control -------------------------------------------------------------------------
def _control(component: str, action: str) -> None:
    settings = Settings()
    pid = _supervisor_pid(settings)
    if pid is None:
        raise _fail("not running: start the fleet with `volex up`")
    state = _read_state(settings)
    if component not in state.get("components", {}):
        names = ", ".join(state.get("components", {}))
        raise _fail(f"unknown component {component!r}; supervised: {names}", 2)
    before = state["components"][component]
    request = control_dir(settings) / f"{time.time_ns()}-{uuid.uuid4().hex[:6]}.json"
    staging = request.with_suffix(".tmp")  # the supervisor reads only complete *.json files
    staging.write_text(json.dumps({"component": component, "action": action}))
    staging.replace(request)
    os.kill(pid, signal.SIGHUP)
    want = "stopped" if action == "stop" else "running"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = _read_state(settings).get("components", {}).get(component, {})
        moved = action != "restart" or now.get("pid") != before.get("pid")
        if now.get("state") == want and moved and not request.exists():
            err.print(f"{component}: {want}" + (f" (pid {now['pid']})" if now.get("pid") else ""))
            return
        time.sleep(0.1)
    raise _fail(f"{component} did not reach '{want}' within 60s; see `volex logs supervisor`")


@app.command()
def stop(component: str) -> None:
    """Stop one supervised component and keep it stopped."""
    _control(component, "stop")


@app.command()
def start(component: str) -> None:
    """Start a component stopped with `volex stop`."""
    _control(component, "start")


@app.command()
def restart(component: str) -> None:
    """Restart one supervised component."""
    _control(component, "restart")


# --- tokens and secrets --------------------------------------------------------------
def _admin_vault(settings: Settings) -> Any:
    import hvac

    try:
        token = settings.admin_vault_token()
    except RuntimeError as exc:
        raise _fail(str(exc)) from exc
    return hvac.Client(url=settings.resolved_vault_addr(), token=token, timeout=10)


@app.command()
def token(
    rotate: Annotated[bool, typer.Option("--rotate", help="issue a new one first")] = False,
) -> None:
    """Print the operator API token (use it as 'Authorization: Bearer <token>')."""
    import hvac.exceptions
    import requests

    from common.auth import OPERATOR, api_token_path
    from volex.bootstrap import rotate_api_token

    settings = Settings()
    client = _admin_vault(settings)
    try:
        if rotate:
            rotate_api_token(settings, OPERATOR)
            if _announce_rotation(settings):
                err.print("rotated; the services have been told and switch within seconds")
            else:
                err.print(
                    "rotated; Redis is unreachable, so services switch at their next refresh "
                    f"(within {settings.secrets_refresh_interval:.0f}s)"
                )
        secret = client.secrets.kv.v2.read_secret_version(
            path=api_token_path(OPERATOR), mount_point="secret", raise_on_deleted_version=True
        )
    except (hvac.exceptions.VaultError, requests.RequestException) as exc:
        raise _fail(
            f"cannot read the token from Vault ({exc.__class__.__name__}): "
            "is the fleet up? (`volex up`)"
        ) from exc
    print(secret["data"]["data"]["token"])


def _announce_rotation(settings: Settings) -> bool:
    import redis

    from common.auth import TOKENS_ROTATED_CHANNEL
    from common.events import CHANNEL_PREFIX

    try:
        client = redis.Redis.from_url(settings.resolved_redis_url(), socket_timeout=2)
        client.publish(CHANNEL_PREFIX + TOKENS_ROTATED_CHANNEL, "{}")
    except (redis.RedisError, RuntimeError):
        return False
    return True


def _read_credential(label: str) -> str:
    if sys.stdin.isatty():
        value = getpass.getpass(f"{label}: ")
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    if not value.strip():
        raise _fail(f"{label} is empty", 2)
    return value.strip()


@secrets_app.command("set-exchange")
def set_exchange(
    exchange: Annotated[str, typer.Argument(help="CCXT exchange id, e.g. binance, kraken")],
    passphrase: Annotated[
        bool, typer.Option("--passphrase", help="also ask for the API passphrase")
    ] = False,
    sandbox: Annotated[
        bool, typer.Option("--sandbox", help="these keys are for the exchange's testnet")
    ] = False,
) -> None:
    """Store an exchange's API key and secret in Vault, read from a prompt or stdin (never argv).

    From a script, pipe the key and the secret as two lines (and the passphrase as a
    third with --passphrase).
    """
    import hvac.exceptions
    import requests

    if not EXCHANGE_ID.match(exchange):
        raise _fail(f"{exchange!r} is not an exchange id: lowercase letters, digits, '_'", 2)
    secret = {"api_key": _read_credential("API key"), "secret": _read_credential("API secret")}
    if passphrase:
        secret["password"] = _read_credential("API passphrase")
    if sandbox:
        secret["sandbox"] = "true"
    client = _admin_vault(Settings())
    try:
        client.secrets.kv.v2.create_or_update_secret(
            path=f"exchanges/{exchange}", secret=secret, mount_point="secret"
        )
    except (hvac.exceptions.VaultError, requests.RequestException) as exc:
        raise _fail(f"could not write to Vault ({exc.__class__.__name__})") from exc
    err.print(
        f"stored credentials for {exchange} at secret/exchanges/{exchange} "
        f"(fields: {', '.join(secret)})"
    )


@secrets_app.command("list")
def list_secrets() -> None:
    """Exchanges with stored credentials: names and field names only, never values."""
    import hvac.exceptions

    client = _admin_vault(Settings())
    try:
        keys = client.secrets.kv.v2.list_secrets(path="exchanges", mount_point="secret")
        names = sorted(keys["data"]["keys"])
    except hvac.exceptions.InvalidPath:
        names = []
    if not names:
        err.print("no exchange credentials stored; add some with `volex secrets set-exchange`")
        return
    for name in names:
        meta = client.secrets.kv.v2.read_secret_metadata(
            path=f"exchanges/{name}", mount_point="secret"
        )["data"]
        print(f"{name}\tupdated {meta['updated_time']}\tversion {meta['current_version']}")


# --- external servers and the service entry point ------------------------------------
@app.command()
def bootstrap() -> None:
    """Create Vault identities and migrate the database (for external servers)."""
    from common import migrations
    from volex.bootstrap import bootstrap_vault

    settings = Settings()
    report = bootstrap_vault(settings)
    migrations.upgrade(settings.resolved_database_url())
    err.print(
        "bootstrap done"
        + (f"; created: {', '.join(report.created)}" if report.created else "; nothing to create")
    )


@app.command()
def serve(service: Annotated[str, typer.Argument(help="which service to run")]) -> None:
    """Run one service in the foreground under uvicorn."""
    import importlib

    import uvicorn

    from common.service import SERVER_KEEP_ALIVE_S

    if service not in APP_MODULES:
        raise _fail(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}", 2)
    settings = Settings()
    application = importlib.import_module(APP_MODULES[service]).app
    uvicorn.run(
        application,
        host=settings.bind_host,
        port=settings.port_of(service),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=SERVER_KEEP_ALIVE_S,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
