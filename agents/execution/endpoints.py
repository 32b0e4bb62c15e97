from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse

from agents.execution.exchange.errors import ExchangeError
from agents.execution.repository import list_orders
from agents.execution.schemas import (
    ArmedFault,
    BalanceOut,
    CancelAll,
    CancelAllResult,
    ClosePositions,
    CloseResult,
    ExchangeOut,
    ExchangeStatus,
    FaultRequest,
    OhlcvOut,
    OrderRequest,
    OrderView,
    PositionOut,
    TickerOut,
)
from agents.execution.service import OrderService
from agents.execution.sync import Reconciler
from common.auth import CallerDep
from common.contracts import EXCHANGE_PATTERN, ApplyTradingState, ApplyTradingStateResult
from common.db import SessionDep
from common.errors import Forbidden, NotFound, ServiceUnavailable
from common.models import Order

router = APIRouter()


async def get_orders(request: Request) -> OrderService:
    service: OrderService = request.app.state.orders
    return service


async def get_reconciler(request: Request) -> Reconciler:
    reconciler: Reconciler = request.app.state.reconciler
    return reconciler


OrdersDep = Annotated[OrderService, Depends(get_orders)]
ReconcilerDep = Annotated[Reconciler, Depends(get_reconciler)]


def _symbol(path_symbol: str) -> str:
    return path_symbol.replace("-", "/").upper()


def _order(session: SessionDep, exchange: str, order_id: int) -> Order:
    order = session.get(Order, order_id)
    if order is None or order.exchange != exchange:
        raise NotFound(f"no order {order_id} on {exchange}")
    return order


@router.post(
    "/orders",
    response_model=OrderView,
    status_code=201,
    tags=["orders"],
    responses={
        200: {"model": OrderView, "description": "same client_order_id: the existing order"},
        202: {"model": OrderView, "description": "outcome unknown; reconciling"},
    },
)
async def place_order(
    req: OrderRequest, caller: CallerDep, orders: OrdersDep, response: Response
) -> OrderView:
    """Place an order through risk and compliance; idempotent on client_order_id."""
    order, created = await orders.place(req, caller)
    if not created:
        response.status_code = status.HTTP_200_OK
    elif order.status == "unknown":
        response.status_code = status.HTTP_202_ACCEPTED
    return OrderView.model_validate(order)


