"""create_service in-process (httpx ASGITransport) against the real database:
commits happen before the response, crashes answer problem+json with a request id."""

from __future__ import annotations

import asyncio
import gc

import httpx
from fastapi import APIRouter
from sqlalchemy import text

from common.auth import digest
from common.db import SessionDep, make_engine, make_session_factory
from common.errors import Unprocessable
from common.service import GEN0_THRESHOLD, create_service
from tests.conftest import Stack

router = APIRouter()


@router.post("/duplicate", status_code=201)
def insert_duplicates(session: SessionDep) -> dict[str, str]:
    # The unique constraint is deferred: the violation surfaces only at commit.
    session.execute(text("INSERT INTO deferred_probe (k) VALUES (1), (1)"))
    return {"saved": "yes"}


@router.get("/boom")
def boom() -> None:
    raise RuntimeError("kaboom-internal-detail")


@router.get("/refuse")
def refuse() -> None:
    raise Unprocessable("amount must be positive: got -1")


def _call(stack: Stack, method: str, path: str) -> httpx.Response:
    app = create_service("risk", [router], settings=stack.settings)
    kit = app.state.kit
    kit.authenticator.load({"operator": digest("test-token")})
    kit.engine = make_engine(stack.settings.resolved_database_url())
    kit.session_factory = make_session_factory(kit.engine)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://risk") as client:
            return await client.request(
                method, path, headers={"Authorization": "Bearer test-token"}
            )

    try:
        return asyncio.run(go())
    finally:
        kit.engine.dispose()


def test_failed_commit_is_an_error_not_a_success(stack: Stack) -> None:
    with stack.engine().begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS deferred_probe"))
        conn.execute(
            text(
                "CREATE TABLE deferred_probe (k int,"
                " CONSTRAINT uq_probe UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    try:
        response = _call(stack, "POST", "/duplicate")
        # The commit fails before the response: the caller hears 409, never a 201.
        assert response.status_code == 409, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "uq_probe" in response.json()["detail"]
        with stack.engine().connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM deferred_probe")).scalar_one() == 0
    finally:
        with stack.engine().begin() as conn:
            conn.execute(text("DROP TABLE deferred_probe"))


def test_unexpected_error_is_problem_json_with_request_id(stack: Stack) -> None:
    response = _call(stack, "GET", "/boom")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    rid = response.headers["x-request-id"]
    assert rid and rid in response.json()["detail"]
    assert "kaboom" not in response.json()["detail"]  # internals stay in the log


def test_domain_error_carries_its_status_and_message(stack: Stack) -> None:
    response = _call(stack, "GET", "/refuse")
    assert response.status_code == 422
    assert response.json()["detail"] == "amount must be positive: got -1"


def test_a_started_service_keeps_its_startup_objects_out_of_the_collectors_passes(
    stack: Stack,
) -> None:
    app = create_service("risk", [router], settings=stack.settings)
    threshold = gc.get_threshold()

    async def started() -> tuple[int, int]:
        async with app.router.lifespan_context(app):
            return gc.get_freeze_count(), gc.get_threshold()[0]

    try:
        frozen, young = asyncio.run(started())
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert frozen > 10_000  # the modules, models and routes it started with
    assert young == GEN0_THRESHOLD
