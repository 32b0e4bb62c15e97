"""The exchanges execution can trade on, each behind the same adapter interface."""

from __future__ import annotations

import time
from decimal import Decimal

from agents.execution.exchange.base import ExchangeAdapter, Market
from agents.execution.exchange.sim import SimExchange
from agents.execution.settings import ExecutionSettings
from common.errors import NotFound, Unprocessable


class ExchangeRegistry:
    """Adapters by exchange id, with their markets loaded once."""

    def __init__(self, settings: ExecutionSettings) -> None:
        self.adapters: dict[str, ExchangeAdapter] = {
            "sim": SimExchange(
                state_dir=settings.home_dir / "sim",
                seed=settings.sim_seed,
                starting_balances={"USDT": settings.sim_quote_balance},
                latency_ms=settings.sim_latency_ms,
            )
        }
        self.modes = {"sim": "simulated"}
        self._markets: dict[str, dict[str, Market]] = {}

    def get(self, exchange: str) -> ExchangeAdapter:
        try:
            return self.adapters[exchange]
        except KeyError:
            raise NotFound(
                f"exchange {exchange!r} is not configured; available: {', '.join(self.adapters)}"
            ) from None

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
        for adapter in self.adapters.values():
            await adapter.close()
