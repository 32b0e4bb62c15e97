"""Compliance while its database is away: the writes are 503s, nothing is half-written,
input is still checked first, and it recovers without a restart."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from tests.agents.compliance.conftest import DEFAULT_POLICY, call, order, service_token
from tests.conftest import Stack


def test_a_database_outage_is_a_503_and_leaves_nothing_behind(
    stack: Stack, set_policy: Callable[..., dict[str, Any]], engine: Engine
) -> None:
    set_policy()
    execution = service_token(stack, "execution")
    body = order()
    subject = body["client_order_id"]
    event = {
        "kind": "test.outage",
        "actor": "operator",
        "subject": subject,
        "event_id": uuid.uuid4().hex,
        "data": {},
    }
    pid = call(stack, "GET", "/info").json()["pid"]
    stack.volex("stop", "postgres")
    try:
        stack.wait_for(
            lambda: not stack.healthy("compliance"), timeout=60, what="compliance to see it"
        )
        for path, sent in [
            ("/checks/policy", body),
            ("/checks/policy/batch", {"orders": [body]}),
            ("/audit/events", event),
            ("/audit/events/batch", [event]),
        ]:
            response = call(stack, "POST", path, json=sent, token=execution)
            assert response.status_code == 503, (path, response.text)
            assert "database unavailable" in response.json()["detail"]
        # Input is checked before the database is asked: a refusal stays a refusal.
        bad = call(stack, "POST", "/audit/events", json={**event, "kind": "policy.checked"})
        assert bad.status_code == 403, bad.text
        bad = call(stack, "POST", "/audit/events/batch", json=[{**event, "data": []}])
        assert bad.status_code == 422, bad.text
        change = call(stack, "PUT", "/policies", json=DEFAULT_POLICY, token=execution)
        assert change.status_code == 403, change.text
    finally:
        stack.volex("start", "postgres")
        engine.dispose()  # the tests' own connections went with the server
    # Generous: PostgreSQL restarts slowly on a busy machine.
    stack.wait_for(lambda: stack.healthy("compliance"), timeout=240, what="compliance back")
    assert call(stack, "GET", "/audit", params={"subject": subject}).json()["items"] == []
    # The same requests go through now, answered by the same process.
    assert call(stack, "GET", "/info").json()["pid"] == pid
    checked = call(stack, "POST", "/checks/policy", json=body, token=execution)
    assert checked.status_code == 200 and checked.json()["approved"] is True, checked.text
    appended = call(stack, "POST", "/audit/events/batch", json=[event], token=execution)
    assert appended.status_code == 201, appended.text
    stored = call(stack, "GET", "/audit", params={"subject": subject, "order": "asc"}).json()
    assert [e["kind"] for e in stored["items"]] == ["policy.checked", "test.outage"]
    assert call(stack, "GET", "/audit/verify").json()["ok"] is True
