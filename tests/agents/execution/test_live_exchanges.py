"""Real exchanges through the registry: live only when switched on, keys from Vault,
fail closed when Vault is gone (the exchange is a fake Binance on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from agents.execution.exchanges import ExchangeRegistry
from agents.execution.settings import ExecutionSettings
from common.errors import NotFound, ServiceUnavailable, Unprocessable
from common.vault import VaultClient
from tests.agents.execution.fake_binance import FakeBinance
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


def test_the_order_endpoint_takes_a_real_exchange_to_paper_while_live_is_off(
    stack: Stack,
) -> None:
    """No keys, no live switch: the paper account opens. Without a route to the real
    Binance (the test machine) the order is refused because its public data cannot be
    read (503); with one it fills on paper."""
    response = httpx.post(
        stack.url("execution") + "/orders",
        headers=stack.auth(),
        timeout=60,
        json={"exchange": "binance", "symbol": "BTC/USDT", "side": "buy", "amount": "0.001"},
    )
    assert response.status_code in (201, 503), response.text
    if response.status_code == 503:
        assert "api.binance.com" in response.json()["detail"]
    exchanges = {e["id"]: e["mode"] for e in stack.get("execution", "/exchanges").json()}
    assert exchanges["binance"] == "paper"


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
