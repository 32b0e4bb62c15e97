"""Child processes as the supervisor sees them: how to start, probe and stop one."""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """If the supervisor dies hard, its children get SIGTERM instead of living on."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class Component:
    """One supervised process: an embedded server or a service."""

    name: str
    kind: str  # "server" or "service"
    argv: list[str]
    log_file: Path
    ready: Callable[[], bool]
    port: int
    env: dict[str, str] | None = None
    user: str | None = None
    after_start: Callable[[], None] | None = None
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 15.0
    start_timeout: float = 60.0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if not port_free(self.port):
            raise RuntimeError(
                f"{self.name}: port {self.port} is already in use; stop whatever holds it "
                "or choose other ports (VOLEX_PORT_BASE, VOLEX_PG_PORT, VOLEX_VAULT_PORT, "
                "VOLEX_REDIS_PORT)"
            )
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                **as_user(self.user),
                preexec_fn=_die_with_parent,  # the supervisor is single-threaded
                close_fds=True,
                # Own process group: a Ctrl-C aimed at the supervisor does not reach the
                # children, which it stops itself, services first and servers last.
                process_group=0,
            )
        self.started_at = time.time()
        log.info("started", extra={"component": self.name, "pid": self.process.pid})

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(
                    f"{self.name} exited during start-up (code {self.exit_code()}); "
                    f"see {self.log_file}"
                )
            if self.ready():
                if self.after_start is not None:
                    self.after_start()
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} was not ready within {self.start_timeout:.0f}s; see {self.log_file}"
        )

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def signal_stop(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.send_signal(self.stop_signal)

    def wait_stopped(self, timeout: float | None = None) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout if timeout is not None else self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("did not stop in time, killing", extra={"component": self.name})
            self.process.kill()
            return self.process.wait()


def as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that drop to `user` completely: uid, primary group, no extra groups."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
