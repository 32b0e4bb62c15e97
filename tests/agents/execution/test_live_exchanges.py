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
async def test_a_real_exchange_needs_live_trading_switched_on(
    stack: Stack, tmp_path: Path, fake: FakeBinance
) -> None:
    registry = _registry(stack, tmp_path, fake, live=False)
    try:
        with pytest.raises(Unprocessable, match="VOLEX_LIVE_TRADING=1"):
            await registry.ensure("binance")
        with pytest.raises(NotFound, match="no exchange"):
            await registry.ensure("notanexchange")
    finally:
        await registry.close()


def test_the_order_endpoint_refuses_a_real_exchange_while_live_is_off(stack: Stack) -> None:
    response = httpx.post(
        stack.url("execution") + "/orders",
        headers=stack.auth(),
        timeout=30,
        json={"exchange": "binance", "symbol": "BTC/USDT", "side": "buy", "amount": "0.001"},
    )
    assert response.status_code == 422 and "live trading is off" in response.json()["detail"]


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
