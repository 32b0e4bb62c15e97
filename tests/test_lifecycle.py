"""up → all nine healthy → down → up: secrets, rows and tokens survive."""

from __future__ import annotations

import json

import httpx
from sqlalchemy import text

from common.settings import SERVICES
from tests.conftest import Stack
from volex.process import port_open


def _status(stack: Stack) -> list[dict[str, object]]:
    result = stack.volex("status", "--json", check=False)
    entries: list[dict[str, object]] = json.loads(result.stdout)
    return entries


def test_status_reports_all_nine_services_healthy(stack: Stack) -> None:
    entries = _status(stack)
    assert [e["name"] for e in entries] == list(SERVICES)
    for entry in entries:
        assert entry["healthy"] is True, entry
        assert entry["url"] == stack.url(str(entry["name"]))
        deps = entry["dependencies"]
        assert isinstance(deps, dict) and deps, entry
        assert all(dep["ok"] for dep in deps.values())
    webui = next(e for e in entries if e["name"] == "webui")
    assert set(webui["dependencies"]) == {"vault"}  # type: ignore[arg-type]
    execution = next(e for e in entries if e["name"] == "execution")
    # Execution also reports whether its start-up reconciliation is done.
    assert set(execution["dependencies"]) == {  # type: ignore[arg-type]
        "database",
        "vault",
        "redis",
        "reconciliation",
    }


def test_down_then_up_keeps_secrets_rows_and_tokens(stack: Stack) -> None:
    stack.volex("secrets", "set-exchange", "kraken", input="lifecycle-key-1\nlifecycle-sec-1\n")
    token_before = stack.token
    with stack.engine().connect() as conn:
        conn.execute(
            text(
                "INSERT INTO supervisor_events (component, event, detail)"
                " VALUES ('test', 'marker', 'survives restarts')"
            )
        )
        conn.commit()
        marker = conn.execute(
            text("SELECT id FROM supervisor_events WHERE event = 'marker' ORDER BY id DESC LIMIT 1")
        ).scalar_one()

    stack.volex("down")
    ports = [stack.settings.port_of(s) for s in SERVICES] + [
        stack.settings.pg_port,
        stack.settings.redis_port,
        stack.settings.vault_port,
    ]
    assert not any(port_open(p) for p in ports), "something still listens after `volex down`"
    assert stack.volex("status", "--json", check=False).returncode == 1

    stack.volex("up")
    assert all(e["healthy"] for e in _status(stack))
    stored = stack.admin_vault().secrets.kv.v2.read_secret_version(
        path="exchanges/kraken", mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]
    assert stored == {"api_key": "lifecycle-key-1", "secret": "lifecycle-sec-1"}
    with stack.engine().connect() as conn:
        row = conn.execute(
            text("SELECT detail FROM supervisor_events WHERE id = :id"), {"id": marker}
        ).scalar_one()
        assert row == "survives restarts"
        # The supervisor recorded this boot's start of risk, after the marker row.
        starts = conn.execute(
            text(
                "SELECT count(*) FROM supervisor_events"
                " WHERE component = 'risk' AND event = 'started' AND id > :marker"
            ),
            {"marker": marker},
        ).scalar_one()
        assert starts == 1
    assert stack.volex("token").stdout.strip() == token_before
    assert stack.get("risk", "/info").status_code == 200


def test_up_twice_is_harmless(stack: Stack) -> None:
    pids = {name: stack.get(name, "/info").json()["pid"] for name in ("meta", "risk")}
    result = stack.volex("up")
    assert "already running" in result.stderr
    assert {name: stack.get(name, "/info").json()["pid"] for name in pids} == pids


def test_each_service_serves_local_swagger_ui(stack: Stack) -> None:
    for name in SERVICES:
        page = httpx.get(stack.url(name) + "/docs", timeout=10)
        assert page.status_code == 200
        assert "/docs-static/swagger-ui-bundle.js" in page.text
        assert "cdn." not in page.text  # nothing fetched from the internet
    assert (
        httpx.get(stack.url("risk") + "/docs-static/swagger-ui-bundle.js", timeout=10).status_code
        == 200
    )
