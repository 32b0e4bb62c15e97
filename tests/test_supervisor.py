"""The supervisor restarts a crashed service and records what happened."""

from __future__ import annotations

import os
import signal

from sqlalchemy import text

from tests.conftest import Stack


def test_crashed_service_is_restarted_and_recorded(stack: Stack) -> None:
    before = stack.state()["components"]["compliance"]
    os.kill(before["pid"], signal.SIGKILL)

    def restarted() -> dict[str, object] | None:
        now = stack.state()["components"]["compliance"]
        if now["pid"] and now["pid"] != before["pid"] and now["restarts"] == before["restarts"] + 1:
            return now
        return None

    stack.wait_for(restarted, timeout=30, what="compliance to be restarted")
    stack.wait_for(
        lambda: stack.healthy("compliance"), timeout=60, what="restarted compliance to be healthy"
    )
    with stack.engine().connect() as conn:
        events = conn.execute(
            text(
                "SELECT event, exit_code FROM supervisor_events"
                " WHERE component = 'compliance' ORDER BY id DESC LIMIT 2"
            )
        ).all()
    assert [e.event for e in events] == ["restarted", "exited"]
    assert events[1].exit_code == -signal.SIGKILL
    log = (stack.home / "logs" / "supervisor.log").read_text()
    assert '"component": "compliance"' in log and "restarting in" in log


def test_operator_restart_gives_a_new_process(stack: Stack) -> None:
    before = stack.get("optimize", "/info").json()["pid"]
    stack.volex("restart", "optimize")
    stack.wait_for(lambda: stack.healthy("optimize"), timeout=60, what="optimize to come back")
    assert stack.get("optimize", "/info").json()["pid"] != before


def test_control_of_unknown_component_is_refused(stack: Stack) -> None:
    result = stack.volex("stop", "nosuch", check=False)
    assert result.returncode == 2
    assert "unknown component" in result.stderr
