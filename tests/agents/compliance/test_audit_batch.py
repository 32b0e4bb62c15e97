"""POST /audit/events/batch: many events, one call, one transaction, in order."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import Stack


def _post(stack: Stack, body: object) -> httpx.Response:
    return httpx.post(
        stack.url("compliance") + "/audit/events/batch", json=body, headers=stack.auth(), timeout=30
    )


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