@router.get("/orders/{exchange}", response_model=list[OrderView], tags=["orders"])
def get_orders_list(
    exchange: str,
    session: SessionDep,
    symbol: str | None = None,
    order_status: Annotated[str | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[OrderView]:
    """Orders on an exchange, newest first (filters: symbol, status, limit)."""
    rows = list_orders(session, exchange, symbol and _symbol(symbol), order_status, limit)
    return [OrderView.model_validate(o) for o in rows]


@router.get("/orders/{exchange}/{order_id}", response_model=OrderView, tags=["orders"])
def get_order(exchange: str, order_id: int, session: SessionDep) -> OrderView:
    """One order by its id."""
    return OrderView.model_validate(_order(session, exchange, order_id))


@router.delete("/orders/{exchange}/{order_id}", response_model=OrderView, tags=["orders"])
async def cancel_order(exchange: str, order_id: int, reconciler: ReconcilerDep) -> OrderView:
    """Cancel an open order."""
    order = await reconciler.orders.db(_get, reconciler, exchange, order_id)
    if order.status not in ("open", "partially_filled", "pending"):
        return OrderView.model_validate(order)
    try:
        return OrderView.model_validate(await reconciler.orders.cancel(order))
    except ExchangeError as exc:
        raise ServiceUnavailable(f"{exchange} could not cancel order {order_id}: {exc}") from exc


def _get(reconciler: Reconciler, exchange: str, order_id: int) -> Order:
    with reconciler.orders.sessions() as session:
        return _order(session, exchange, order_id)


@router.post("/orders/{exchange}/cancel-all", response_model=CancelAllResult, tags=["orders"])
async def cancel_all(
    exchange: str, reconciler: ReconcilerDep, body: CancelAll | None = None
) -> CancelAllResult:
    """Cancel every open order on an exchange, or on one of its symbols."""
    exchanges = reconciler.orders.exchanges
    exchanges.get(exchange)
    symbol = None if body is None else body.symbol
    if symbol is not None:
        await exchanges.market(exchange, symbol)  # 422 for a symbol it does not list
    cancelled, errors = await reconciler.cancel_all(exchange, symbol)
    return CancelAllResult(
        cancelled=[OrderView.model_validate(o) for o in cancelled], errors=errors
    )


@router.get("/positions/{exchange}", response_model=list[PositionOut], tags=["positions"])
async def get_positions(exchange: str, reconciler: ReconcilerDep) -> list[PositionOut]:
    """Open positions with entry, mark, unrealized and realized PnL, and attached stops
    (and whether they rest on the exchange or are watched by execution)."""
    orders = reconciler.orders
    orders.exchanges.get(exchange)
    on_exchange = await reconciler.brackets.protected(exchange)
    result = []
    for pos in await orders.positions(exchange):
        armed = pos.stop_loss is not None or pos.take_profit is not None
        watched = armed or pos.trailing_stop_pct is not None
        mark, _ = await orders.exchanges.mark(exchange, pos.symbol)
        result.append(
            PositionOut(
                exchange=exchange,
                symbol=pos.symbol,
                amount=pos.amount,
                entry_price=pos.entry_price,
                mark_price=mark,
                unrealized_pnl=(mark - pos.entry_price) * pos.amount,
                realized_pnl=pos.realized_pnl,
                stop_loss=pos.stop_loss,
                take_profit=pos.take_profit,
                trailing_stop_pct=pos.trailing_stop_pct,
                protected_by=(
                    "exchange"
                    if armed and pos.symbol in on_exchange
                    else ("execution" if watched else None)
                ),
            )
        )
    return result


@router.post("/positions/{exchange}/close", response_model=CloseResult, tags=["positions"])
async def close_positions(
    exchange: str, body: ClosePositions, caller: CallerDep, reconciler: ReconcilerDep
) -> CloseResult:
    """Close one symbol's position (or all) at market."""
    reconciler.orders.exchanges.get(exchange)
    orders, errors = await reconciler.close(exchange, body.symbol, f"closed by {caller.name}")
    return CloseResult(orders=[OrderView.model_validate(o) for o in orders], errors=errors)


@router.get("/balance/{exchange}", response_model=BalanceOut, tags=["account"])
async def get_balance(exchange: str, orders: OrdersDep) -> BalanceOut:
    """Free, used and total balance per currency."""
    balances = await orders.exchanges.get(exchange).fetch_balance()
    return BalanceOut(
        exchange=exchange,
        balances={
            cur: {"free": b.free, "used": b.used, "total": b.total} for cur, b in balances.items()
        },
    )


@router.get("/ticker/{exchange}/{symbol}", response_model=TickerOut, tags=["market"])
async def get_ticker(exchange: str, symbol: str, orders: OrdersDep) -> TickerOut:
    """Best bid/ask and last price; write the symbol with a dash (BTC-USDT)."""
    await orders.exchanges.market(exchange, _symbol(symbol))
    t = await orders.exchanges.get(exchange).fetch_ticker(_symbol(symbol))
    return TickerOut(
        exchange=exchange,
        symbol=_symbol(symbol),
        bid=t.bid,
        ask=t.ask,
        last=t.last,
        timestamp=t.timestamp,
    )


Timeframe = Literal["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "1w"]


@router.get("/ohlcv/{exchange}/{symbol}", response_model=OhlcvOut, tags=["market"])
async def get_ohlcv(
    exchange: Annotated[str, Path(pattern=EXCHANGE_PATTERN)],
    symbol: Annotated[str, Path(pattern=r"^[A-Za-z0-9]{1,20}[-/][A-Za-z0-9]{1,20}$")],
    orders: OrdersDep,
    timeframe: Timeframe = "1h",
    since: Annotated[int | None, Query(ge=0, description="first candle's open time (ms)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> JSONResponse:
    """Candles from the exchange's public market data (read-only); symbol with a dash."""
    market = _symbol(symbol)
    source = await orders.exchanges.data_market(exchange, market)
    bars = await source.fetch_ohlcv(market, timeframe, since, limit)
    body = {"exchange": exchange, "symbol": market, "timeframe": timeframe, "bars": bars}
    return JSONResponse(body)


@router.get("/exchanges", response_model=list[ExchangeOut], tags=["exchanges"])
async def get_exchanges(orders: OrdersDep) -> list[ExchangeOut]:
    """Configured exchanges and how each trades (simulated, paper, live)."""
    registry = orders.exchanges
    out = []
    for ex in list(registry.adapters):
        try:
            symbols = sorted(await registry.markets(ex))
        except ExchangeError:
            symbols = []  # unreachable right now: GET /exchanges/{id}/status says why
        out.append(ExchangeOut(id=ex, mode=registry.modes[ex], symbols=symbols))
    return out


@router.get("/exchanges/{exchange}/status", response_model=ExchangeStatus, tags=["exchanges"])
async def exchange_status(exchange: str, orders: OrdersDep) -> ExchangeStatus:
    """Whether an exchange answers right now, and how fast."""
    adapter = orders.exchanges.get(exchange)
    started = time.perf_counter()
    try:
        markets = await orders.exchanges.markets(exchange)
        await adapter.fetch_ticker(next(iter(markets)))
        ok, detail = True, "ok"
    except ExchangeError as exc:
        ok, detail = False, str(exc)
    return ExchangeStatus(
        id=exchange,
        ok=ok,
        detail=detail,
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
    )


@router.post("/trading-state/apply", response_model=ApplyTradingStateResult, tags=["kill switch"])
async def apply_trading_state(
    command: ApplyTradingState, caller: CallerDep, reconciler: ReconcilerDep
) -> ApplyTradingStateResult:
    """Risk's kill switch: on HALTED cancel every open order, and flatten if asked."""
    if caller.name not in ("risk", "operator"):
        raise Forbidden("only risk (or the operator) may apply a trading state")
    return await reconciler.apply(command)


@router.post("/exchanges/sim/faults", status_code=204, tags=["exchanges"])
async def inject_fault(body: FaultRequest, caller: CallerDep, orders: OrdersDep) -> None:
    """Inject a fault into the simulated exchange (drills and tests; operator only)."""
    if caller.name != "operator":
        raise Forbidden("only the operator may inject faults")
    sim = orders.exchanges.get("sim")
    hang = {} if body.hang_seconds is None else {"hang_s": body.hang_seconds}
    sim.inject_fault(body.kind, op=body.op, times=body.times, **hang)  # type: ignore[attr-defined]


@router.get("/exchanges/sim/faults", response_model=list[ArmedFault], tags=["exchanges"])
async def armed_faults(orders: OrdersDep) -> list[ArmedFault]:
    """The faults still armed on the simulated exchange, in the order they apply."""
    sim = orders.exchanges.get("sim")
    return [
        ArmedFault(
            kind=fault.kind,
            op=fault.op,
            times=fault.times,
            hang_seconds=fault.hang_s if fault.kind == "hang_after_accept" else None,
        )
        for fault in sim.armed_faults()  # type: ignore[attr-defined]
    ]


@router.delete("/exchanges/sim/faults", status_code=204, tags=["exchanges"])
async def clear_faults(caller: CallerDep, orders: OrdersDep) -> None:
    """Remove every injected fault from the simulated exchange (operator only)."""
    if caller.name != "operator":
        raise Forbidden("only the operator may clear faults")
    orders.exchanges.get("sim").clear_faults()  # type: ignore[attr-defined]
