"""A tiny Binance spot REST API on 127.0.0.1, for testing the CCXT adapter at the HTTP
boundary: one symbol, orders kept in memory, canned market data (the book and the last
price can be moved: `bids`, `asks`, `last`; the ticker's bid/ask are the book's tops), and
faults to order (an error status and body, or a delay longer than the client's timeout).

One-cancels-the-other pairs (`POST /api/v3/orderList/oco`) behave as Binance documents
them: an above and a below leg, one LIMIT_MAKER/TAKE_PROFIT(_LIMIT) and one
STOP_LOSS(_LIMIT), priced either side of the last price; each leg is an ordinary order
(found by id or client id, listed open) carrying its `orderListId`. Before every request
the pairs are matched against `last`: a leg it reaches fills (a LIMIT_MAKER at its price
as maker, a triggered STOP_LOSS/TAKE_PROFIT at the book's best bid or ask as taker, a
*_LIMIT one at its limit price) and the other leg becomes EXPIRED; cancelling either leg
cancels both. Plain resting orders are never matched."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

NOW = 1_709_546_400_000
FILTERS = [
    {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000", "tickSize": "0.01"},
    {"filterType": "LOT_SIZE", "minQty": "0.00001", "maxQty": "9000", "stepSize": "0.00001"},
    {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True},
]
# As on Binance's BTCUSDT.
ORDER_TYPES = ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT",
               "TAKE_PROFIT_LIMIT"]  # fmt: skip
SYMBOL = {
    "symbol": "BTCUSDT",
    "status": "TRADING",
    "baseAsset": "BTC",
    "baseAssetPrecision": 8,
    "quoteAsset": "USDT",
    "quotePrecision": 8,
    "quoteAssetPrecision": 8,
    "orderTypes": ORDER_TYPES,
    "ocoAllowed": True,
    "otoAllowed": True,
    "isSpotTradingAllowed": True,
    "isMarginTradingAllowed": False,
    "filters": FILTERS,
    "permissions": [],
    "permissionSets": [["SPOT"]],
}
FILL_PRICE = "42000.20"
TICK, STEP = Decimal("0.01"), Decimal("0.00001")
FEE_RATE = Decimal("0.001")
# What may stand above and below the last price in a pair (Binance's rules for OCO legs).
TARGETS = ("LIMIT_MAKER", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT")
STOPS = ("STOP_LOSS", "STOP_LOSS_LIMIT")


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
    lists: dict[int, dict[str, Any]] = field(default_factory=dict)  # OCO pairs by orderListId
    trades: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    bids: list[list[str]] = field(default_factory=lambda: [["42000.00", "1.5"], ["41999.50", "3"]])
    asks: list[list[str]] = field(default_factory=lambda: [[FILL_PRICE, "2"]])
    last: str = "42000.10"
    fee_asset: str = "USDT"  # "BTC": fees taken in the coin, as Binance takes a buy's
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
        self._match_lists()
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
        if self._taken(cid):
            return 400, {"code": -2010, "msg": "Duplicate order sent."}
        order = self._add_order(params["side"], params["type"], params["quantity"], cid, params)
        market = params["type"] == "MARKET"
        body = dict(order)
        if market:
            qty = params["quantity"]
            order.update(executedQty=qty, status="FILLED",
                         cummulativeQuoteQty=str(float(qty) * 42000.2))  # fmt: skip
            trade = self._trade(order, Decimal(FILL_PRICE), Decimal(qty), maker=False)
            commission = "0.042" if self.fee_asset == "USDT" else str(Decimal(qty) * FEE_RATE)
            trade["commission"] = commission
            body = dict(order)
            body["fills"] = [
                {"price": FILL_PRICE, "qty": qty, "commission": commission,
                 "commissionAsset": self.fee_asset, "tradeId": trade["id"]}
            ]  # fmt: skip
        return 200, body

    def new_oco(self, params: dict[str, str]) -> tuple[int, Any]:
        """POST /api/v3/orderList/oco, refused as Binance refuses a bad pair."""
        refusal = self._oco_refusal(params)
        if refusal is not None:
            return 400, refusal
        list_id = len(self.lists) + 1
        legs = [
            self._add_order(
                params["side"], params[f"{leg}Type"], params["quantity"],
                params[f"{leg}ClientOrderId"], {
                    "price": params.get(f"{leg}Price", "0"),
                    "stopPrice": params.get(f"{leg}StopPrice", "0"),
                },
                list_id=list_id,
            )
            for leg in ("below", "above")
        ]  # fmt: skip
        self.lists[list_id] = {
            "orderListId": list_id, "contingencyType": "OCO", "listStatusType": "EXEC_STARTED",
            "listOrderStatus": "EXECUTING", "listClientOrderId": params["listClientOrderId"],
            "transactionTime": NOW, "symbol": "BTCUSDT",
            "orders": [o["orderId"] for o in legs],
        }  # fmt: skip
        return 200, self._list_body(list_id)

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
        if order["orderListId"] != -1:  # cancelling a leg cancels the whole pair
            pair = self.lists[order["orderListId"]]
            for other in pair["orders"]:
                if self.orders[other]["status"] == "NEW":
                    self.orders[other]["status"] = "CANCELED"
            pair["listStatusType"] = pair["listOrderStatus"] = "ALL_DONE"
        return 200, order

    def open_orders(self, params: dict[str, str]) -> tuple[int, Any]:
        return 200, [o for o in self.orders.values() if o["status"] == "NEW"]

    def my_trades(self, params: dict[str, str]) -> tuple[int, Any]:
        wanted = params.get("orderId")
        return 200, [t for t in self.trades if wanted is None or str(t["orderId"]) == wanted]

    # --- test helpers --------------------------------------------------------------------
    def pair_of(self, client_order_id: str) -> dict[str, Any]:
        """The OCO pair holding the leg `client_order_id`, with its legs as orders."""
        leg = self._find({"origClientOrderId": client_order_id})
        assert leg is not None and leg["orderListId"] != -1, f"{client_order_id} is no OCO leg"
        pair = self.lists[leg["orderListId"]]
        return {**pair, "legs": [self.orders[i] for i in pair["orders"]]}

    # --- the engine ------------------------------------------------------------------------
    def _taken(self, cid: str) -> bool:
        return any(o["clientOrderId"] == cid for o in self.orders.values())

    def _add_order(
        self, side: str, type_: str, qty: str, cid: str, params: dict[str, str], list_id: int = -1
    ) -> dict[str, Any]:
        order_id = len(self.orders) + 1
        order = {
            "symbol": "BTCUSDT", "orderId": order_id, "orderListId": list_id,
            "clientOrderId": cid, "transactTime": NOW, "time": NOW, "updateTime": NOW,
            "price": params.get("price", "0"), "origQty": qty, "executedQty": "0",
            "cummulativeQuoteQty": "0", "status": "NEW", "timeInForce": "GTC",
            "type": type_, "side": side, "stopPrice": params.get("stopPrice", "0"),
            "isWorking": type_ in ("LIMIT", "LIMIT_MAKER"),
        }  # fmt: skip
        self.orders[order_id] = order
        return order

    def _oco_refusal(self, params: dict[str, str]) -> dict[str, Any] | None:
        for name in ("symbol", "side", "quantity", "aboveType", "belowType"):
            if not params.get(name):
                return _missing(name)
        sell = params["side"] == "SELL"
        above, below = params["aboveType"], params["belowType"]
        target, stop = (above, below) if sell else (below, above)
        allowed = target in TARGETS and stop in STOPS
        if not allowed or any(t not in ORDER_TYPES for t in (above, below)):
            return {"code": -1116, "msg": "Invalid orderType."}
        cids = [params.get(k) for k in ("aboveClientOrderId", "belowClientOrderId")]
        if any(c and self._taken(c) for c in cids) or len(set(cids)) != 2:
            return {"code": -2010, "msg": "Duplicate order sent."}
        if _off_step(params["quantity"], STEP):
            return {"code": -1013, "msg": "Filter failure: LOT_SIZE"}
        for leg, kind in (("above", above), ("below", below)):
            refusal = _leg_refusal(params, leg, kind)
            if refusal is not None:
                return refusal
        level = {leg: Decimal(params.get(f"{leg}StopPrice") or params[f"{leg}Price"])
                 for leg in ("above", "below")}  # fmt: skip
        if not level["above"] > Decimal(self.last) > level["below"]:
            msg = "The relationship of the prices for the orders is not correct."
            return {"code": -2010, "msg": msg}
        return None

    def _list_body(self, list_id: int) -> dict[str, Any]:
        pair = self.lists[list_id]
        legs = [self.orders[i] for i in pair["orders"]]
        return {
            **{k: v for k, v in pair.items() if k != "orders"},
            "orders": [{"symbol": o["symbol"], "orderId": o["orderId"],
                        "clientOrderId": o["clientOrderId"]} for o in legs],
            "orderReports": [dict(o) for o in legs],
        }  # fmt: skip

    def _match_lists(self) -> None:
        """Fill the first leg of each live pair that the last price reaches; expire the other."""
        last = Decimal(self.last)
        for pair in self.lists.values():
            if pair["listOrderStatus"] != "EXECUTING":
                continue
            legs = [self.orders[i] for i in pair["orders"]]
            hit = next((leg for leg in legs if _reached(leg, last)), None)
            if hit is None:
                continue
            self._fill(hit)
            for other in legs:
                if other is not hit and other["status"] == "NEW":
                    other["status"] = "EXPIRED"
            pair["listStatusType"] = pair["listOrderStatus"] = "ALL_DONE"

    def _fill(self, order: dict[str, Any]) -> None:
        kind, sell = order["type"], order["side"] == "SELL"
        if kind == "LIMIT_MAKER" or kind.endswith("_LIMIT"):
            price, maker = Decimal(order["price"]), kind == "LIMIT_MAKER"
        else:  # a stop or take-profit at market: the book's best on the other side
            price, maker = Decimal((self.bids if sell else self.asks)[0][0]), False
        qty = Decimal(order["origQty"])
        order.update(status="FILLED", executedQty=order["origQty"], updateTime=NOW,
                     cummulativeQuoteQty=str(qty * price))  # fmt: skip
        self._trade(order, price, qty, maker=maker)

    def _trade(
        self, order: dict[str, Any], price: Decimal, qty: Decimal, *, maker: bool
    ) -> dict[str, Any]:
        trade = {
            "symbol": "BTCUSDT", "id": 77 + len(self.trades), "orderId": order["orderId"],
            "orderListId": order["orderListId"], "price": str(price), "qty": str(qty),
            "quoteQty": str(price * qty),
            "commission": str((price if self.fee_asset == "USDT" else 1) * qty * FEE_RATE),
            "commissionAsset": self.fee_asset, "time": NOW, "isBuyer": order["side"] == "BUY",
            "isMaker": maker, "isBestMatch": True,
        }  # fmt: skip
        self.trades.append(trade)
        return trade

    def _find(self, params: dict[str, str]) -> dict[str, Any] | None:
        if "orderId" in params:
            return self.orders.get(int(params["orderId"]))
        cid = params.get("origClientOrderId")
        return next((o for o in self.orders.values() if o["clientOrderId"] == cid), None)


def _off_step(value: str, step: Decimal) -> bool:
    return Decimal(value) % step != 0


def _missing(name: str) -> dict[str, Any]:
    return {"code": -1102, "msg": f"Mandatory parameter '{name}' was not sent."}


def _leg_refusal(params: dict[str, str], leg: str, kind: str) -> dict[str, Any] | None:
    """A leg's prices: a limit price for LIMIT_MAKER and *_LIMIT, a stop price otherwise."""
    names = []
    if kind == "LIMIT_MAKER" or kind.endswith("_LIMIT"):
        names.append(f"{leg}Price")
    if kind != "LIMIT_MAKER":
        names.append(f"{leg}StopPrice")
    for name in names:
        if not params.get(name):
            return _missing(name)
        if _off_step(params[name], TICK):
            return {"code": -1013, "msg": "Filter failure: PRICE_FILTER"}
    return None


def _reached(order: dict[str, Any], last: Decimal) -> bool:
    """Whether `last` fills a resting limit maker or triggers a stop / take-profit."""
    if order["status"] != "NEW":
        return False
    sell, kind = order["side"] == "SELL", order["type"]
    if kind == "LIMIT_MAKER":
        price = Decimal(order["price"])
        return last >= price if sell else last <= price
    trigger = Decimal(order["stopPrice"])
    if kind.startswith("STOP_LOSS"):
        return last <= trigger if sell else last >= trigger
    return last >= trigger if sell else last <= trigger  # TAKE_PROFIT(_LIMIT)


ROUTES = {
    ("GET", "/api/v3/exchangeInfo"): FakeBinance.exchange_info,
    ("GET", "/api/v3/ticker/24hr"): FakeBinance.ticker,
    ("GET", "/api/v3/klines"): FakeBinance.klines,
    ("GET", "/api/v3/depth"): FakeBinance.depth,
    ("GET", "/api/v3/account"): FakeBinance.account,
    ("POST", "/api/v3/order"): FakeBinance.new_order,
    ("POST", "/api/v3/orderList/oco"): FakeBinance.new_oco,
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
