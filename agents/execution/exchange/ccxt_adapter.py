"""Real exchanges through CCXT (`ccxt.async_support`), behind `ExchangeAdapter`.

CCXT's exceptions are mapped to ours once, in `map_ccxt_error`; nothing above this
module sees a CCXT type. Reads are retried (`retry_read`) on network errors and rate
limits; `create_order` and `create_oco` never are: a network failure there becomes
`ExchangeTimeout` (the order may exist) and is reconciled by its client order id, which
is always sent. CCXT's floats become Decimals through their shortest repr.

Binance spot takes a stop-loss/take-profit pair natively (`supports_oco`): one
`POST /api/v3/orderList/oco` whose legs carry execution's client order ids. A long's
pair sells with a LIMIT_MAKER take-profit above the price (filled as maker at its
price) and a STOP_LOSS below it (a market sell once the last price reaches the stop:
it gets out even through a gap, where a STOP_LOSS_LIMIT could be left unfilled); a
short's pair is the mirror image. When one leg executes Binance expires the other, and
cancelling either cancels both; an expired leg of a pair with nothing filled is
reported as cancelled, so execution records one close and one cancelled leg. Other
exchanges (Binance.US among them: CCXT lists only its older `order/oco`) leave the
legs to execution's own watch.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import ccxt
import ccxt.async_support as ccxt_async
from ccxt.base.decimal_to_precision import TICK_SIZE

from agents.execution.exchange.base import (
    ORDER_STATUSES,
    Balance,
    Bar,
    ExchangeAdapter,
    ExchangeOrder,
    Market,
    OrderBook,
    OrderStatus,
    Ticker,
    Trade,
)
from agents.execution.exchange.errors import (
    AuthenticationError,
    BadRequest,
    BadSymbol,
    ExchangeError,
    ExchangeTimeout,
    InsufficientFunds,
    InvalidOrder,
    NetworkError,
    OrderNotFound,
    RateLimited,
    retry_read,
)
from common.contracts import OrderSide, OrderType

T = TypeVar("T")
ZERO = Decimal(0)

# First match wins: CCXT's OrderNotFound is an InvalidOrder, RateLimitExceeded a NetworkError
# (an OperationFailed, like a garbled answer or an exchange's "internal error, try again").
_ERROR_MAP: tuple[tuple[tuple[type[BaseException], ...], type[ExchangeError]], ...] = (
    ((ccxt.OrderNotFound,), OrderNotFound),
    ((ccxt.InsufficientFunds,), InsufficientFunds),
    ((ccxt.BadSymbol,), BadSymbol),
    ((ccxt.InvalidOrder,), InvalidOrder),
    ((ccxt.AuthenticationError,), AuthenticationError),
    ((ccxt.RateLimitExceeded, ccxt.DDoSProtection), RateLimited),
    ((ccxt.OperationFailed,), NetworkError),  # network, garbled answer, "try again"
    (
        (ccxt.BadRequest, ccxt.ArgumentsRequired, ccxt.NotSupported, ccxt.OperationRejected),
        BadRequest,
    ),
)
# Spot only, and no private margin/currency calls while loading markets.
_BINANCE_OPTIONS = {
    "fetchMarkets": {"types": ["spot"]},
    "fetchMargins": False,
    "fetchCurrencies": False,
}
_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": _BINANCE_OPTIONS,
    "binanceus": _BINANCE_OPTIONS,
}
# Exchanges whose fetch_order finds an order by client id with this parameter.
_CLIENT_ID_PARAM = {"binance": "origClientOrderId", "binanceus": "origClientOrderId"}
# Exchanges that take a one-cancels-the-other pair themselves: CCXT's implicit method for
# Binance spot's POST /api/v3/orderList/oco (aboveType/belowType legs).
_OCO_METHOD = {"binance": "private_post_orderlist_oco"}


def map_ccxt_error(exc: BaseException, exchange: str, *, creating: bool = False) -> ExchangeError:
    """Our error for a CCXT (or transport) exception. While creating an order, anything
    that leaves the outcome unknown (network, garbled answer, a surprise) becomes
    ExchangeTimeout; a clear refusal (rate limit, invalid order, funds) stays itself."""
    message = f"{exchange}: {exc}"
    ours = next((o for kinds, o in _ERROR_MAP if isinstance(exc, kinds)), None)
    unknown = ours is NetworkError or (ours is None and not isinstance(exc, ccxt.BaseError))
    if creating and unknown:
        return ExchangeTimeout(
            f"{message} (the order may have been accepted: reconcile by client order id)",
            exchange=exchange,
        )
    return (ours or ExchangeError)(message, exchange=exchange)


class CcxtExchange(ExchangeAdapter):
    """One CCXT exchange. `sandbox` switches to its testnet (set_sandbox_mode); `api_host`
    sends every API call to another scheme://host instead (a proxy, or a test server).
    Credentials are given by the caller (from Vault) and never logged."""

    def __init__(
        self,
        exchange_id: str,
        *,
        api_key: str | None = None,
        secret: str | None = None,
        password: str | None = None,
        sandbox: bool = False,
        timeout_ms: int = 10_000,
        options: Mapping[str, Any] | None = None,
        api_host: str | None = None,
        read_attempts: int = 4,
        retry_delay: float = 0.2,
    ) -> None:
        cls = getattr(ccxt_async, exchange_id, None)
        if exchange_id not in ccxt_async.exchanges or cls is None:
            raise BadRequest(f"CCXT has no exchange {exchange_id!r}", exchange=exchange_id)
        config: dict[str, Any] = {
            "enableRateLimit": True,
            "timeout": timeout_ms,
            "options": {**_DEFAULT_OPTIONS.get(exchange_id, {}), **(options or {})},
        }
        for key, value in (("apiKey", api_key), ("secret", secret), ("password", password)):
            if value:
                config[key] = value
        self.id = exchange_id
        self.client: Any = cls(config)
        if sandbox:
            try:
                self.client.set_sandbox_mode(True)
            except ccxt.NotSupported:
                raise BadRequest(f"{exchange_id} has no sandbox (testnet)") from None
        if api_host:
            self.client.urls["api"] = _rehost(self.client.urls["api"], api_host)
        self._attempts = read_attempts
        self._delay = retry_delay
        self._oco = getattr(self.client, _OCO_METHOD.get(exchange_id, ""), None)
        self.supports_oco = self._oco is not None

    # --- plumbing ------------------------------------------------------------------------
    async def _read(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        async def once() -> T:
            try:
                return await fn(*args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise map_ccxt_error(exc, self.id) from exc

        return await retry_read(once, self._attempts, self._delay)

    # --- market data ---------------------------------------------------------------------
    async def load_markets(self) -> dict[str, Market]:
        raw = await self._read(self.client.load_markets)
        digits = self.client.precisionMode != TICK_SIZE
        return {s: _market(m, digits) for s, m in raw.items() if m.get("spot", True)}

    async def fetch_ticker(self, symbol: str) -> Ticker:
        raw = await self._read(self.client.fetch_ticker, symbol)
        last = _dec(raw.get("last") or raw.get("close"))
        bid, ask = _dec(raw.get("bid")) or last, _dec(raw.get("ask")) or last
        if bid is None or ask is None or last is None:
            raise ExchangeError(f"{self.id} has no price for {symbol}", exchange=self.id)
        stamp = raw.get("timestamp") or self.client.milliseconds()
        return Ticker(symbol=symbol, bid=bid, ask=ask, last=last, timestamp=int(stamp))

    async def fetch_order_book(self, symbol: str, limit: int = 20) -> OrderBook:
        raw = await self._read(self.client.fetch_order_book, symbol, limit)
        sides = [
            [(_dec(p) or ZERO, _dec(a) or ZERO) for p, a, *_ in raw[k]] for k in ("bids", "asks")
        ]
        stamp = raw.get("timestamp") or self.client.milliseconds()
        return OrderBook(symbol=symbol, bids=sides[0], asks=sides[1], timestamp=int(stamp))

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since_ms: int | None = None, limit: int = 500
    ) -> list[Bar]:
        rows = await self._read(self.client.fetch_ohlcv, symbol, timeframe, since_ms, limit)
        return [Bar(int(r[0]), *(float(x or 0) for x in r[1:6])) for r in rows]

    # --- account -------------------------------------------------------------------------
    async def fetch_balance(self) -> dict[str, Balance]:
        raw = await self._read(self.client.fetch_balance)
        out = {}
        for asset, total in (raw.get("total") or {}).items():
            free = _dec(raw["free"].get(asset)) or ZERO
            used = _dec(raw["used"].get(asset)) or ZERO
            out[asset] = Balance(free=free, used=used, total=_dec(total) or free + used)
        return out

    async def create_order(
        self,
        symbol: str,
        side: OrderSide | str,
        type: OrderType | str,
        amount: Decimal,
        price: Decimal | None = None,
        stop_price: Decimal | None = None,
        *,
        client_order_id: str,
    ) -> ExchangeOrder:
        kind, params = self._order_params(side, type, stop_price, client_order_id)
        ccxt_type = "market" if kind == OrderType.market or price is None else "limit"
        try:
            raw = await self.client.create_order(
                symbol, ccxt_type, str(side), float(amount), _float(price), params
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise map_ccxt_error(exc, self.id, creating=True) from exc
        order = _order(raw, symbol)
        if not order.client_order_id:  # some exchanges do not echo it
            order = replace(order, client_order_id=client_order_id)
        return order

    def _order_params(
        self,
        side: OrderSide | str,
        type_: OrderType | str,
        stop_price: Decimal | None,
        client_order_id: str,
    ) -> tuple[OrderType, dict[str, Any]]:
        """Check what CCXT would not, and the unified params for the order type."""
        if str(side) not in {s.value for s in OrderSide}:
            raise InvalidOrder(f"side {side!r} is not buy or sell", exchange=self.id)
        if str(type_) not in {t.value for t in OrderType}:
            raise InvalidOrder(f"order type {type_!r} is not supported", exchange=self.id)
        if not client_order_id:
            raise InvalidOrder("a client_order_id is required", exchange=self.id)
        kind = OrderType(str(type_))
        params: dict[str, Any] = {"clientOrderId": client_order_id}
        if kind in (OrderType.stop_loss, OrderType.take_profit):
            if stop_price is None:
                raise InvalidOrder(f"{kind.value} orders need stop_price", exchange=self.id)
            name = "stopLossPrice" if kind == OrderType.stop_loss else "takeProfitPrice"
            params[name] = float(stop_price)
        return kind, params

    async def create_oco(
        self,
        symbol: str,
        side: OrderSide | str,
        amount: Decimal,
        stop_loss: Decimal,
        take_profit: Decimal,
        *,
        client_order_ids: tuple[str, str],
    ) -> tuple[ExchangeOrder, ExchangeOrder]:
        """The pair as one order list on the exchange (Binance spot's orderList/oco),
        its legs under `client_order_ids` (stop, target). Sent once: a lost answer is
        ExchangeTimeout, reconciled by those ids."""
        if self._oco is None:
            return await super().create_oco(
                symbol, side, amount, stop_loss, take_profit, client_order_ids=client_order_ids
            )
        request = await self._oco_request(
            symbol, side, amount, stop_loss, take_profit, client_order_ids
        )
        try:
            raw = await self._oco(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise map_ccxt_error(exc, self.id, creating=True) from exc
        stop, target = [await self._oco_leg(raw, symbol, cid) for cid in client_order_ids]
        return stop, target

    async def _oco_leg(self, raw: dict[str, Any], symbol: str, cid: str) -> ExchangeOrder:
        """One leg from the exchange's answer to a pair: its report, else (an answer
        without reports) the order itself, looked up by the id the answer gives."""
        for report in raw.get("orderReports") or []:
            if report.get("clientOrderId") == cid:
                return _order(self.client.parse_order(report, self.client.market(symbol)), symbol)
        for listed in raw.get("orders") or []:
            if listed.get("clientOrderId") == cid and listed.get("orderId") is not None:
                return await self.fetch_order(str(listed["orderId"]), symbol)
        raise ExchangeTimeout(
            f"{self.id} took the pair but its answer does not name leg {cid!r}: reconcile by "
            "client order id",
            exchange=self.id,
        )

    async def _oco_request(
        self,
        symbol: str,
        side: OrderSide | str,
        amount: Decimal,
        stop_loss: Decimal,
        take_profit: Decimal,
        client_order_ids: tuple[str, str],
    ) -> dict[str, str]:
        """Binance's parameters for the pair, rounded to the market's steps (the amount
        down, prices to the nearest tick, as CCXT rounds create_order's)."""
        stop_id, target_id = client_order_ids
        if not stop_id or not target_id or stop_id == target_id:
            raise InvalidOrder("a pair needs two different client order ids", exchange=self.id)
        if str(side) not in {s.value for s in OrderSide}:
            raise InvalidOrder(f"side {side!r} is not buy or sell", exchange=self.id)
        sell = str(side) == OrderSide.sell
        if (stop_loss >= take_profit) if sell else (stop_loss <= take_profit):
            where = "below" if sell else "above"
            raise InvalidOrder(
                f"stop_loss {stop_loss} must be {where} take_profit {take_profit} for a "
                f"{side} pair",
                exchange=self.id,
            )
        await self._read(self.client.load_markets)
        raw_market = self.client.market(symbol)
        _check_oco_market(raw_market, self.id)
        market = _market(raw_market, self.client.precisionMode != TICK_SIZE)
        quantity = market.amount_to_precision(amount)
        if quantity <= 0:
            raise InvalidOrder(
                f"amount {amount} rounds to nothing at {symbol}'s step {market.amount_step}",
                exchange=self.id,
            )
        stop = str(market.price_to_precision(stop_loss, ROUND_HALF_UP))
        target = str(market.price_to_precision(take_profit, ROUND_HALF_UP))
        stop_leg = {"Type": "STOP_LOSS", "StopPrice": stop, "ClientOrderId": stop_id}
        target_leg = {"Type": "LIMIT_MAKER", "Price": target, "ClientOrderId": target_id}
        above, below = (target_leg, stop_leg) if sell else (stop_leg, target_leg)
        digest = hashlib.sha256(f"{stop_id}|{target_id}".encode()).hexdigest()
        return {
            "symbol": raw_market["id"],
            "side": "SELL" if sell else "BUY",
            "quantity": str(quantity),
            "listClientOrderId": f"oco-{digest[:32]}",  # Binance allows 36 characters
            **{f"above{k}": v for k, v in above.items()},
            **{f"below{k}": v for k, v in below.items()},
        }

    async def fetch_order(self, order_id: str, symbol: str) -> ExchangeOrder:
        return await self._with_trades(
            await self._read(self.client.fetch_order, order_id, symbol), symbol
        )

    async def _with_trades(self, raw: dict[str, Any], symbol: str | None) -> ExchangeOrder:
        """Our order, with its fills: an order that filled while resting comes back from
        fetch_order without them on some exchanges (Binance), so they are asked for."""
        if (
            raw.get("trades")
            or not raw.get("filled")
            or not self.client.has.get("fetchOrderTrades")
        ):
            return _order(raw, symbol)
        where = raw.get("symbol") or symbol
        trades = await self._read(self.client.fetch_order_trades, str(raw["id"]), where)
        return _order({**raw, "trades": trades}, symbol)

    async def fetch_order_by_client_id(
        self, client_order_id: str, symbol: str
    ) -> ExchangeOrder | None:
        """By the exchange's own lookup where CCXT has one, else among open and recent
        orders (an old order on an exchange without that lookup may not be found)."""
        param = _CLIENT_ID_PARAM.get(self.id)
        if param is not None:
            try:
                raw = await self._read(
                    self.client.fetch_order, "", symbol, {param: client_order_id}
                )
            except OrderNotFound:
                return None
            return await self._with_trades(raw, symbol)
        sources = [self.client.fetch_open_orders]
        if self.client.has.get("fetchClosedOrders"):
            sources.append(self.client.fetch_closed_orders)
        for fetch in sources:
            for raw in await self._read(fetch, symbol):
                if raw.get("clientOrderId") == client_order_id:
                    return _order(raw, symbol)
        return None

    async def fetch_open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        rows = await self._read(self.client.fetch_open_orders, symbol)
        return [_order(r, symbol) for r in rows]

    async def cancel_order(self, order_id: str, symbol: str) -> ExchangeOrder:
        raw = await self._read(self.client.cancel_order, order_id, symbol)
        if not raw.get("status") or raw.get("amount") is None:  # a bare acknowledgement
            return await self.fetch_order(order_id, symbol)
        return await self._with_trades(raw, symbol)

    async def fetch_my_trades(
        self, symbol: str | None = None, since_ms: int | None = None
    ) -> list[Trade]:
        rows = await self._read(self.client.fetch_my_trades, symbol, since_ms)
        return [_trade(r) for r in rows]

    async def close(self) -> None:
        await self.client.close()


# --- CCXT's unified structures -> ours ------------------------------------------------------
def _dec(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _step(value: Any, digits: bool) -> Decimal:
    number = _dec(value)
    if number is None:
        return Decimal("1e-8")
    return Decimal(1).scaleb(-int(number)) if digits else number


def _market(raw: dict[str, Any], digits: bool) -> Market:
    precision, limits = raw.get("precision") or {}, raw.get("limits") or {}
    return Market(
        symbol=raw["symbol"],
        base=raw["base"],
        quote=raw["quote"],
        amount_step=_step(precision.get("amount"), digits),
        price_step=_step(precision.get("price"), digits),
        min_amount=_dec((limits.get("amount") or {}).get("min")) or ZERO,
        min_notional=_dec((limits.get("cost") or {}).get("min")) or ZERO,
        maker_fee=_dec(raw.get("maker")) or ZERO,
        taker_fee=_dec(raw.get("taker")) or ZERO,
    )


def _check_oco_market(raw: dict[str, Any], exchange: str) -> None:
    """Refuse a pair the market does not take (execution then watches the legs itself)."""
    info = raw.get("info") or {}
    types = info.get("orderTypes")
    missing = [t for t in ("LIMIT_MAKER", "STOP_LOSS") if types is not None and t not in types]
    if info.get("ocoAllowed") is False or missing:
        why = f"it lacks {', '.join(missing)} orders" if missing else "OCO is not allowed"
        raise InvalidOrder(
            f"{exchange} takes no one-cancels-the-other pair on {raw['symbol']}: {why}",
            exchange=exchange,
        )


def _in_pair(raw: dict[str, Any]) -> bool:
    """Whether the order is a leg of an order list (Binance: orderListId is not -1)."""
    list_id = (raw.get("info") or {}).get("orderListId")
    return list_id is not None and str(list_id) != "-1"


def _order_type(raw: dict[str, Any]) -> OrderType:
    kind = str(raw.get("type") or "").lower()
    if _in_pair(raw) and str((raw.get("info") or {}).get("type")).upper() == "LIMIT_MAKER":
        return OrderType.take_profit  # a pair's target: a post-only limit at the price
    if "take_profit" in kind or raw.get("takeProfitPrice"):
        return OrderType.take_profit
    if "stop" in kind or raw.get("stopLossPrice") or raw.get("triggerPrice"):
        return OrderType.stop_loss
    return OrderType.market if kind == "market" else OrderType.limit


def _fee(raw: dict[str, Any]) -> tuple[Decimal, str | None]:
    fees = raw.get("fees") or ([raw["fee"]] if raw.get("fee") else [])
    currency = next((f.get("currency") for f in fees if f.get("currency")), None)
    total = sum((_dec(f.get("cost")) or ZERO for f in fees if f.get("currency") == currency), ZERO)
    return total, currency


def _order(raw: dict[str, Any], symbol: str | None) -> ExchangeOrder:
    amount = _dec(raw.get("amount")) or ZERO
    filled = _dec(raw.get("filled")) or ZERO
    remaining = _dec(raw.get("remaining"))
    status = cast(OrderStatus, raw["status"] if raw.get("status") in ORDER_STATUSES else "open")
    reason = None
    if status == "expired" and filled == 0 and _in_pair(raw):
        status = "canceled"  # the other leg of its pair executed (or the pair was dropped)
        reason = "expired by the exchange with nothing filled: one-cancels-the-other pair"
    kind = _order_type(raw)
    stop_price = _dec(raw.get("triggerPrice") or raw.get("stopPrice"))
    if kind == OrderType.take_profit and stop_price is None:
        stop_price = _dec(raw.get("price"))  # a limit target: its price is where it acts
    fee, fee_currency = _fee(raw)
    side = OrderSide(raw["side"])
    order_symbol = raw.get("symbol") or symbol or ""
    parent = {"side": side.value, "symbol": order_symbol, "order": str(raw["id"])}
    parent["clientOrderId"] = raw.get("clientOrderId") or ""
    trades = [
        _trade({**parent, **{k: v for k, v in t.items() if v}}) for t in raw.get("trades") or []
    ]
    return ExchangeOrder(
        id=str(raw["id"]),
        client_order_id=raw.get("clientOrderId") or "",
        symbol=order_symbol,
        side=side,
        type=kind,
        amount=amount,
        price=_dec(raw.get("price")),
        stop_price=stop_price,
        status=status,
        filled=filled,
        remaining=remaining if remaining is not None else amount - filled,
        average=_dec(raw.get("average")),
        fee=fee,
        fee_currency=fee_currency,
        timestamp=int(raw.get("timestamp") or 0),
        trades=trades,
        cost=_dec(raw.get("cost")) or ZERO,
        last_trade_timestamp=raw.get("lastTradeTimestamp"),
        reason=reason,
    )


def _trade(raw: dict[str, Any]) -> Trade:
    fee = raw.get("fee") or {}
    return Trade(
        id=str(raw.get("id")),
        order_id=str(raw.get("order") or ""),
        client_order_id=raw.get("clientOrderId") or "",
        symbol=raw.get("symbol") or "",
        side=OrderSide(raw["side"]),
        amount=_dec(raw.get("amount")) or ZERO,
        price=_dec(raw.get("price")) or ZERO,
        fee=_dec(fee.get("cost")) or ZERO,
        fee_currency=fee.get("currency") or "",
        timestamp=int(raw.get("timestamp") or 0),
        taker=raw.get("takerOrMaker") != "maker",
    )


def _rehost(urls: Any, host: str) -> Any:
    """Every URL in CCXT's (possibly nested) `urls['api']`, moved to `host`."""
    if isinstance(urls, dict):
        return {k: _rehost(v, host) for k, v in urls.items()}
    if isinstance(urls, str) and urls.startswith("http"):
        parts = urlsplit(urls)
        return host.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")
    return urls
