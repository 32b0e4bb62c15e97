"""POST /audit/events/batch: many events, one call, one transaction, in order."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import Stack


def _post(stack: Stack, body: object) -> httpx.Response:
    return stack.post("compliance", "/audit/events/batch", body)


def _events(stack: Stack, subject: str) -> list[dict[str, object]]:
    page = stack.get("compliance", f"/audit?subject={subject}&order=asc&limit=100").json()
    items: list[dict[str, object]] = page["items"]
    return items


def test_a_batch_is_stored_in_order_and_chained(stack: Stack) -> None:
    subject = f"batch-{uuid.uuid4().hex[:10]}"
    body = [
        {"kind": "test.batched", "actor": "operator", "subject": subject, "data": {"n": n}}
        for n in range(3)
    ]
    response = _post(stack, body)
    assert response.status_code == 201, response.text
    stored = response.json()
    assert [e["data"]["n"] for e in stored] == [0, 1, 2]
    assert stored[1]["prev_hash"] == stored[0]["hash"]
    assert stored[2]["prev_hash"] == stored[1]["hash"]
    assert [e["id"] for e in _events(stack, subject)] == [e["id"] for e in stored]
    assert stack.get("compliance", "/audit/verify").json()["ok"] is True


def test_one_bad_event_rejects_the_whole_batch_naming_it(stack: Stack) -> None:
    subject = f"batch-{uuid.uuid4().hex[:10]}"
    good = {"kind": "test.batched", "actor": "operator", "subject": subject, "data": {}}
    bad = {**good, "kind": "order.filled", "data": {"amount": "-1"}}  # not a FillEvent
    response = _post(stack, [good, bad])
    assert response.status_code == 422
    assert any(str(err["field"]).startswith("body.1") for err in response.json()["errors"])
    assert _events(stack, subject) == []  # nothing half-written
    assert _post(stack, []).status_code == 422


def test_a_resent_event_id_is_stored_once(stack: Stack) -> None:
    """A sender that did not hear back (a timeout, a crash before it marked the batch
    sent) sends the same events again: each `event_id` is appended once per caller, and
    the answer names the rows first stored."""
    subject = f"once-{uuid.uuid4().hex[:10]}"
    ids = [uuid.uuid4().hex for _ in range(3)]
    body = [
        {"kind": "test.once", "actor": "operator", "subject": subject, "event_id": i, "data": {}}
        for i in ids
    ]
    first = _post(stack, body[:2])
    assert first.status_code == 201, first.text
    again = _post(stack, body)  # the first two again, and a new one
    assert again.status_code == 201, again.text
    assert [e["id"] for e in again.json()[:2]] == [e["id"] for e in first.json()]
    single = stack.post("compliance", "/audit/events", body[2])
    assert single.status_code == 201 and single.json()["id"] == again.json()[2]["id"]
    twice_in_one = _post(stack, [body[0], body[0]])
    assert [e["id"] for e in twice_in_one.json()] == [first.json()[0]["id"]] * 2
    stored = _events(stack, subject)
    assert len(stored) == 3 and [e["id"] for e in stored] == [e["id"] for e in again.json()]
    assert stack.get("compliance", "/audit/verify").json()["ok"] is True
    # Another caller's event with the same id is its own event.
    from tests.agents.compliance.conftest import service_token

    other = stack.post("compliance", "/audit/events", body[0], token=service_token(stack, "risk"))
    assert other.status_code == 201 and other.json()["id"] not in {e["id"] for e in stored}


def test_a_malformed_event_id_is_a_422_naming_it(stack: Stack) -> None:
    subject = f"badid-{uuid.uuid4().hex[:10]}"
    for bad in ("short", "has spaces in it", "x" * 65):
        body = {"kind": "test.once", "actor": "operator", "subject": subject, "event_id": bad}
        response = _post(stack, [body])
        assert response.status_code == 422, response.text
        assert any("event_id" in str(err["field"]) for err in response.json()["errors"])
    assert _events(stack, subject) == []
