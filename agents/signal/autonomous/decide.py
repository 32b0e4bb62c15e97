"""One tick for one symbol: read the market, take the strategy's signal on the last
closed bar, decide, size through risk, order through execution.

Long only (spot): a buy signal opens a position when flat, a sell signal closes the
whole position (reduce-only). The client order id is a digest of the exchange,
symbol, timeframe, strategy, parameters, bar and side, so a repeated tick on the
same bar (a retry, a restart, /decide beside the loop) finds the same order at
execution instead of placing a second one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any, Protocol

import numpy as np
import talib

from common.clients import Agents
from common.errors import ServiceUnavailable, VolexError
from common.quant.bars import Bars, Floats, timeframe_ms
from common.quant.features import WARMUP
from common.quant.strategies import Context, Params, Strategy

MAX_BARS = 1000
MAX_ATTEMPTS = 3  # orders per bar and side: a refused attempt may be retried twice
NOTIONAL_STEP = Decimal("0.00000001")
ATR_PERIOD = 14
HALTED = "HALTED"
FAILED = frozenset({"rejected", "cancelled", "expired"})
REDUCING = "REDUCING"


@dataclass(frozen=True)
class TickConfig:
    exchange: str
    symbol: str
    timeframe: str
    strategy: Strategy
    params: Params
    risk_fraction: Decimal
    atr_multiple: Decimal
    run_id: int | None = None


@dataclass
class Outcome:
    """What a tick decided and did; becomes one `autonomous_decisions` row."""

    signal: str = "hold"
    action: str = "none"
    outcome: str = "skipped"
    detail: str = ""
    bar_ts: datetime | None = None
    reasons: dict[str, Any] = field(default_factory=dict)
    client_order_id: str | None = None
    order_id: int | None = None
    order_status: str | None = None
    halted: str | None = None  # the halt reason, when the tick found trading halted


def client_order_id(config: TickConfig, bar_ts_ms: int, side: str, attempt: int = 1) -> str:
    """`auto` + 28 hex digits of the tick's identity (+ `-n` for a retry after a refused
    attempt): at most 34 characters, inside every exchange's limit (Binance: 36)."""
    key = json.dumps(
        [
            config.exchange,
            config.symbol,
            config.timeframe,
            config.strategy.name,
            sorted(config.params.items()),
            bar_ts_ms,
            side,
        ],
        separators=(",", ":"),
    )
    digest = "auto" + hashlib.sha256(key.encode()).hexdigest()[:28]
    return digest if attempt == 1 else f"{digest}-{attempt}"


def closed_bars(rows: list[list[float]], step_ms: int, now_ms: int) -> Bars:
    """The bars whose candle has closed: the exchange's last one may still be forming."""
    bars = Bars.from_rows(rows)
    if len(bars) and bars.ts[-1] + step_ms > now_ms:
        bars = bars.slice(0, len(bars) - 1)
    return bars


class Predictor(Protocol):
    """The `ml` strategy's input: the market's active model and its P(up) per bar."""

    def ref(self, exchange: str, symbol: str, timeframe: str) -> object | None: ...

    def __call__(self, config: TickConfig, bars: Bars) -> Awaitable[Floats]: ...


def read_signal(
    config: TickConfig, bars: Bars, predictions: Floats | None = None
) -> tuple[str, dict[str, Any]]:
    """The strategy's event on the last closed bar, and the numbers behind it."""
    signals = config.strategy.generate(bars, config.params, Context(predictions=predictions))
    signal = "buy" if signals.entries[-1] else "sell" if signals.exits[-1] else "hold"
    entries, exits = np.flatnonzero(signals.entries), np.flatnonzero(signals.exits)
    last_entry = int(entries[-1]) if len(entries) else -1
    last_exit = int(exits[-1]) if len(exits) else -1
    atr = float(talib.ATR(bars.high, bars.low, bars.close, timeperiod=ATR_PERIOD)[-1])
    return signal, {
        "strategy": config.strategy.name,
        "params": config.params,
        "bars": len(bars),
        "close": float(bars.close[-1]),
        "strength": round(float(signals.strength[-1]), 4),
        # Long since its last entry, unless an exit came after it: a missed exit (a
        # refused sell, a tick that failed) is still acted on at the next tick.
        "wants_long": last_entry > last_exit,
        "atr": None if np.isnan(atr) else atr,
    }


