"""The audit log over HTTP: append, filters, paging, and a hash chain that shows tampering.

The tamper tests edit and delete rows in the real database (as the superuser, with the
append-only trigger out of the way) and put them back afterwards, so the shared chain is
intact again for the next test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from agents.compliance.chain import canonical_content, link_hash
from agents.compliance.repository import AUDIT_CHAIN_LOCK
from common.models.compliance import AUDIT_ID_SEQUENCE, AuditChainHead, AuditEvent
from tests.agents.compliance.conftest import call, service_token, unique
from tests.conftest import Stack

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def append(stack: Stack, token: str | None = None, **body: Any) -> dict[str, Any]:
    body.setdefault("kind", "test.event")
    body.setdefault("actor", "operator")
    response = call(stack, "POST", "/audit/events", json=body, token=token)
    assert response.status_code == 201, response.text
    row: dict[str, Any] = response.json()
    return row


def audit(stack: Stack, **params: Any) -> dict[str, Any]:
    response = call(stack, "GET", "/audit", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def verify(stack: Stack) -> dict[str, Any]:
    response = call(stack, "GET", "/audit/verify")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@contextmanager
def as_superuser_without_triggers(engine: Engine) -> Iterator[Connection]:
    """A transaction in which the append-only trigger does not fire (superuser only)."""
    with engine.begin() as conn:
        assert conn.execute(
            text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        ).scalar_one()
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        yield conn


def _row(engine: Engine, row_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT id, at, kind, actor, on_behalf_of, subject, data::text AS data,"
                " prev_hash, hash FROM audit_events WHERE id = :id"
            ),
            {"id": row_id},
        ).one()
    return dict(row._mapping)


def _reinsert(engine: Engine, row: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_events (id, at, kind, actor, on_behalf_of, subject, data,"
                " prev_hash, hash) VALUES (:id, :at, :kind, :actor, :on_behalf_of, :subject,"
                " CAST(:data AS json), :prev_hash, :hash)"
            ),
            row,
        )


# --- append --------------------------------------------------------------------------------


def test_an_append_returns_the_stored_row_linked_to_the_one_before(stack: Stack) -> None:
    subject = unique("order-")
    first = append(stack, kind="order.requested", subject=subject, data={"amount": "0.5"})
    second = append(stack, kind="order.cancelled", subject=subject, data={"why": "test"})
    assert second["id"] > first["id"]
    assert second["prev_hash"] == first["hash"]
    assert HEX64.match(first["hash"]) and HEX64.match(first["prev_hash"])
    assert first["kind"] == "order.requested" and first["subject"] == subject
    assert first["data"] == {"amount": "0.5"}
    assert first["actor"] == "operator" and first["on_behalf_of"] is None
    at = datetime.fromisoformat(first["at"])
    assert abs(at - datetime.now(UTC)) < timedelta(minutes=5)


def test_the_actor_is_the_authenticated_caller_never_the_body(stack: Stack) -> None:
    by_service = append(
        stack, token=service_token(stack, "risk"), kind="risk.halted", actor="operator"
    )
    assert by_service["actor"] == "risk"
    assert by_service["on_behalf_of"] == "operator"
    by_operator = append(stack, kind="risk.resumed", actor="execution")
    assert by_operator["actor"] == "operator" and by_operator["on_behalf_of"] == "execution"
    same = append(stack, token=service_token(stack, "risk"), kind="risk.limits", actor="risk")
    assert same["actor"] == "risk" and same["on_behalf_of"] is None


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"kind": "Order Filled", "actor": "x"}, 422, "body.kind"),
        ({"kind": "order." + "x" * 60, "actor": "x"}, 422, "body.kind"),
        ({"kind": "x.y", "actor": "x" * 65}, 422, "body.actor"),
        ({"kind": "x.y", "actor": "x", "subject": "s" * 129}, 422, "body.subject"),
        ({"kind": "order.filled", "actor": ""}, 422, "body.actor"),
        ({"kind": "order.filled", "actor": "x", "data": {"price": "1"}}, 422, "body.data.fill_id"),
        ({"kind": "x.y", "actor": "x", "subject": "a\u0000b"}, 422, "body.subject"),
        ({"kind": "x.y", "actor": "x", "data": []}, 422, "body.data"),
        ({"kind": "policy.changed", "actor": "x"}, 403, None),
        ({"kind": "policy.checked", "actor": "x"}, 403, None),
    ],
)
def test_bad_events_are_refused_and_not_stored(
    stack: Stack, body: dict[str, Any], status: int, field: str | None
) -> None:
    before = audit(stack, limit=1)["items"][0]["id"]
    response = call(stack, "POST", "/audit/events", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if field is not None:
        assert field in [e["field"] for e in response.json()["errors"]]
    assert audit(stack, limit=1)["items"][0]["id"] == before


def test_non_finite_numbers_are_refused(stack: Stack) -> None:
    response = call(
        stack,
        "POST",
        "/audit/events",
        content=b'{"kind": "x.y", "actor": "x", "data": {"v": NaN}}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text


def test_data_comes_back_exactly_as_sent(stack: Stack) -> None:
    data = {"z": [1, 2.5, -0.0, 1e300, 12345678901234567890], "a": {"é": "\u0000\u2028 ok"}}
    row = append(stack, data=data)
    [stored] = audit(stack, kind="test.event", subject="", limit=1)["items"]
    assert stored["id"] == row["id"]
    assert stored["data"] == data == row["data"]
    assert verify(stack)["ok"] is True


# --- filters and paging ----------------------------------------------------------------------


def test_filters_by_kind_actor_subject_and_time(stack: Stack) -> None:
    subject = unique("sub-")
    risk = service_token(stack, "risk")
    a = append(stack, kind="order.requested", subject=subject)
    b = append(stack, token=risk, kind="risk.halted", subject=subject)
    c = append(stack, kind="order.cancelled", subject=subject)

    ids = lambda page: [item["id"] for item in page["items"]]  # noqa: E731
    assert ids(audit(stack, subject=subject)) == [c["id"], b["id"], a["id"]]
    assert ids(audit(stack, subject=subject, kind="risk.halted")) == [b["id"]]
    assert ids(audit(stack, subject=subject, actor="operator")) == [c["id"], a["id"]]
    assert ids(audit(stack, subject=subject, actor="risk")) == [b["id"]]
    assert ids(audit(stack, subject=subject, since=b["at"])) == [c["id"], b["id"]]
    assert ids(audit(stack, subject=subject, until=b["at"])) == [a["id"]]
    assert ids(audit(stack, subject=subject, since=b["at"], until=c["at"])) == [b["id"]]
    assert audit(stack, subject=unique("nothing-"))["items"] == []


def test_paging_with_a_cursor_or_an_offset_either_way(stack: Stack) -> None:
    subject = unique("page-")
    made = [append(stack, subject=subject, data={"n": n})["id"] for n in range(7)]

    def walk(order: str) -> list[list[int]]:
        pages, cursor = [], None
        while True:
            params: dict[str, Any] = {"subject": subject, "limit": 3, "order": order}
            if cursor is not None:
                params["cursor"] = cursor
            page = audit(stack, **params)
            pages.append([item["id"] for item in page["items"]])
            cursor = page["next_cursor"]
            if cursor is None:
                return pages

    assert walk("desc") == [made[6:3:-1], made[3:0:-1], made[0:1]]
    assert walk("asc") == [made[0:3], made[3:6], made[6:7]]
    by_offset = audit(stack, subject=subject, limit=2, offset=2, order="asc")
    assert [item["id"] for item in by_offset["items"]] == made[2:4]
    assert audit(stack, subject=subject)["items"][0]["id"] == made[-1]  # newest first


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 1001}, "query.limit"),
        ({"limit": 0}, "query.limit"),
        ({"order": "sideways"}, "query.order"),
        ({"cursor": 5, "offset": 2}, "query.offset"),
        ({"since": "yesterday"}, "query.since"),
        ({"since": "2024-01-02T00:00:00Z", "until": "2024-01-01T00:00:00Z"}, "query.since"),
    ],
)
def test_bad_audit_queries_are_422_naming_the_field(
    stack: Stack, params: dict[str, Any], field: str
) -> None:
    response = call(stack, "GET", "/audit", params=params)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


# --- the chain -------------------------------------------------------------------------------


def test_verify_is_ok_on_an_intact_chain(stack: Stack, engine: Engine) -> None:
    append(stack)
    result = verify(stack)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
    assert result == {
        "ok": True,
        "checked": rows,
        "first_broken_id": None,
        "detail": f"{rows} rows, chain intact",
    }


def test_the_database_refuses_updates_and_deletes(stack: Stack, engine: Engine) -> None:
    row_id = append(stack)["id"]
    for statement in (
        "UPDATE audit_events SET actor = 'someone' WHERE id = :id",
        "DELETE FROM audit_events WHERE id = :id",
    ):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement), {"id": row_id})
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("TRUNCATE audit_events"))
    assert verify(stack)["ok"] is True


def test_an_edited_row_is_reported_by_its_id(stack: Stack, engine: Engine) -> None:
    rows = [append(stack, data={"amount": "1.0"}) for _ in range(3)]
    target = rows[1]["id"]
    original = _row(engine, target)
    with as_superuser_without_triggers(engine) as conn:
        conn.execute(
            text("""UPDATE audit_events SET data = '{"amount": "100.0"}' WHERE id = :id"""),
            {"id": target},
        )
    try:
        result = verify(stack)
        assert result["ok"] is False
        assert result["first_broken_id"] == target
        assert "edited" in result["detail"]
    finally:
        with as_superuser_without_triggers(engine) as conn:
            conn.execute(
                text("UPDATE audit_events SET data = CAST(:data AS json) WHERE id = :id"),
                {"id": target, "data": original["data"]},
            )
    assert verify(stack)["ok"] is True


EDITS = [
    (
        "UPDATE audit_events SET actor = 'risk' WHERE id = :id",
        "UPDATE audit_events SET actor = :actor WHERE id = :id",
    ),
    (
        "UPDATE audit_events SET at = at + interval '1 second' WHERE id = :id",
        "UPDATE audit_events SET at = :at WHERE id = :id",
    ),
    (
        "UPDATE audit_events SET subject = 'another-order' WHERE id = :id",
        "UPDATE audit_events SET subject = :subject WHERE id = :id",
    ),
]


@pytest.mark.parametrize(("edit", "restore"), EDITS)
def test_an_edited_actor_time_or_subject_is_reported_too(
    stack: Stack, engine: Engine, edit: str, restore: str
) -> None:
    target = append(stack, subject=unique("order-"))["id"]
    append(stack)
    original = _row(engine, target)
    with as_superuser_without_triggers(engine) as conn:
        conn.execute(text(edit), {"id": target})
    try:
        assert verify(stack)["first_broken_id"] == target
    finally:
        with as_superuser_without_triggers(engine) as conn:
            conn.execute(text(restore), original)
    assert verify(stack)["ok"] is True


def test_a_deleted_row_is_reported(stack: Stack, engine: Engine) -> None:
    rows = [append(stack) for _ in range(3)]
    deleted, after = rows[1]["id"], rows[2]["id"]
    original = _row(engine, deleted)
    with as_superuser_without_triggers(engine) as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": deleted})
    try:
        result = verify(stack)
        assert result["ok"] is False
        assert result["first_broken_id"] == after
        assert "deleted" in result["detail"]
    finally:
        _reinsert(engine, original)
    assert verify(stack)["ok"] is True


def test_deleting_the_newest_row_is_reported(stack: Stack, engine: Engine) -> None:
    newest = append(stack)["id"]
    original = _row(engine, newest)
    with as_superuser_without_triggers(engine) as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": newest})
    try:
        result = verify(stack)
        assert result["ok"] is False
        assert result["first_broken_id"] == newest
        assert "newest rows were deleted" in result["detail"]
    finally:
        _reinsert(engine, original)
    assert verify(stack)["ok"] is True


def test_concurrent_appends_keep_the_chain_linear(stack: Stack) -> None:
    subject = unique("burst-")
    tokens = [None, service_token(stack, "execution"), service_token(stack, "risk")]

    def one(n: int) -> dict[str, Any]:
        return append(stack, token=tokens[n % 3], subject=subject, data={"n": n})

    with ThreadPoolExecutor(max_workers=20) as pool:
        rows = list(pool.map(one, range(20)))
    assert len({row["id"] for row in rows}) == 20
    assert len({row["prev_hash"] for row in rows}) == 20  # no two rows claim the same parent
    stored = audit(stack, subject=subject, order="asc", limit=100)["items"]
    assert sorted(row["n"] for row in (s["data"] for s in stored)) == list(range(20))
    result = verify(stack)
    assert result["ok"] is True, result


def _append_through_the_orm(engine: Engine, subject: str, data: dict[str, Any]) -> int:
    """A row written as compliance wrote them until its appends moved to asyncpg: the ORM
    over psycopg2, `data` encoded by SQLAlchemy. Every database from then holds such rows."""
    with Session(engine) as session, session.begin():
        session.execute(select(func.pg_advisory_xact_lock(AUDIT_CHAIN_LOCK)))
        row_id, at = session.execute(
            select(AUDIT_ID_SEQUENCE.next_value(), func.clock_timestamp())
        ).one()
        head = session.get(AuditChainHead, 1)
        assert head is not None
        fields: dict[str, Any] = {
            "id": row_id,
            "at": at.astimezone(UTC),
            "kind": "test.event",
            "actor": "operator",
            "on_behalf_of": None,
            "subject": subject,
            "data": data,
        }
        row_hash = link_hash(head.last_hash, canonical_content(**fields))
        session.add(AuditEvent(**fields, prev_hash=head.last_hash, hash=row_hash))
        head.last_id, head.last_hash = row_id, row_hash
    return int(row_id)


def test_rows_from_the_orm_and_from_the_event_loop_make_one_chain(
    stack: Stack, engine: Engine
) -> None:
    """Appends run on asyncpg now; the chain they extend was written by the ORM. Each
    continues the other, and the same event is stored as the same text either way."""
    subject = unique("mixed-")
    data = {"z": [1, 2.5, -0.0, 1e300], "é": "\u2028 ok", "none": None, "n": {"b": 1, "a": 2}}
    first = append(stack, subject=subject, data=data)["id"]
    before = _append_through_the_orm(engine, subject, data)
    after = append(stack, subject=subject, data=data)["id"]
    stored = [_row(engine, row_id) for row_id in (first, before, after)]
    assert len({row["data"] for row in stored}) == 1, [row["data"] for row in stored]
    assert [r["id"] for r in audit(stack, subject=subject, order="asc")["items"]] == [
        first,
        before,
        after,
    ]
    assert verify(stack)["ok"] is True
