"""Real exchanges through the registry: live only when switched on, keys from Vault,
fail closed when Vault is gone (the exchange is a fake Binance on 127.0.0.1)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import hvac.exceptions
import pytest
from sqlalchemy import text

from agents.compliance.schemas import PolicySet
from agents.execution.exchanges import ExchangeRegistry
from agents.execution.settings import ExecutionSettings
from common.errors import NotFound, ServiceUnavailable, Unprocessable
from common.vault import VaultClient
from tests.agents.execution.fake_binance import FakeBinance
from tests.agents.execution.live_service import LiveExecution
from tests.conftest import Stack


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    server = FakeBinance()
    await server.start()
    yield server
    await server.stop()


def _registry(stack: Stack, tmp_path: Path, fake: FakeBinance, live: bool) -> ExchangeRegistry:
    settings = ExecutionSettings(
        home=tmp_path, live_trading=live, exchange_api_hosts={"binance": fake.url}
    )
    vault = VaultClient(
        stack.settings.resolved_vault_addr(), stack.settings.approle_file("execution")
    )
    return ExchangeRegistry(settings, vault)


@pytest.mark.anyio
async def test_a_real_exchange_trades_on_paper_while_live_trading_is_off(
    stack: Stack, tmp_path: Path, fake: FakeBinance
) -> None:
    registry = _registry(stack, tmp_path, fake, live=False)
    try:
        await registry.ensure("binance")
        assert registry.modes["binance"] == "paper"
        with pytest.raises(NotFound, match="no exchange"):
            await registry.ensure("notanexchange")
    finally:
        await registry.close()


def _call(stack: Stack, method: str, service: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(
        method,
        stack.url(service) + path,
        headers=stack.auth(),
        timeout=60,
        **kwargs,
    )


@pytest.fixture
def binance_allowed(stack: Stack) -> Iterator[None]:
    """Compliance allows only `sim` by default: allow Binance too for one test."""
    saved = _call(stack, "GET", "compliance", "/policies").json()
    policy = {k: saved[k] for k in PolicySet.model_fields}
    allowed = {**policy, "allowed_exchanges": [*policy["allowed_exchanges"], "binance"]}
    assert _call(stack, "PUT", "compliance", "/policies", json=allowed).status_code == 200
    yield
    assert _call(stack, "PUT", "compliance", "/policies", json=policy).status_code == 200


@pytest.mark.usefixtures("binance_allowed")
def test_a_real_exchange_trades_on_paper_through_the_guarded_path(stack: Stack) -> None:
    """Live trading off, no keys: an order on `binance` goes through risk and compliance
    like any other and fills on paper at the (fake) exchange's own book, with its taker
    fee; the account, the position and the audit trail follow; nothing but public market
    data is asked of the exchange."""
    fake = stack.binance
    assert fake is not None, "the session fleet talks to a fake Binance"
    fake.bids, fake.asks, fake.last = [["42000.00", "1.5"]], [["42000.20", "2"]], "42000.10"
    # Risk's own tests leave a 100,000 equity peak; this paper account starts at 10,000.
    for path, body in (("/drawdown/reset", {"reason": "paper test", "equity": "1"}),
                       ("/resume", {"reason": "paper test"})):  # fmt: skip
        assert _call(stack, "POST", "risk", path, json=body).status_code == 200
    cid = f"paper-{uuid.uuid4().hex[:12]}"
    order = {"exchange": "binance", "symbol": "BTC/USDT", "side": "buy", "type": "market",
             "amount": "0.001", "client_order_id": cid}  # fmt: skip
    first = _call(stack, "POST", "execution", "/orders", json=order)
    assert first.status_code == 201, first.text
    # The paper account is an account of its own for risk's drawdown breaker.
    drawdown = _call(stack, "GET", "risk", "/drawdown").json()
    assert "binance_paper" in {a["account"] for a in drawdown["accounts"]}, drawdown
    placed = first.json()
    assert placed["status"] == "filled" and Decimal(placed["average_price"]) == Decimal("42000.20")
    assert Decimal(placed["fee"]) == Decimal("0.0420002")  # Binance's taker fee, 0.1 %
    again = _call(stack, "POST", "execution", "/orders", json=order)
    assert again.status_code == 200 and again.json()["id"] == placed["id"]

    exchanges = {e["id"]: e["mode"] for e in _call(stack, "GET", "execution", "/exchanges").json()}
    assert exchanges["binance"] == "paper"
    balance = _call(stack, "GET", "execution", "/balance/binance").json()["balances"]
    assert Decimal(balance["BTC"]["total"]) >= Decimal("0.001")
    [position] = [
        p
        for p in _call(stack, "GET", "execution", "/positions/binance").json()
        if p["symbol"] == "BTC/USDT"
    ]
    assert Decimal(position["amount"]) >= Decimal("0.001")
    checks = _call(stack, "GET", "risk", f"/checks/{cid}").json()
    assert checks[0]["approved"] is True

    def audited() -> set[str] | None:
        page = _call(stack, "GET", "compliance", "/audit", params={"subject": cid}).json()
        kinds = {e["kind"] for e in page["items"]}
        wanted = {"order.requested", "risk.checked", "policy.checked", "order.filled",
                  "order.completed"}  # fmt: skip
        return kinds if wanted <= kinds else None

    stack.wait_for(audited, timeout=30, what="the paper order's audit trail")
    public = {"/api/v3/exchangeInfo", "/api/v3/depth", "/api/v3/ticker/24hr", "/api/v3/klines"}
    assert {path for _, path, _ in fake.requests} <= public  # no keys, no private calls

    close = {**order, "side": "sell", "reduce_only": True, "client_order_id": f"{cid}-close"}
    assert _call(stack, "POST", "execution", "/orders", json=close).status_code == 201


@pytest.mark.anyio
async def test_live_exchange_opens_with_vault_keys_and_fails_closed_without_vault(
    stack: Stack, tmp_path: Path, fake: FakeBinance
) -> None:
    registry = _registry(stack, tmp_path, fake, live=True)
    try:
        stack.admin_vault().secrets.kv.v2.delete_metadata_and_all_versions(
            path="exchanges/binance", mount_point="secret"
        )
        with pytest.raises(Unprocessable, match="volex secrets set-exchange binance"):
            await registry.ensure("binance")
        stack.volex("secrets", "set-exchange", "binance", input="live-key-1\nlive-secret-1\n")
        adapter = await registry.ensure("binance")
        assert registry.modes["binance"] == "live"
        ticker = await adapter.fetch_ticker("BTC/USDT")
        assert ticker.ask == Decimal("42000.20")

        stack.volex("stop", "vault")
        try:
            with pytest.raises(ServiceUnavailable, match="Vault unavailable"):
                await registry.ensure("binance")
            # Paper trading on the simulated exchange goes on without Vault.
            sim = await registry.ensure("sim")
            assert (await sim.fetch_ticker("BTC/USDT")).bid > 0
        finally:
            stack.volex("start", "vault")
        assert await registry.ensure("binance") is adapter
    finally:
        await registry.close()


@pytest.mark.anyio
async def test_keys_stored_for_a_testnet_open_the_exchange_in_sandbox_mode(
    stack: Stack, tmp_path: Path
) -> None:
    """`volex secrets set-exchange --sandbox` keys trade on the exchange's testnet: the
    live connection opened with them points at it (no request is made here)."""
    kv = stack.admin_vault().secrets.kv.v2
    try:
        saved = kv.read_secret_version(
            path="exchanges/binance", mount_point="secret", raise_on_deleted_version=True
        )
    except hvac.exceptions.InvalidPath:
        saved = None

    async def opened(*flags: str) -> str:
        stack.volex("secrets", "set-exchange", "binance", *flags, input="k\ns\n")
        settings = ExecutionSettings(home=tmp_path, live_trading=True)
        vault = VaultClient(
            stack.settings.resolved_vault_addr(), stack.settings.approle_file("execution")
        )
        registry = ExchangeRegistry(settings, vault)
        try:
            adapter = await registry.ensure("binance")
            assert registry.modes["binance"] == "live"
            api: str = adapter.client.urls["api"]["public"]  # type: ignore[attr-defined]
            return api
        finally:
            await registry.close()

    try:
        assert (await opened()).startswith("https://api.binance.com")
        assert (await opened("--sandbox")).startswith("https://testnet.binance.vision")
    finally:
        if saved is None:
            kv.delete_metadata_and_all_versions(path="exchanges/binance", mount_point="secret")
        else:
            keys = saved["data"]["data"]
            kv.create_or_update_secret(path="exchanges/binance", secret=keys, mount_point="secret")


# --- live trading through a live execution service ---------------------------------------
@pytest.fixture(scope="module")
def live(stack: Stack) -> Iterator[LiveExecution]:
    """A live execution service (its own database) on a fake Binance, and on a fake
    Binance.US: the same REST API, but no native pair for our adapter there."""
    service = LiveExecution(stack, ("binance", "binanceus"))
    try:
        service.start()
        yield service
    finally:
        service.stop()


@pytest.fixture
def live_allowed(stack: Stack) -> Iterator[None]:
    """Compliance allows only `sim` by default: allow the two live exchanges for one test."""
    saved = _call(stack, "GET", "compliance", "/policies").json()
    policy = {k: saved[k] for k in PolicySet.model_fields}
    extra = ["binance", "binanceus"]
    allowed = {**policy, "allowed_exchanges": [*policy["allowed_exchanges"], *extra]}
    assert _call(stack, "PUT", "compliance", "/policies", json=allowed).status_code == 200
    yield
    assert _call(stack, "PUT", "compliance", "/policies", json=policy).status_code == 200


def _entry(live: LiveExecution, exchange: str) -> dict[str, object]:
    fake = live.fakes[exchange]
    fake.bids, fake.asks, fake.last = [["42000.00", "1.5"]], [["42000.20", "2"]], "42000.10"
    order = {"exchange": exchange, "symbol": "BTC/USDT", "side": "buy", "type": "market",
             "amount": "0.001", "stop_loss": "40000", "take_profit": "44000",
             "client_order_id": f"live-{uuid.uuid4().hex[:12]}"}  # fmt: skip
    placed = live.post("/orders", order)
    assert placed.status_code == 201, placed.text
    assert placed.json()["status"] == "filled"
    return placed.json()


@pytest.mark.usefixtures("live_allowed", "active")
def test_live_binance_brackets_rest_on_the_exchange_as_one_oco(live: LiveExecution) -> None:
    """An entry with stop_loss and take_profit on live Binance: before the 201 the legs
    are one order list on the exchange under execution's client ids (nothing watched);
    the take-profit fills there, Binance expires the stop, and execution records one
    close and one cancelled leg."""
    fake = live.fakes["binance"]
    entry = _entry(live, "binance")
    legs = [o for o in live.orders("binance", "BTC/USDT") if o["id"] > entry["id"]]
    assert [(o["role"], o["type"], o["side"], o["status"], Decimal(o["amount"])) for o in legs] == [
        ("bracket_sl", "stop_loss", "sell", "open", Decimal("0.001")),
        ("bracket_tp", "take_profit", "sell", "open", Decimal("0.001")),
    ]
    stop, target = legs
    [sent] = fake.calls("POST", "/api/v3/orderList/oco")
    assert (sent["side"], Decimal(sent["quantity"])) == ("SELL", Decimal("0.001"))
    assert (sent["belowType"], sent["belowStopPrice"], sent["belowClientOrderId"]) == (
        "STOP_LOSS", "40000.00", stop["client_order_id"]
    )  # fmt: skip
    assert (sent["aboveType"], sent["abovePrice"], sent["aboveClientOrderId"]) == (
        "LIMIT_MAKER", "44000.00", target["client_order_id"]
    )  # fmt: skip
    pair = fake.pair_of(stop["client_order_id"])
    assert pair["listOrderStatus"] == "EXECUTING"
    assert {str(leg["orderId"]) for leg in pair["legs"]} == {
        stop["exchange_order_id"],
        target["exchange_order_id"],
    }
    assert len(fake.calls("POST", "/api/v3/order")) == 1  # the entry: no leg sent alone
    position = live.position("binance", "BTC/USDT")
    assert position is not None and position["protected_by"] == "exchange"

    fake.last = "44000.50"  # the market trades through the take-profit
    live.wait_for(
        lambda: live.position("binance", "BTC/USDT") is None,
        what="the take-profit's fill to close the position",
        state=lambda: (
            live.get("/positions/binance").json(),
            live.orders("binance", "BTC/USDT"),
            fake.pair_of(stop["client_order_id"]),
            live.stack.get("risk", "/state").json(),
        ),
    )
    after = {o["role"]: o for o in live.orders("binance", "BTC/USDT") if o["id"] > entry["id"]}
    assert set(after) == {"bracket_sl", "bracket_tp"}  # closed once: no close order of ours
    assert after["bracket_tp"]["status"] == "filled"
    assert Decimal(after["bracket_tp"]["average_price"]) == Decimal(44000)
    assert after["bracket_sl"]["status"] == "cancelled"
    assert "one-cancels-the-other" in after["bracket_sl"]["reason"]
    assert len(fake.calls("POST", "/api/v3/order")) == 1
    with live.engine().connect() as conn:
        fills = conn.execute(
            text("SELECT side, amount, price FROM fills WHERE exchange = 'binance' ORDER BY id")
        ).all()
    assert [(f.side, f.amount, f.price) for f in fills] == [
        ("buy", Decimal("0.001"), Decimal("42000.20")),
        ("sell", Decimal("0.001"), Decimal(44000)),
    ]


@pytest.mark.usefixtures("live_allowed", "active")
def test_a_live_exchange_without_native_pairs_has_its_legs_watched(
    live: LiveExecution,
) -> None:
    """Binance.US (no order list in our adapter): nothing is placed for the legs, the
    position is watched by execution, which closes it at market when the stop is hit."""
    fake = live.fakes["binanceus"]
    _entry(live, "binanceus")
    position = live.position("binanceus", "BTC/USDT")
    assert position is not None and position["protected_by"] == "execution"
    assert fake.calls("POST", "/api/v3/orderList/oco") == []
    assert len(fake.calls("POST", "/api/v3/order")) == 1  # the entry only

    fake.bids, fake.asks, fake.last = [["39990.00", "3"]], [["39990.20", "3"]], "39990.10"
    live.wait_for(
        lambda: live.position("binanceus", "BTC/USDT") is None,
        what="execution to close the position at its stop",
        state=lambda: (
            live.get("/positions/binanceus").json(),
            live.orders("binanceus", "BTC/USDT"),
            live.stack.get("risk", "/state").json(),
        ),
    )
    [_, close] = fake.calls("POST", "/api/v3/order")
    assert (close["side"], close["type"]) == ("SELL", "MARKET")
    roles = [o["role"] for o in live.orders("binanceus", "BTC/USDT")]
    assert roles == ["entry", "stop_loss"]


@pytest.mark.usefixtures("live_allowed", "active")
def test_a_fee_taken_in_the_coin_leaves_the_position_what_the_account_holds(
    live: LiveExecution,
) -> None:
    """Binance takes a buy's fee in the coin bought: the position is the coins received
    (bought less the fee), so a close or a protective leg never asks for coins the account
    does not have. (Last in this module: the position it leaves is off Binance's step.)"""
    fake = live.fakes["binance"]
    fake.bids, fake.asks, fake.last = [["42000.00", "1.5"]], [["42000.20", "2"]], "42000.10"
    fake.fee_asset = "BTC"
    try:
        with live.engine().connect() as conn:  # (before any order, the exchange is not open)
            held = conn.execute(
                text("SELECT coalesce(sum(amount), 0) FROM positions WHERE exchange = 'binance'")
            ).scalar_one()
        body = {"exchange": "binance", "symbol": "BTC/USDT", "side": "buy", "type": "market",
                "amount": "0.002", "client_order_id": f"live-{uuid.uuid4().hex[:12]}"}  # fmt: skip
        placed = live.post("/orders", body)
        assert placed.status_code == 201, placed.text
        assert Decimal(placed.json()["filled"]) == Decimal("0.002")
        position = live.position("binance", "BTC/USDT")
        assert position is not None
        assert Decimal(position["amount"]) - held == Decimal("0.002") - Decimal("0.000002")
        assert Decimal(position["entry_price"]) == Decimal("42000.20")
    finally:
        fake.fee_asset = "USDT"
