"""The exchanges execution can trade on, each behind the same adapter interface.

`sim` is always there. A real exchange (any CCXT id) is opened on first use: in paper
mode while live trading is off (its public market data through a keyless connection,
simulated fills on a durable account under `<home>/paper/<id>`; no keys, no Vault), live
with `VOLEX_LIVE_TRADING=1` and its keys in Vault at `secret/exchanges/<id>`. Live keys are
re-checked with Vault before every order, so an unreachable Vault stops live orders (503)
while `sim` and paper accounts go on. Paper accounts that exist on disk are reopened at
start, so their resting orders keep being matched after a restart.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

from agents.execution.exchange.base import ExchangeAdapter, Market
from agents.execution.exchange.paper import PaperExchange
from agents.execution.exchange.sim import SimExchange
from agents.execution.settings import ExecutionSettings
from common.errors import NotFound, ServiceUnavailable, Unprocessable
from common.vault import SecretNotFound, VaultClient


class ExchangeRegistry:
    """Adapters by exchange id, with their markets loaded once."""

    def __init__(self, settings: ExecutionSettings, vault: VaultClient | None = None) -> None:
        self.settings = settings
        self.vault = vault
        self.adapters: dict[str, ExchangeAdapter] = {
            "sim": SimExchange(
                state_dir=settings.home_dir / "sim",
                seed=settings.sim_seed,
                starting_balances={"USDT": settings.sim_quote_balance},
                latency_ms=settings.sim_latency_ms,
            )
        }
        self.modes = {"sim": "simulated"}
        # Keyless CCXT connections for public market data (candles), opened on first use.
        self.public: dict[str, ExchangeAdapter] = {}
        self._markets: dict[str, dict[str, Market]] = {}
        self._opening = asyncio.Lock()
        if not settings.live_trading:
            for state_dir in sorted(self.paper_root.glob("*")):
                if state_dir.is_dir() and self._is_ccxt(state_dir.name):
                    self._add_paper(state_dir.name)

    @property
    def paper_root(self) -> Path:
        return self.settings.home_dir / "paper"

    def account(self, exchange: str) -> str:
        """The account name risk keeps a drawdown peak for: the exchange id, and for a paper
        account `<id>_paper` (a paper account and the live one later are different money)."""
        return f"{exchange}_paper" if self.modes.get(exchange) == "paper" else exchange

    def get(self, exchange: str) -> ExchangeAdapter:
        try:
            return self.adapters[exchange]
        except KeyError:
            raise NotFound(
                f"exchange {exchange!r} is not open; available: {', '.join(self.adapters)}"
                " (a real exchange opens with its first order: paper, or live when switched on)"
            ) from None

    def credentials(self, exchange: str) -> dict[str, str]:
        """The exchange's keys, read from Vault now (never from a cache): fail closed."""
        if self.vault is None:
            raise ServiceUnavailable(f"live trading on {exchange} needs Vault; none configured")
        try:
            return {
                k: str(v) for k, v in self.vault.read(f"exchanges/{exchange}", fresh=True).items()
            }
        except SecretNotFound as exc:
            raise Unprocessable(
                f"no API keys for {exchange}: store them with "
                f"`volex secrets set-exchange {exchange}`"
            ) from exc
        except ServiceUnavailable as exc:
            raise ServiceUnavailable(
                f"live order refused: Vault unavailable ({exc.message}); paper trading (sim, "
                "and real exchanges while live trading is off) goes on"
            ) from exc

    async def ensure(self, exchange: str) -> ExchangeAdapter:
        """The adapter for `exchange`: paper while live trading is off, else a live CCXT
        connection (keys from Vault, re-read before every order: fail closed)."""
        if exchange in self.adapters:
            if self.modes[exchange] == "live":
                await asyncio.to_thread(self.credentials, exchange)
            return self.adapters[exchange]
        if not self._is_ccxt(exchange):
            raise NotFound(f"no exchange {exchange!r}: use 'sim' or a CCXT exchange id")
        async with self._opening:
            if exchange not in self.adapters:
                if self.settings.live_trading:
                    self.adapters[exchange] = self._open_live(exchange)
                    self.modes[exchange] = "live"
                else:
                    self._add_paper(exchange)
        return await self.ensure(exchange)

    @staticmethod
    def _is_ccxt(exchange: str) -> bool:
        import ccxt

        return exchange in ccxt.exchanges

    def _add_paper(self, exchange: str) -> None:
        """Paper trading on `exchange`'s own prices: its keyless public connection (shared
        with `data_source`) and a simulated account starting with `sim_quote_balance` of
        `paper_quote_currency`."""
        self.adapters[exchange] = PaperExchange(
            exchange,
            source=self._public(exchange),
            state_dir=self.paper_root / exchange,
            starting_balances={self.settings.paper_quote_currency: self.settings.sim_quote_balance},
        )
        self.modes[exchange] = "paper"

    def _open_live(self, exchange: str) -> ExchangeAdapter:
        from agents.execution.exchange.ccxt_adapter import CcxtExchange

        keys = self.credentials(exchange)
        return CcxtExchange(
            exchange,
            api_key=keys.get("api_key"),
            secret=keys.get("secret"),
            password=keys.get("password"),
            sandbox=keys.get("sandbox", "").lower() == "true",
            api_host=self.settings.exchange_api_hosts.get(exchange),
        )

    async def data_source(self, exchange: str) -> ExchangeAdapter:
        """Where to read `exchange`'s public market data: the open adapter (sim, or a live
        connection), else a keyless CCXT connection to its public API, opened once."""
        if exchange in self.adapters:
            return self.adapters[exchange]
        if not self._is_ccxt(exchange):
            raise NotFound(f"no exchange {exchange!r}: use 'sim' or a CCXT exchange id")
        return self._public(exchange)

    def _public(self, exchange: str) -> ExchangeAdapter:
        if exchange not in self.public:
            from agents.execution.exchange.ccxt_adapter import CcxtExchange

            self.public[exchange] = CcxtExchange(
                exchange, api_host=self.settings.exchange_api_hosts.get(exchange)
            )
        return self.public[exchange]

    async def data_market(self, exchange: str, symbol: str) -> ExchangeAdapter:
        """The market-data source for `exchange`, once `symbol` is known to be listed there."""
        source = await self.data_source(exchange)
        if exchange not in self._markets:
            self._markets[exchange] = await source.load_markets()
        await self.market(exchange, symbol)
        return source

    async def markets(self, exchange: str) -> dict[str, Market]:
        if exchange not in self._markets:
            self._markets[exchange] = await self.get(exchange).load_markets()
        return self._markets[exchange]

    async def market(self, exchange: str, symbol: str) -> Market:
        markets = await self.markets(exchange)
        if symbol not in markets:
            raise Unprocessable(
                f"symbol {symbol!r} is not traded on {exchange}; "
                f"try one of {', '.join(sorted(markets)[:10])}"
            )
        return markets[symbol]

    async def mark(self, exchange: str, symbol: str) -> tuple[Decimal, int]:
        """Mid price and its age in milliseconds."""
        ticker = await self.get(exchange).fetch_ticker(symbol)
        mid = (Decimal(str(ticker.bid)) + Decimal(str(ticker.ask))) / 2
        age = max(0, int(time.time() * 1000) - int(ticker.timestamp))
        return mid, age

    async def close(self) -> None:
        for adapter in [*self.adapters.values(), *self.public.values()]:
            await adapter.close()
