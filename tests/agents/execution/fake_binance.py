"""A tiny Binance spot REST API on 127.0.0.1, for testing the CCXT adapter at the HTTP
boundary: one symbol, orders kept in memory, canned market data (the book and the last
price can be moved: `bids`, `asks`, `last`; the ticker's bid/ask are the book's tops), and
faults to order (an error status and body, or a delay longer than the client's timeout)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

NOW = 1_709_546_400_000
FILTERS = [
    {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000", "tickSize": "0.01"},
    {"filterType": "LOT_SIZE", "minQty": "0.00001", "maxQty": "9000", "stepSize": "0.00001"},
    {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True},
]
SYMBOL = {
    "symbol": "BTCUSDT",
    "status": "TRADING",
    "baseAsset": "BTC",
    "baseAssetPrecision": 8,
    "quoteAsset": "USDT",
    "quotePrecision": 8,
    "quoteAssetPrecision": 8,
    "orderTypes": ["LIMIT", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
    "isSpotTradingAllowed": True,
    "isMarginTradingAllowed": False,
    "filters": FILTERS,
    "permissions": [],
    "permissionSets": [["SPOT"]],
}
FILL_PRICE = "42000.20"


@dataclass
class Fault:
    path: str
    status: int = 500
    body: dict[str, Any] | None = None
    delay: float = 0.0
    times: int = 1


@dataclass
class FakeBinance:
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    bids: list[list[str]] = field(default_factory=lambda: [["42000.00", "1.5"], ["41999.50", "3"]])
    asks: list[list[str]] = field(default_factory=lambda: [[FILL_PRICE, "2"]])
    last: str = "42000.10"
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def fail(self, path: str, status: int = 500, body: dict[str, Any] | None = None,
             delay: float = 0.0, times: int = 1) -> None:  # fmt: skip
        self.faults.append(Fault(path, status, body, delay, times))

    def calls(self, method: str, path: str) -> list[dict[str, str]]:
        return [p for m, q, p in self.requests if m == method and q == path]

    async def _handle(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.post()).items()})
        path = request.path
        self.requests.append((request.method, path, params))
        for fault in self.faults:
            if path == fault.path:
                fault.times -= 1
                if fault.times == 0:
                    self.faults.remove(fault)
                await asyncio.sleep(fault.delay)
                return web.json_response(fault.body or {}, status=fault.status)
        route = ROUTES.get((request.method, path))
        if route is None:
            return web.json_response({"code": -1000, "msg": f"no route {path}"}, status=404)
        status, body = route(self, params)
        return web.json_response(body, status=status)

    # --- endpoints ---------------------------------------------------------------------
    def exchange_info(self, params: dict[str, str]) -> tuple[int, Any]:
        return 200, {"timezone": "UTC", "serverTime": NOW, "rateLimits": [], "symbols": [SYMBOL]}

    def ticker(self, params: dict[str, str]) -> tuple[int, Any]:
        now = int(time.time() * 1000)
        return 200, {
            "symbol": "BTCUSDT", "lastPrice": self.last, "bidPrice": self.bids[0][0],
            "bidQty": self.bids[0][1], "askPrice": self.asks[0][0], "askQty": self.asks[0][1],
            "openPrice": "41000",
            "highPrice": "43000", "lowPrice": "40000", "volume": "100",
            # Fresh, as a live exchange's: risk refuses orders priced off a stale ticker.
            "quoteVolume": "4200000", "openTime": now - 86_400_000, "closeTime": now,
        }  # fmt: skip

    def depth(self, params: dict[str, str]) -> tuple[int, Any]:
        return 200, {"lastUpdateId": 7, "bids": self.bids, "asks": self.asks}

    def klines(self, params: dict[str, str]) -> tuple[int, Any]:
        candle = ["42000", "42010.5", "41990", "42005", "1.25"]
        rest = ["52500", 10, "0.5", "21000", "0"]
        starts = [NOW + i * 60_000 for i in range(int(params.get("limit", 3)))]
        return 200, [[t, *candle, t + 59_999, *rest] for t in starts]

    def account(self, params: dict[str, str]) -> tuple[int, Any]:
        return 200, {
            "accountType": "SPOT", "updateTime": NOW, "permissions": ["SPOT"],
            "balances": [
                {"asset": "BTC", "free": "0.5", "locked": "0.1"},
                {"asset": "USDT", "free": "1000.25", "locked": "0"},
            ],
        }  # fmt: skip

    def new_order(self, params: dict[str, str]) -> tuple[int, Any]:
        cid = params["newClientOrderId"]
        if any(o["clientOrderId"] == cid for o in self.orders.values()):
            return 400, {"code": -2010, "msg": "Duplicate order sent."}
        order_id = len(self.orders) + 1
        market = params["type"] == "MARKET"
        qty = params["quantity"]
        order = {
            "symbol": "BTCUSDT", "orderId": order_id, "orderListId": -1, "clientOrderId": cid,
            "transactTime": NOW, "time": NOW, "updateTime": NOW,
            "price": params.get("price", "0"), "origQty": qty,
            "executedQty": qty if market else "0",
            "cummulativeQuoteQty": str(float(qty) * 42000.2) if market else "0",
            "status": "FILLED" if market else "NEW", "timeInForce": "GTC",
            "type": params["type"], "side": params["side"],
            "stopPrice": params.get("stopPrice", "0"), "isWorking": True,
        }  # fmt: skip
        self.orders[order_id] = order
        body = dict(order)
        if market:
            body["fills"] = [
                {"price": FILL_PRICE, "qty": qty, "commission": "0.042", "commissionAsset": "USDT",
                 "tradeId": 77}
            ]  # fmt: skip
        return 200, body

    def get_order(self, params: dict[str, str]) -> tuple[int, Any]:
        order = self._find(params)
        if order is None:
            return 400, {"code": -2013, "msg": "Order does not exist."}
        return 200, order

    def cancel(self, params: dict[str, str]) -> tuple[int, Any]:
        order = self._find(params)
        if order is None or order["status"] != "NEW":
            return 400, {"code": -2011, "msg": "Unknown order sent."}
        order["status"] = "CANCELED"
        return 200, order

    def open_orders(self, params: dict[str, str]) -> tuple[int, Any]:
        return 200, [o for o in self.orders.values() if o["status"] == "NEW"]

    def my_trades(self, params: dict[str, str]) -> tuple[int, Any]:
        return 200, [
            {"symbol": "BTCUSDT", "id": 77, "orderId": 1, "orderListId": -1, "price": FILL_PRICE,
             "qty": "0.001", "quoteQty": "42.0002", "commission": "0.042",
             "commissionAsset": "USDT", "time": NOW, "isBuyer": True, "isMaker": False,
             "isBestMatch": True}
        ]  # fmt: skip

    def _find(self, params: dict[str, str]) -> dict[str, Any] | None:
        if "orderId" in params:
            return self.orders.get(int(params["orderId"]))
        cid = params.get("origClientOrderId")
        return next((o for o in self.orders.values() if o["clientOrderId"] == cid), None)


ROUTES = {
    ("GET", "/api/v3/exchangeInfo"): FakeBinance.exchange_info,
    ("GET", "/api/v3/ticker/24hr"): FakeBinance.ticker,
    ("GET", "/api/v3/klines"): FakeBinance.klines,
    ("GET", "/api/v3/depth"): FakeBinance.depth,
    ("GET", "/api/v3/account"): FakeBinance.account,
    ("POST", "/api/v3/order"): FakeBinance.new_order,
    ("GET", "/api/v3/order"): FakeBinance.get_order,
    ("DELETE", "/api/v3/order"): FakeBinance.cancel,
    ("GET", "/api/v3/openOrders"): FakeBinance.open_orders,
    ("GET", "/api/v3/myTrades"): FakeBinance.my_trades,
}


class BackgroundFake:
    """A FakeBinance on an event loop of its own thread, for a whole test session: the
    fleet is started pointing `binance` at it (VOLEX_EXCHANGE_API_HOSTS). Tests move its
    book and read its requests from their own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = FakeBinance()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
