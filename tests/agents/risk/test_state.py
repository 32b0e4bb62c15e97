"""The kill switch: durable, broadcast, idempotent, and never blocked by another agent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.agents.risk.conftest import Risk

pytestmark = pytest.mark.usefixtures("baseline")


def test_halt_survives_a_restart_until_resumed(risk: Risk) -> None:
    try:
        change = risk.halt("restart test", flatten=True)
        assert change["state"]["state"] == "HALTED" and change["previous_state"] == "ACTIVE"
        assert change["state"]["changed_by"] == "operator" and change["state"]["flatten"] is True
        # Risk told execution directly; what execution did comes back in the answer.
        assert change["execution"]["applied"] is True, change["execution"]
        assert risk.state()["state"] == "HALTED"

        risk.stack.volex("restart", "risk")
        risk.stack.wait_for(lambda: risk.stack.healthy("risk"), timeout=60, what="risk back")
        state = risk.state()
        assert state["state"] == "HALTED" and state["reason"] == "restart test"

        resumed = risk.resume("restart test over")
        assert resumed["state"]["state"] == "ACTIVE" and resumed["previous_state"] == "HALTED"
        assert risk.state()["state"] == "ACTIVE"
    finally:
        if risk.state()["state"] != "ACTIVE":
            risk.resume()


def test_halting_twice_updates_the_reason(risk: Risk) -> None:
    mark = risk.audit_mark()
    try:
        risk.halt("first reason")
        again = risk.halt("second reason")
        assert again["previous_state"] == "HALTED" and again["state"]["reason"] == "second reason"
        assert risk.state()["reason"] == "second reason"
        history = risk.ok(risk.get("/state/history", params={"limit": 2}))
        assert [h["reason"] for h in history] == ["second reason", "first reason"]
        events = risk.audited(mark, "risk.halted", 2)
        assert [e["data"]["reason"] for e in events] == ["first reason", "second reason"]
        assert all(e["on_behalf_of"] == "operator" for e in events)  # risk, for the operator
    finally:
        risk.resume()
    [resumed] = risk.audited(mark, "risk.resumed")
    assert resumed["data"]["previous_state"] == "HALTED"


def test_state_changes_are_broadcast_on_redis(risk: Risk) -> None:
    try:
        change, event = risk.broadcast_during(lambda: risk.halt("broadcast test"))
        assert change["broadcast"]["published"] is True and change["broadcast"]["receivers"] >= 1
        assert event["state"] == "HALTED" and event["reason"] == "broadcast test"
        assert event["changed_by"] == "operator"
    finally:
        risk.resume()


def test_reduce_then_resume(risk: Risk) -> None:
    try:
        change = risk.ok(risk.post("/reduce", {"reason": "cooling off"}))
        assert change["state"]["state"] == "REDUCING" and risk.state()["state"] == "REDUCING"
    finally:
        risk.resume()
    assert risk.state()["state"] == "ACTIVE"


@pytest.mark.parametrize("path", ["/halt", "/reduce", "/resume"])
@pytest.mark.parametrize("reason", [None, "", "   "])
def test_a_reason_is_required(risk: Risk, path: str, reason: str | None) -> None:
    body = {} if reason is None else {"reason": reason}
    response = risk.post(path, body)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["body.reason"]
    assert risk.state()["state"] == "ACTIVE"


def test_only_the_operator_resumes(risk: Risk) -> None:
    try:
        service_halt = risk.ok(
            risk.post("/halt", {"reason": "from a service"}, token=risk.service_token)
        )
        assert service_halt["state"]["changed_by"] == "execution"
        refused = risk.post("/resume", {"reason": "let me trade"}, token=risk.service_token)
        assert refused.status_code == 403 and "operator" in refused.json()["detail"]
        assert risk.state()["state"] == "HALTED"
    finally:
        risk.resume()


def test_halt_succeeds_with_execution_and_redis_down(risk: Risk) -> None:
    stack = risk.stack
    stack.volex("stop", "execution")
    stack.volex("stop", "redis")
    try:
        change = risk.halt("execution and redis outage test", flatten=True)
        assert change["state"]["state"] == "HALTED" and risk.state()["state"] == "HALTED"
        assert change["broadcast"]["published"] is False
        assert change["execution"]["applied"] is False
        assert "execution is unreachable" in change["execution"]["detail"]
    finally:
        stack.volex("start", "redis")
        stack.volex("start", "execution")
        risk.resume()
    stack.wait_for(stack.all_healthy, timeout=120, what="the whole fleet back")


def test_halt_succeeds_while_compliance_is_down_and_the_event_waits(risk: Risk) -> None:
    """Events go out oldest first, so retries show on the head of risk's queue; the halt's
    event waits behind it until compliance is back, then reaches the audit log."""
    stack = risk.stack
    mark = risk.rows("SELECT coalesce(max(id), 0) AS id FROM event_outbox")[0]["id"]
    audit_mark = risk.audit_mark()
    stack.volex("stop", "compliance")
    try:
        change = risk.halt("compliance outage test")
        assert change["state"]["state"] == "HALTED"
        [event] = risk.rows(
            "SELECT * FROM event_outbox WHERE service = 'risk' AND id > :mark"
            " AND payload->>'kind' = 'risk.halted'",
            mark=mark,
        )

        def head_retried_while_down() -> dict[str, Any] | None:
            head = risk.rows(
                "SELECT * FROM event_outbox WHERE service = 'risk' ORDER BY id LIMIT 1"
            )[0]
            unreachable = "unreachable" in (head["last_error"] or "")
            return head if head["attempts"] >= 2 and unreachable else None

        down = stack.wait_for(head_retried_while_down, timeout=60, what="outbox retries")
        assert down["id"] <= event["id"]
        assert risk.rows("SELECT id FROM event_outbox WHERE id = :i", i=event["id"])
    finally:
        stack.volex("start", "compliance")
        risk.resume()
    stack.wait_for(lambda: stack.healthy("compliance"), timeout=60, what="compliance back")
    [arrived] = risk.audited(audit_mark, "risk.halted")
    assert arrived["data"]["reason"] == "compliance outage test"
    assert datetime.fromisoformat(arrived["data"]["occurred_at"]) < arrived["at"]  # it waited
    stack.wait_for(
        lambda: not risk.rows("SELECT id FROM event_outbox WHERE id = :i", i=event["id"]),
        timeout=30,
        what="the delivered event gone from the queue",
    )


def test_halt_without_the_database_still_reaches_execution_and_says_so(risk: Risk) -> None:
    stack = risk.stack
    stack.volex("stop", "postgres")
    try:
        stack.wait_for(lambda: not stack.healthy("risk"), timeout=60, what="risk to see the outage")
        response = risk.post("/halt", {"reason": "database outage test"})
        assert response.status_code == 503
        problem = response.json()["detail"]
        assert "HALTED NOT recorded" in problem and "sent to execution" in problem
        refused = risk.post("/resume", {"reason": "nope"})
        assert refused.status_code == 503 and "nothing was changed" in refused.json()["detail"]
    finally:
        stack.volex("start", "postgres")
    # Generous: PostgreSQL restarts slowly on a busy machine.
    stack.wait_for(lambda: stack.healthy("risk"), timeout=240, what="risk to recover")
    state = risk.state()
    assert state["state"] == "ACTIVE", state  # never recorded, as the 503 said
