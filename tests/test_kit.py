"""The shared kit against the real servers: errors, request ids, metrics, clients,
Vault renewal, Redis events, the TimescaleDB helper, log redaction."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from alembic import command
from sqlalchemy import Column, MetaData, Table, create_engine, text

from common import migrations
from common.auth import api_token_path
from common.clients import Agents
from common.contracts import CheckDecisions, OrderSide, RestingOrder
from common.db import LoopDatabase, make_time_series
from common.errors import Conflict, ServiceUnavailable, UpstreamError, VolexError
from common.events import EventBus
from common.logging import JsonFormatter, register_secret
from common.settings import Settings
from common.vault import VaultClient
from tests.conftest import Stack
from volex.bootstrap import policy_for


# --- errors and request ids ----------------------------------------------------------
def test_unknown_route_and_wrong_method_are_problem_json(stack: Stack) -> None:
    missing = stack.get("risk", "/no-such-thing")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert "no such endpoint" in missing.json()["detail"]
    wrong = httpx.post(stack.url("risk") + "/health", timeout=10)
    assert wrong.status_code == 405 and wrong.json()["title"] == "Method not allowed"


def test_request_id_is_kept_returned_and_logged(stack: Stack) -> None:
    rid = f"test-{time.time_ns()}"
    response = stack.get("meta", "/agents/health", headers={**stack.auth(), "X-Request-ID": rid})
    assert response.headers["x-request-id"] == rid
    log = stack.home / "logs" / "meta.log"
    # The access line is written as the response finishes: give it a moment.
    stack.wait_for(lambda: rid in log.read_text(), timeout=10, what="the request id in meta's log")
    generated = stack.get("risk", "/info").headers["x-request-id"]
    assert len(generated) == 32
    hostile = stack.get("risk", "/info", headers={**stack.auth(), "X-Request-ID": "a b;c"})
    assert hostile.headers["x-request-id"] != "a b;c"


def test_request_id_travels_to_other_agents(stack: Stack) -> None:
    rid = f"hop-{time.time_ns()}"
    settings = stack.settings
    meta_token = stack.admin_vault().secrets.kv.v2.read_secret_version(
        path=api_token_path("meta"), mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]["token"]

    async def call() -> dict[str, object]:
        from common.logging import request_id_var

        request_id_var.set(rid)
        async with Agents(settings, meta_token, timeout=5) as agents:
            info: dict[str, object] = await agents.risk.get("/info")
            return info

    info = asyncio.run(call())
    assert info["caller"] == {"kind": "service", "name": "meta"}
    log = stack.home / "logs" / "risk.log"
    stack.wait_for(lambda: rid in log.read_text(), timeout=10, what="the request id in risk's log")
    lines = [
        json.loads(line)
        for line in (stack.home / "logs" / "risk.log").read_text().splitlines()
        if rid in line
    ]
    assert lines and all(line["request_id"] == rid for line in lines)


def test_pooled_clients_queue_calls_beyond_their_connections(stack: Stack) -> None:
    """`Agents` (what every service uses): a pool per agent with at most `connections`
    connections; more calls at once wait their turn and all succeed."""

    async def burst() -> tuple[list[int], set[int], int]:
        async with Agents(stack.settings, stack.token, connections=2, keepalive_s=5) as agents:
            answers = await asyncio.gather(*(agents.risk.get("/info") for _ in range(12)))
            await agents.compliance.get("/info")
            pools = {id(agents[name].http) for name in ("risk", "compliance", "execution")}
            connector = agents.risk.http.connector
            assert connector is not None
            idle = connector._conns.values()  # (aiohttp's idle connections, per host)
            return [a["pid"] for a in answers], pools, sum(len(kept) for kept in idle)

    pids, pools, kept = asyncio.run(burst())
    assert len(pids) == 12 and len(set(pids)) == 1
    assert len(pools) == 3 and 1 <= kept <= 2


def test_client_names_an_unreachable_agent() -> None:
    settings = Settings(port_base=1, agent_url_template="http://127.0.0.1:9/{name}")

    async def call() -> None:
        async with Agents(settings, "t", timeout=1) as agents:
            await agents.risk.get("/info")

    with pytest.raises(ServiceUnavailable, match="risk is unreachable"):
        asyncio.run(call())


def test_client_gives_up_on_an_agent_that_never_answers() -> None:
    """A peer that takes the connection and never answers is a 503 after the client's
    timeout (the fleet's `http_timeout`), whether or not the caller gave one."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections queue in the kernel; nothing ever reads or answers
    port = silent.getsockname()[1]
    settings = Settings(
        port_base=1, agent_url_template=f"http://127.0.0.1:{port}/{{name}}", http_timeout=0.5
    )

    async def call(**kwargs: float) -> None:
        async with Agents(settings, "t") as agents:
            await asyncio.wait_for(agents.risk.post("/checks/pre-trade", json={}, **kwargs), 10)

    try:
        for kwargs in ({}, {"timeout": 0.5}):
            with pytest.raises(ServiceUnavailable, match="risk did not answer POST"):
                asyncio.run(call(**kwargs))
    finally:
        silent.close()


def test_post_model_sends_the_models_json_and_reads_the_answer_as_one() -> None:
    """`post_model` (the order path's checks) sends the body as the model's JSON and reads
    the answer as the model it expects; an answer that is not one is a 502, never a guess.
    `get_model` reads its answer the same way."""
    seen: list[object] = []

    async def answer(request: web.Request) -> web.Response:
        if request.method == "POST":
            seen.append(await request.json())
        approved = {"good": True, "bad": "perhaps"}[request.match_info["kind"]]
        return web.json_response({"decisions": [{"approved": approved, "checks": []}]})

    async def run() -> tuple[CheckDecisions, UpstreamError]:
        app = web.Application()
        app.router.add_post("/risk/{kind}", answer)
        app.router.add_get("/risk/{kind}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        settings = Settings(port_base=1, agent_url_template=f"http://127.0.0.1:{port}/{{name}}")
        body = RestingOrder(side=OrderSide.buy, price=Decimal("100.5"), amount=Decimal("0.1"))
        try:
            async with Agents(settings, "t") as agents:
                good = await agents.risk.post_model("/good", body, CheckDecisions)
                with pytest.raises(UpstreamError) as bad:
                    await agents.risk.post_model("/bad", body, CheckDecisions)
                got = await agents.risk.get_model("/good", CheckDecisions)
                assert got == good
                with pytest.raises(UpstreamError, match="answered /bad with a body that is not"):
                    await agents.risk.get_model("/bad", CheckDecisions)
        finally:
            await runner.cleanup()
        return good, bad.value

    good, bad = asyncio.run(run())
    assert seen[0] == {"side": "buy", "price": "100.5", "amount": "0.1"}
    assert good.decisions[0].approved is True and good.decisions[0].checks == []
    assert bad.status_code == 502 and "not CheckDecisions" in bad.message


def test_client_reports_its_own_refused_credentials_as_upstream_error(stack: Stack) -> None:
    async def call() -> None:
        async with Agents(stack.settings, "bad-token", timeout=5) as agents:
            await agents.risk.get("/info")

    # A peer refusing *our* token is not the end caller's 401: it must not look like one.
    with pytest.raises(UpstreamError, match="risk refused this service's credentials") as raised:
        asyncio.run(call())
    assert raised.value.status_code == 502


def test_client_passes_on_a_peers_4xx_about_the_input(stack: Stack) -> None:
    async def call() -> None:
        async with Agents(stack.settings, stack.token, timeout=5) as agents:
            await agents.risk.get("/no-such-endpoint")

    with pytest.raises(VolexError, match="risk: no such endpoint") as raised:
        asyncio.run(call())
    assert raised.value.status_code == 404


# --- metrics -------------------------------------------------------------------------
def test_metrics_count_requests_per_route(stack: Stack) -> None:
    for _ in range(3):
        stack.get("backtest", "/info")
    stack.health("backtest")
    text_ = httpx.get(stack.url("backtest") + "/metrics", timeout=10).text
    line = next(
        ln
        for ln in text_.splitlines()
        if ln.startswith("volex_http_requests_total")
        and 'route="/info"' in ln
        and 'status="200"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) >= 3
    assert (
        'volex_http_request_duration_seconds_bucket{le="0.01",method="GET",route="/info"}' in text_
    )
    assert 'volex_dependency_up{dependency="database"} 1.0' in text_
    assert 'volex_service_info{service="backtest",version=' in text_
    assert "volex_vault_token_ttl_seconds" in text_


# --- Vault client --------------------------------------------------------------------
def _short_lived_role(stack: Stack, tmp_path: Path, ttl: int, max_ttl: int) -> Path:
    admin = stack.admin_vault()
    admin.sys.create_or_update_acl_policy(name="volex-test-renewal", policy=policy_for("risk"))
    admin.auth.approle.create_or_update_approle(
        role_name="volex-test-renewal",
        token_policies=["volex-test-renewal"],
        token_ttl=f"{ttl}s",
        token_max_ttl=f"{max_ttl}s",
    )
    role_id = admin.auth.approle.read_role_id("volex-test-renewal")["data"]["role_id"]
    secret_id = admin.auth.approle.generate_secret_id("volex-test-renewal")["data"]["secret_id"]
    path = tmp_path / "role.json"
    path.write_text(json.dumps({"role_id": role_id, "secret_id": secret_id}))
    return path


def test_vault_token_is_renewed_then_replaced_at_max_ttl(stack: Stack, tmp_path: Path) -> None:
    role = _short_lived_role(stack, tmp_path, ttl=3, max_ttl=7)
    client = VaultClient(stack.settings.resolved_vault_addr(), role)
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        assert client.read(api_token_path("risk"))["token"]
        time.sleep(0.5)
    assert client.counters.renewals >= 1
    assert client.counters.logins >= 2  # max TTL reached: a fresh login, no failed read


def test_vault_client_logs_in_again_after_its_token_is_revoked(
    stack: Stack, tmp_path: Path
) -> None:
    role = _short_lived_role(stack, tmp_path, ttl=600, max_ttl=1200)
    client = VaultClient(stack.settings.resolved_vault_addr(), role)
    client.read(api_token_path("risk"))
    stack.admin_vault().auth.token.revoke(client.ensure_token())
    assert client.read(api_token_path("risk"))["token"]
    assert client.counters.logins == 2


def test_vault_unreachable_gives_a_clear_error_but_cache_serves(
    stack: Stack, tmp_path: Path
) -> None:
    role = _short_lived_role(stack, tmp_path, ttl=600, max_ttl=1200)
    client = VaultClient(stack.settings.resolved_vault_addr(), role)
    value = client.read(api_token_path("risk"))
    client.addr = "http://127.0.0.1:9"
    client._token = None
    with pytest.raises(ServiceUnavailable, match="Vault unreachable"):
        client.read(api_token_path("risk"), fresh=True)
    assert client.read(api_token_path("risk")) == value
    status = client.status()
    assert not status.ok and "unreachable" in status.detail


def test_vault_client_without_credentials_file_says_how_to_fix(tmp_path: Path) -> None:
    client = VaultClient("http://127.0.0.1:9", tmp_path / "missing.json")
    with pytest.raises(ServiceUnavailable, match="volex up"):
        client.read("anything", fresh=True)


# --- Redis events --------------------------------------------------------------------
def test_events_round_trip_through_redis(stack: Stack) -> None:
    async def run() -> dict[str, object]:
        bus = EventBus(stack.settings.resolved_redis_url())
        listener = bus.subscribe("test")
        receive = asyncio.ensure_future(listener.__anext__())
        for _ in range(50):  # wait until the subscription is in place
            if await bus.publish("test", {"n": 1}) > 0:
                break
            await asyncio.sleep(0.05)
        event = await asyncio.wait_for(receive, 5)
        await listener.aclose()
        await bus.close()
        return event

    assert asyncio.run(run()) == {"n": 1}


# --- database ------------------------------------------------------------------------
def test_time_series_helper_indexes_a_plain_table_without_timescaledb(stack: Stack) -> None:
    with stack.engine().begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS ts_probe"))
        conn.execute(text("CREATE TABLE ts_probe (symbol text, time timestamptz, price numeric)"))
        made_hypertable = make_time_series(conn, "ts_probe", "time", key_columns=("symbol",))
        indexes = (
            conn.execute(text("SELECT indexdef FROM pg_indexes WHERE tablename = 'ts_probe'"))
            .scalars()
            .all()
        )
        conn.execute(text("DROP TABLE ts_probe"))
    assert made_hypertable is False  # the embedded PostgreSQL has no TimescaleDB
    assert any('(symbol, "time" DESC)' in ix for ix in indexes), indexes


def test_loop_writer_inserts_all_rows_or_none_and_maps_failures(stack: Stack) -> None:
    with stack.engine().begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS writer_probe"))
        conn.execute(
            text(
                "CREATE TABLE writer_probe (id int PRIMARY KEY, side text NOT NULL"
                " CHECK (side IN ('buy', 'sell')), meta jsonb NOT NULL)"
            )
        )
    table = Table("writer_probe", MetaData(), Column("id"), Column("side"), Column("meta"))
    url = stack.settings.resolved_database_url()

    async def run() -> list[Exception]:
        writer = LoopDatabase(url, size=2, synchronous_commit=False)
        await writer.open()
        failures: list[Exception] = []
        try:
            await writer.insert(table, [{"id": i, "side": "buy", "meta": {"n": i}} for i in (1, 2)])
            bad = [{"id": 3, "side": "buy", "meta": {}}, {"id": 4, "side": "hold", "meta": {}}]
            again = [{"id": 5, "side": "sell", "meta": {}}, {"id": 1, "side": "sell", "meta": {}}]
            for rows in (bad, again):
                try:
                    await writer.insert(table, rows)
                except VolexError as exc:
                    failures.append(exc)
        finally:
            await writer.close()
        nowhere = LoopDatabase(url.replace(f":{stack.settings.pg_port}/", ":1/"))
        await nowhere.open()
        try:
            await nowhere.insert(table, [{"id": 9, "side": "buy", "meta": {}}])
        except VolexError as exc:
            failures.append(exc)
        finally:
            await nowhere.close()
        return failures

    check, duplicate, unreachable = asyncio.run(run())
    with stack.engine().begin() as conn:
        stored = conn.execute(text("SELECT id, side, meta FROM writer_probe ORDER BY id")).all()
        conn.execute(text("DROP TABLE writer_probe"))
    # The batches with a bad row left nothing behind: not row 3, not row 5.
    assert [tuple(row) for row in stored] == [(1, "buy", {"n": 1}), (2, "buy", {"n": 2})]
    assert isinstance(check, Conflict) and "writer_probe_side_check" in check.message
    assert isinstance(duplicate, Conflict) and "writer_probe_pkey" in duplicate.message
    assert isinstance(unreachable, ServiceUnavailable)
    assert "database unavailable" in unreachable.message


def test_loop_transaction_commits_the_block_or_nothing_and_maps_failures(stack: Stack) -> None:
    with stack.engine().begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS loop_tx_probe"))
        conn.execute(text("CREATE TABLE loop_tx_probe (id int PRIMARY KEY, note text NOT NULL)"))
    url = stack.settings.resolved_database_url()

    class Refused(Exception):
        pass

    async def run() -> list[BaseException]:
        db = LoopDatabase(url, size=2)
        await db.open()
        failures: list[BaseException] = []
        try:
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO loop_tx_probe VALUES (1, 'kept')")
                await conn.execute("INSERT INTO loop_tx_probe VALUES (2, 'kept')")
            for second in ("(1, 'clash')", "(4, NULL)"):
                try:
                    async with db.transaction() as conn:
                        await conn.execute("INSERT INTO loop_tx_probe VALUES (3, 'lost')")
                        await conn.execute(f"INSERT INTO loop_tx_probe VALUES {second}")  # noqa: S608
                except VolexError as exc:
                    failures.append(exc)
            try:  # our own refusal half-way: the rows before it go too
                async with db.transaction() as conn:
                    await conn.execute("INSERT INTO loop_tx_probe VALUES (5, 'lost')")
                    raise Refused
            except Refused as exc:
                failures.append(exc)
        finally:
            await db.close()
        try:
            async with db.transaction():
                pass
        except VolexError as exc:
            failures.append(exc)
        return failures

    clash, null, refused, closed = asyncio.run(run())
    with stack.engine().begin() as conn:
        stored = conn.execute(text("SELECT id, note FROM loop_tx_probe ORDER BY id")).all()
        conn.execute(text("DROP TABLE loop_tx_probe"))
    assert [tuple(row) for row in stored] == [(1, "kept"), (2, "kept")]
    assert isinstance(clash, Conflict) and "loop_tx_probe_pkey" in clash.message
    assert isinstance(null, Conflict) and "note" in null.message
    assert isinstance(refused, Refused)
    assert isinstance(closed, ServiceUnavailable)


def test_migrations_are_at_every_head(stack: Stack) -> None:
    from common.migrations import heads

    with stack.engine().connect() as conn:
        applied = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    assert applied == heads() and "0001" not in applied - heads()


def test_risks_queued_audit_events_move_to_the_kit_outbox(stack: Stack) -> None:
    """risk_0002: events risk had queued in its own table go on from `event_outbox`, in
    order, with their ids and times; delivered ones stay behind; down and up again."""
    url = stack.settings.resolved_database_url()
    base, _ = url.rsplit("/", 1)
    admin = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS migrate_risk"))
        conn.execute(text("CREATE DATABASE migrate_risk"))
    scratch_url = base + "/migrate_risk"
    scratch = create_engine(scratch_url)
    try:
        migrations.upgrade(scratch_url)
        command.downgrade(migrations.alembic_config(scratch_url), "risk_0001")
        with scratch.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO risk_audit_outbox (event_id, kind, actor, subject, data,"
                    " attempts, last_error, delivered_at) VALUES"
                    " ('e-1', 'risk.halted', 'operator', 's', '{\"reason\": \"a\"}', 0, NULL,"
                    " now()),"
                    " ('e-2', 'risk.resumed', 'operator', 's', '{\"reason\": \"b\"}', 3,"
                    " 'compliance unreachable', NULL),"
                    " ('e-3', 'risk.checked', 'risk', 'o-1', '{}', 0, NULL, NULL)"
                )
            )
        migrations.upgrade(scratch_url)
        with scratch.connect() as conn:
            moved = conn.execute(
                text("SELECT service, payload, attempts, last_error FROM event_outbox ORDER BY id")
            ).all()
            gone = conn.execute(text("SELECT to_regclass('risk_audit_outbox')")).scalar()
        assert gone is None
        assert [(m.service, m.payload["event_id"], m.payload["kind"]) for m in moved] == [
            ("risk", "e-2", "risk.resumed"),
            ("risk", "e-3", "risk.checked"),
        ]
        assert moved[0].payload["data"]["reason"] == "b" and moved[0].attempts == 3
        assert moved[0].payload["data"]["occurred_at"].endswith("+00:00")
        assert moved[0].last_error == "compliance unreachable"
        # Down again: the queue goes back to risk's table.
        command.downgrade(migrations.alembic_config(scratch_url), "risk_0001")
        with scratch.connect() as conn:
            back = conn.execute(
                text("SELECT event_id, kind FROM risk_audit_outbox ORDER BY id")
            ).all()
            left = conn.execute(text("SELECT count(*) FROM event_outbox")).scalar_one()
        assert [tuple(r) for r in back] == [("e-2", "risk.resumed"), ("e-3", "risk.checked")]
        assert left == 0
    finally:
        scratch.dispose()
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS migrate_risk"))
        admin.dispose()


# --- logging -------------------------------------------------------------------------
def test_registered_secrets_are_redacted_from_log_lines() -> None:
    register_secret({"api_key": "redact-me-123456", "short": "abc"})
    formatter = JsonFormatter("test")
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "key is %s", ("redact-me-123456",), None
    )
    record.extra_field = "also redact-me-123456 here"
    line = formatter.format(record)
    assert "redact-me-123456" not in line
    entry = json.loads(line)
    assert entry["msg"] == "key is [redacted]"
    assert entry["extra_field"] == "also [redacted] here"
    assert entry["service"] == "test"


def test_secrets_needing_json_escapes_are_redacted_too() -> None:
    secret = 'pa"ss\\wörd-123'
    register_secret(secret)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "got %s", (secret,), None)
    line = JsonFormatter("test").format(record)
    assert secret not in json.loads(line)["msg"]
    assert json.dumps(secret)[1:-1] not in line
