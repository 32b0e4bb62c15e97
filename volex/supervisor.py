"""The supervisor: boots the embedded servers and the nine services, and keeps them up.

One process per `VOLEX_HOME` (`volex up` starts it detached). It starts
PostgreSQL, OpenBao and Redis (those not given as external URLs), unseals and
bootstraps Vault, migrates the database, then runs every service and restarts
any that exits, with exponential backoff. `volex stop/start/restart NAME` reach
it through control files; SIGTERM stops everything in reverse order. What it
does is logged to `logs/supervisor.log`, published in `run/state.json`, and
recorded in the `supervisor_events` table.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, insert, pool

from common import migrations
from common.logging import configure_logging, register_secret
from common.models import SupervisorEvent
from common.settings import SERVICES, Settings
from volex.bootstrap import bootstrap_vault
from volex.process import Component
from volex.servers import (
    postgres_component,
    prepare_home,
    redis_component,
    vault_component,
    write_private,
)

log = logging.getLogger("volex.supervisor")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0  # a process that ran this long has its backoff reset
TICK = 0.2
ADMIN_ONLY_ENV = frozenset({"VAULT_TOKEN", "VOLEX_VAULT_TOKEN"})


def run_dir(settings: Settings) -> Path:
    return settings.home_dir / "run"


def pid_file(settings: Settings) -> Path:
    return run_dir(settings) / "supervisor.pid"


def lock_file(settings: Settings) -> Path:
    return run_dir(settings) / "supervisor.lock"


def acquire_lock(settings: Settings) -> int | None:
    """Hold the home's supervisor lock for this process's life; None if another holds it.

    The kernel drops the lock when the holder dies, so a crash leaves nothing stale.
    """
    fd = os.open(lock_file(settings), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def supervisor_running(settings: Settings) -> int | None:
    """The pid of the live supervisor for this home, judged by its lock (not a pid file)."""
    if not lock_file(settings).exists():
        return None
    fd = acquire_lock(settings)
    if fd is not None:
        os.close(fd)
        return None
    try:
        return int(pid_file(settings).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def state_file(settings: Settings) -> Path:
    return run_dir(settings) / "state.json"


def control_dir(settings: Settings) -> Path:
    return run_dir(settings) / "control"


def service_component(settings: Settings, name: str) -> Component:
    port = settings.port_of(name)
    # Services never see the Vault admin token: they log in with their own AppRole.
    env = {k: v for k, v in os.environ.items() if k not in ADMIN_ONLY_ENV}
    env["VOLEX_HOME"] = str(settings.home_dir)
    url = f"http://127.0.0.1:{port}/health"

    def alive() -> bool:
        try:
            httpx.get(url, timeout=1.0)
        except httpx.HTTPError:
            return False
        return True

    return Component(
        name=name,
        kind="service",
        argv=[sys.executable, "-m", "volex.cli", "serve", name],
        log_file=settings.home_dir / "logs" / f"{name}.log",
        ready=alive,
        port=port,
        env=env,
        stop_timeout=10.0,
    )


class BootAborted(Exception):
    """`volex down` arrived while the fleet was still starting."""


class _Slot:
    """Supervision state for one component."""

    def __init__(self, component: Component) -> None:
        self.component = component
        self.wanted = True
        self.restarts = 0
        self.backoff = BACKOFF_FIRST
        self.restart_at: float | None = None
        self.last_exit: int | None = None
        self.operator_start = False  # the next start was asked for, not a crash recovery

    def state(self) -> str:
        if self.component.running():
            return "running"
        if not self.wanted:
            return "stopped"
        return "backoff" if self.restart_at is not None else "starting"


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slots: dict[str, _Slot] = {}
        self.phase = "booting"
        self.error: str | None = None
        self.stopping = False
        self.control_pending = False
        self.engine: Engine | None = None
        self.pending_events: list[dict[str, Any]] = []
        self._state_written: str = ""

    # --- events -----------------------------------------------------------------------
    def record(
        self,
        component: str,
        event: str,
        *,
        pid: int | None = None,
        exit_code: int | None = None,
        detail: str | None = None,
    ) -> None:
        log.info(
            event,
            extra={"component": component, "pid": pid, "exit_code": exit_code, "detail": detail},
        )
        self.pending_events.append(
            {
                "component": component,
                "event": event,
                "pid": pid,
                "exit_code": exit_code,
                "detail": detail,
            }
        )
        self.flush_events()

    def flush_events(self) -> None:
        if self.engine is None or not self.pending_events:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(SupervisorEvent), self.pending_events)
            self.pending_events.clear()
        except Exception as exc:  # the database may be the thing that is down
            log.debug("events not recorded yet: %s", exc.__class__.__name__)
            del self.pending_events[:-1000]

    # --- state file -------------------------------------------------------------------
    def write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "phase": self.phase,
            "error": self.error,
            "components": {
                name: {
                    "kind": slot.component.kind,
                    "state": slot.state(),
                    "pid": slot.component.pid if slot.component.running() else None,
                    "port": slot.component.port,
                    "restarts": slot.restarts,
                    "started_at": slot.component.started_at,
                    "last_exit": slot.last_exit,
                }
                for name, slot in self.slots.items()
            },
        }
        text = json.dumps(state, indent=1)
        if text != self._state_written:
            write_private(state_file(self.settings), text)
            self._state_written = text

    # --- boot -------------------------------------------------------------------------
    def _start(self, component: Component, *, wait: bool) -> None:
        slot = self.slots.setdefault(component.name, _Slot(component))
        component.start()
        self.record(component.name, "started", pid=component.pid)
        if wait:
            component.wait_ready()
        slot.restart_at = None
        self.write_state()

    def _check_stop(self) -> None:
        if self.stopping:
            raise BootAborted("stop requested during start-up")

    def boot(self) -> None:
        settings = self.settings
        prepare_home(settings)
        if settings.embedded_postgres:
            self._start(postgres_component(settings), wait=True)
            register_secret(settings.postgres_password_file.read_text().strip())
            self._check_stop()
        if settings.embedded_vault:
            self._start(vault_component(settings), wait=True)
            self._check_stop()
        if settings.embedded_redis:
            self._start(redis_component(settings), wait=True)
            register_secret(settings.redis_password_file.read_text().strip())
            self._check_stop()
        register_secret(settings.admin_vault_token())
        bootstrap_vault(settings)
        self._check_stop()
        url = settings.resolved_database_url()
        migrations.upgrade(url)
        configure_logging("supervisor", settings.log_level)  # alembic may have touched logging
        self.engine = create_engine(
            url, poolclass=pool.NullPool, connect_args={"connect_timeout": 2}
        )
        self.flush_events()
        self._check_stop()
        for name in SERVICES:
            self._start(service_component(settings, name), wait=False)
        self.phase = "running"
        self.write_state()

    # --- the watch loop ---------------------------------------------------------------
    def _on_exit(self, slot: _Slot) -> None:
        component = slot.component
        code = component.exit_code()
        slot.last_exit = code
        ran_for = time.time() - (component.started_at or time.time())
        if ran_for >= STABLE_AFTER:
            slot.backoff = BACKOFF_FIRST
        slot.restart_at = time.monotonic() + slot.backoff
        self.record(
            component.name,
            "exited",
            pid=component.pid,
            exit_code=code,
            detail=f"ran {ran_for:.1f}s; restarting in {slot.backoff:.0f}s",
        )
        component.process = None
        slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)

    def _restart(self, slot: _Slot) -> None:
        component = slot.component
        by_operator = slot.operator_start
        slot.operator_start = False
        try:
            component.start()
            if by_operator:
                self.record(component.name, "started", pid=component.pid, detail="by operator")
            else:
                slot.restarts += 1
                self.record(
                    component.name,
                    "restarted",
                    pid=component.pid,
                    detail=f"restart #{slot.restarts}",
                )
            if component.kind == "server":
                component.wait_ready()
            slot.restart_at = None
        except Exception as exc:  # one bad restart must never take the fleet down
            self.record(component.name, "failed", detail=str(exc))
            if component.running():
                component.signal_stop()
                component.wait_stopped()
            component.process = None
            slot.restart_at = time.monotonic() + slot.backoff
            slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)

    def tick(self) -> None:
        if self.control_pending:
            self.control_pending = False
            self.apply_control()
        for slot in self.slots.values():
            component = slot.component
            if not slot.wanted:
                continue
            if component.process is not None and not component.running():
                self._on_exit(slot)
            elif component.process is None and slot.restart_at is None:
                slot.restart_at = time.monotonic()
            if (
                component.process is None
                and slot.restart_at is not None
                and time.monotonic() >= slot.restart_at
            ):
                self._restart(slot)
        if self.pending_events:
            self.flush_events()
        self.write_state()

    def apply_control(self) -> None:
        for request_path in sorted(control_dir(self.settings).glob("*.json")):
            try:
                request = json.loads(request_path.read_text())
            except (OSError, ValueError):
                request = {}
            request_path.unlink(missing_ok=True)
            slot = self.slots.get(str(request.get("component")))
            action = request.get("action")
            if slot is None or action not in ("stop", "start", "restart"):
                log.warning("ignored control request", extra={"request": request})
                continue
            try:
                self._control(slot, action)
            except Exception:  # a failed stop/start is logged; supervision goes on
                log.exception("control request failed", extra={"request": request})

    def _control(self, slot: _Slot, action: str) -> None:
        component = slot.component
        if action in ("stop", "restart") and component.running():
            pid = component.pid
            component.signal_stop()
            code = component.wait_stopped()
            self.record(
                component.name, "stopped", pid=pid, exit_code=code, detail=f"by operator ({action})"
            )
            component.process = None
        slot.wanted = action != "stop"
        slot.operator_start = slot.wanted
        slot.backoff = BACKOFF_FIRST
        slot.restart_at = time.monotonic() if slot.wanted else None

    # --- shutdown ---------------------------------------------------------------------
    def shutdown(self) -> None:
        self.phase = "stopping"
        self.write_state()
        services = [s for s in self.slots.values() if s.component.kind == "service"]
        servers = [s for s in self.slots.values() if s.component.kind == "server"]
        for slot in services:
            slot.component.signal_stop()
        for slot in services:
            if slot.component.process is not None:
                code = slot.component.wait_stopped()
                self.record(slot.component.name, "stopped", exit_code=code, detail="volex down")
        self.flush_events()
        if self.engine is not None:
            self.engine.dispose()
        for slot in reversed(servers):
            slot.component.signal_stop()
            slot.component.wait_stopped()
            log.info("stopped", extra={"component": slot.component.name})
        self.phase = "stopped"
        self.write_state()

    def run(self) -> int:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stopping = True

        def control(signum: int, frame: FrameType | None) -> None:
            self.control_pending = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, control)
        control_dir(self.settings).mkdir(parents=True, exist_ok=True)
        lock = acquire_lock(self.settings)
        if lock is None:
            log.error("another supervisor already runs for this VOLEX_HOME; exiting")
            return 2
        write_private(pid_file(self.settings), f"{os.getpid()}\n")
        code = 0
        try:
            self.boot()
            while not self.stopping:
                self.tick()
                time.sleep(TICK)
        except BootAborted:
            log.info("start-up aborted: stopping")
        except Exception as exc:
            self.phase = "failed"
            self.error = str(exc)
            log.exception("supervisor failed")
            self.write_state()
            code = 1
        finally:
            failed_phase, error = self.phase, self.error
            self.shutdown()
            if failed_phase == "failed":
                self.phase, self.error = "failed", error
                self.write_state()
            pid_file(self.settings).unlink(missing_ok=True)
            os.close(lock)
        return code


def main() -> int:
    settings = Settings()
    configure_logging("supervisor", settings.log_level)
    return Supervisor(settings).run()


if __name__ == "__main__":
    sys.exit(main())