@dataclass(frozen=True)
class Account:
    """Execution's view of one exchange account, as its endpoints answer it."""

    positions: list[dict[str, Any]]
    balances: dict[str, dict[str, Any]]

    def holding(self, symbol: str) -> tuple[Decimal, Decimal]:
        """The position's amount, and how much of the base currency is free to sell."""
        held = next(
            (Decimal(p["amount"]) for p in self.positions if p["symbol"] == symbol),
            Decimal(0),
        )
        free = Decimal(self.balances.get(symbol.split("/")[0], {}).get("free", 0))
        return held, free if held > 0 else Decimal(0)

    def equity(self, quote: str) -> Decimal:
        """Cash in `quote` plus the positions quoted in it, at their marks."""
        cash = Decimal(self.balances.get(quote, {}).get("total", 0))
        marked = sum(
            (
                Decimal(p["amount"]) * Decimal(p["mark_price"] or p["entry_price"])
                for p in self.positions
                if p["symbol"].endswith("/" + quote)
            ),
            Decimal(0),
        )
        return cash + marked


def _significant(value: float, digits: int = 6) -> Decimal:
    return Decimal(format(value, f".{digits}g"))


def _dash(symbol: str) -> str:
    return symbol.replace("/", "-")


class Ticker:
    """Runs ticks against the fleet over HTTP (risk, execution)."""

    def __init__(self, agents: Agents, predictor: Predictor | None = None) -> None:
        self.agents = agents
        self.predictor = predictor

    async def tick(self, config: TickConfig) -> Outcome:
        out = Outcome()
        try:
            await self._tick(config, out)
        except VolexError as exc:
            out.outcome = "refused" if 400 <= exc.status_code < 500 else "error"
            out.detail = exc.message
        return out

    async def _tick(self, config: TickConfig, out: Outcome) -> None:
        state = await self.agents.risk.get("/state")
        out.reasons["trading_state"] = state["state"]
        if state["state"] == HALTED:
            out.outcome, out.halted = "refused", state["reason"]
            out.detail = f"trading is HALTED ({state['reason']}): nothing is traded"
            return
        bars = await self._bars(config)
        if len(bars) < config.strategy.lookback(config.params) + 1:
            out.detail = (
                f"only {len(bars)} closed {config.timeframe} bars; {config.strategy.name} "
                f"needs {config.strategy.lookback(config.params) + 1}"
            )
            return
        out.bar_ts = datetime.fromtimestamp(int(bars.ts[-1]) / 1000, UTC)
        if int(bars.ts[-1]) + 2 * timeframe_ms(config.timeframe) <= int(time.time() * 1000):
            out.detail = f"stale market data: the last closed candle is {out.bar_ts:%Y-%m-%d %H:%M}"
            return
        predictions = None
        if config.strategy.needs_model:
            if self.predictor is None:
                raise ServiceUnavailable("no model predictor in this process")
            predictions = await self.predictor(config, bars)
            out.reasons["probability"] = round(float(predictions[-1]), 4)
        out.signal, facts = read_signal(config, bars, predictions)
        out.reasons.update(facts)
        account = await self._account(config)
        held, free = account.holding(config.symbol)
        out.reasons["position"] = str(held)
        bar_ts = int(bars.ts[-1])
        if held > 0 and not out.reasons["wants_long"]:
            amount = min(held, free)
            if amount <= 0:
                out.detail = f"the strategy is out but none of the {held} held is free to sell"
                return
            await self._send(
                config, bar_ts, out, {"side": "sell", "amount": str(amount), "reduce_only": True}
            )
        elif out.signal != "buy":
            out.detail = (
                f"no {config.strategy.name} entry on the {out.bar_ts:%Y-%m-%d %H:%M} bar"
                + (f"; holding {held}" if held > 0 else "")
            )
        elif held > 0:
            out.detail = f"buy signal, but already long {held} {config.symbol.split('/')[0]}"
        elif state["state"] == REDUCING:
            out.detail = "buy signal, but trading is REDUCING: only reductions go out"
        else:
            await self._buy(config, bar_ts, out, account.equity(config.symbol.split("/")[1]))

    async def _bars(self, config: TickConfig) -> Bars:
        step = timeframe_ms(config.timeframe)
        warmup = 2 * WARMUP if config.strategy.needs_model else 0
        wanted = min(MAX_BARS, max(2 * config.strategy.lookback(config.params) + 50, 100, warmup))
        body = await self.agents.execution.get(
            f"/ohlcv/{config.exchange}/{_dash(config.symbol)}",
            params={"timeframe": config.timeframe, "limit": wanted},
        )
        return closed_bars(body["bars"], step, int(time.time() * 1000))

    async def _account(self, config: TickConfig) -> Account:
        """Execution's positions and balances on the exchange, read once per tick."""
        positions, balance = await asyncio.gather(
            self.agents.execution.get(f"/positions/{config.exchange}"),
            self.agents.execution.get(f"/balance/{config.exchange}"),
        )
        return Account(positions, balance["balances"])

    async def _buy(self, config: TickConfig, bar_ts: int, out: Outcome, equity: Decimal) -> None:
        atr, close = out.reasons["atr"], out.reasons["close"]
        if not atr:
            out.detail = "buy signal, but ATR is not known yet: cannot size the trade"
            return
        size = await self.agents.risk.post(
            "/position-size",
            json={
                "method": "atr",
                "equity": str(equity),
                "entry_price": str(_significant(close)),
                "atr": str(_significant(atr)),
                "risk_fraction": str(config.risk_fraction),
                "atr_multiple": str(config.atr_multiple),
            },
        )
        out.reasons["sizing"] = size
        notional = Decimal(size["notional"]).quantize(NOTIONAL_STEP, rounding=ROUND_DOWN)
        if notional <= 0:
            out.detail = f"buy signal, but risk sized it to nothing ({size.get('capped_by')})"
            return
        stop = _significant(close - float(config.atr_multiple) * atr)
        order = {"side": "buy", "quote_amount": str(notional)}
        if stop > 0:
            order["stop_loss"] = str(stop)
        await self._send(config, bar_ts, out, order)

    async def _send(
        self, config: TickConfig, bar_ts: int, out: Outcome, order: dict[str, Any]
    ) -> None:
        """Send the tick's order. Its client id names (market, strategy, bar, side), so a
        repeated tick gets the same order back. An attempt that was refused (risk,
        compliance, the exchange, an outage during the checks) is tried again by a later
        tick on the same bar under the next attempt's id, MAX_ATTEMPTS at most."""
        out.action = order["side"]
        for attempt in range(1, MAX_ATTEMPTS + 1):
            out.client_order_id = client_order_id(config, bar_ts, order["side"], attempt)
            body = {
                "exchange": config.exchange,
                "symbol": config.symbol,
                "type": "market",
                "client_order_id": out.client_order_id,
                **order,
            }
            out.reasons["order"] = body
            try:
                placed = await self.agents.execution.post("/orders", json=body)
            except VolexError as exc:
                if exc.status_code >= 500:
                    raise  # the order's fate may be unknown: an error, not a refusal
                out.outcome, out.detail = "refused", exc.message
                if exc.status_code == 409 and HALTED in exc.message:
                    out.halted = exc.message
                    return
                return  # refused now; a later tick on this bar tries the next id
            if placed["status"] in FAILED and Decimal(placed["filled"]) == 0:
                # A replay of an attempt that was refused earlier: try the next id.
                out.outcome = "refused"
                out.detail = f"attempt {attempt} was refused: {placed.get('reason')}"
                continue
            out.outcome = "ordered"
            out.order_id, out.order_status = placed["id"], placed["status"]
            out.detail = (
                f"{order['side']} {placed['amount']} {config.symbol} at market: {placed['status']}"
            )
            return
