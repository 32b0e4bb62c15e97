"""The order path: claim → risk and compliance → exchange → ledger, each step persisted.

The order row is committed as `pending` (claiming its client order id) before
anything else happens, so a retried request finds it and never sends twice.
An order whose fate the exchange did not tell us is `unknown` and is reconciled
by client order id (sync.py); nothing is ever re-sent blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from prometheus_client import Histogram
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from agents.execution import repository as repo
from agents.execution.batches import Batches
from agents.execution.exchange.base import ExchangeOrder, Market
from agents.execution.exchange.errors import (
    AuthenticationError,
    ExchangeError,
    ExchangeTimeout,
    InsufficientFunds,
    InvalidOrder,
    NetworkError,
    OrderNotFound,
)
from agents.execution.exchanges import ExchangeRegistry
from agents.execution.ledger import PositionState, apply_fill, coins_moved
from agents.execution.schemas import OrderRequest
from common import outbox
from common.auth import Caller
from common.clients import Agents
from common.contracts import (
    MAX_BATCH,
    AuditEventIn,
    CheckDecision,
    CheckDecisions,
    FillEvent,
    OpenOrder,
    OrderSide,
    OrderType,
    PolicyBatch,
    PolicyRequest,
    PortfolioView,
    PositionView,
    PreTradeBatch,
    PreTradeOrder,
    RestingOrder,
    TradingState,
)
from common.db import LoopDatabase
from common.errors import Conflict, ServiceUnavailable, Unprocessable, VolexError
from common.models import Order, Position
from common.money import to_step

log = logging.getLogger(__name__)
T = TypeVar("T")
SERVICE = "execution"
STARTING = "reconciling the orders of its last run"  # what a just-started execution waits for
# Only the rules that failed come back: a refusal names them; every result is stored and
# audited by risk and compliance themselves.
RISK_CHECKS = "/checks/pre-trade/batch?checks=failed"
POLICY_CHECKS = "/checks/policy/batch?checks=failed"


def status_of(ex: ExchangeOrder) -> str:
    if ex.status == "open":
        return "partially_filled" if ex.filled > 0 else "open"
    return {"closed": "filled", "canceled": "cancelled"}.get(ex.status, ex.status)


def status_kind(status: str) -> str:
    """The audit kind of an order reaching `status`. `order.filled` is taken: it is one
    fill (a trade, compliance checks it as a FillEvent and reports read it), so an order
    filled in full is `order.completed`."""
    return "order.completed" if status == "filled" else f"order.{status}"


def event(kind: str, actor: str, subject: str, **data: Any) -> AuditEventIn:
    return AuditEventIn(kind=kind, actor=actor, subject=subject, data=data)


def audit(session: Session, kind: str, actor: str, subject: str, **data: Any) -> None:
    outbox.record(session, SERVICE, event(kind, actor, subject, **data))


class OrderService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        loop_db: LoopDatabase,
        agents: Agents,
        exchanges: ExchangeRegistry,
    ) -> None:
        self.sessions = sessions
        self.loop_db = loop_db  # the order path's own transactions (claim, record)
        self.agents = agents
        self.exchanges = exchanges
        self.wake_relay: Callable[[], None] = lambda: None
        self.stage_seconds: Histogram | None = None  # set by the app: per-stage latency
        # The trading state as last applied here (risk's call, its broadcast, or start-up):
        # checked again right before an order leaves, after risk approved it.
        self.gate = TradingState.ACTIVE
        self.gate_reason = ""
        # Orders between approval and the exchange's answer, with their (exchange, symbol):
        # the reconciler, cancels, bracket keeping and the kill switch leave them alone
        # (the kill switch waits for them).
        self.in_flight: dict[int, tuple[str, str]] = {}
        self.idle = asyncio.Event()  # set while nothing is in flight
        self.idle.set()
        # Why it cannot trade yet (start-up reconciliation: sync.py); None once it can.
        self.unready: str | None = STARTING
        # Attached brackets (brackets.py, wired by the app): protect a position once its
        # entry is done; cancel our legs when they hold what an order needs to sell.
        # Orders approved and on their way to the exchange, until recorded: the next
        # approval on the account counts them as filled (`place`), and its wash-trade
        # rule counts the limit orders among them as resting.
        self.approved: dict[int, _OnItsWay] = {}
        # Orders the exchange answered but whose answer could not be recorded: they stay
        # in `approved` (still counted) until the reconciler records them (`settled`).
        self.unrecorded: set[int] = set()
        # Approvals per account and records per market, a batch at a time (batches.py).
        self.approvals: Batches[str, _Ask] = Batches(
            self._approve_batch, lambda ask: ask.answer, MAX_BATCH
        )
        self.records: Batches[tuple[str, str], _Answer] = Batches(
            self._record_batch, lambda answer: answer[2], MAX_BATCH
        )
        # Claims a statement at a time, by the columns they fill (orders from POST /orders
        # all fill the same ones).
        self.claims: Batches[tuple[str, ...], _Claim] = Batches(
            self._claim_batch, lambda claim: claim[2], MAX_BATCH
        )
        self.batch_sizes: Histogram | None = None  # set by the app: orders per approval
        self.after_fill: Callable[[Order], Awaitable[None]] = _nothing_after_fill
        self.make_way: Callable[[Order], Awaitable[bool]] = _no_way

    @contextlib.contextmanager
    def flying(self, orders: list[Order]) -> Iterator[None]:
        """Mark `orders` as on their way to the exchange for the duration."""
        for order in orders:
            self.in_flight[order.id] = (order.exchange, order.symbol)
        self.idle.clear()
        try:
            yield
        finally:
            for order in orders:
                self.in_flight.pop(order.id, None)
            if not self.in_flight:
                self.idle.set()

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.stage_seconds is not None:
                self.stage_seconds.labels(name).observe(time.perf_counter() - started)

    # --- database helpers --------------------------------------------------------------
    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking DB function in a thread; a database failure is a 503."""
        try:
            return await asyncio.to_thread(fn, *args)
        except SQLAlchemyError as exc:
            raise ServiceUnavailable(
                f"database unavailable ({exc.__class__.__name__}): no order was sent"
            ) from exc

    def _find(self, client_order_id: str) -> Order | None:
        with self.sessions() as session:
            return repo.by_client_id(session, client_order_id)

    async def claim(self, values: dict[str, Any], actor: str) -> Order | None:
        """Commit a pending order row (and its `order.requested` event) before anything
        else happens to it; None if its client order id is taken. Claims arriving while
        one is being written go together in the next statement (`_claim_batch`)."""
        claimed: asyncio.Future[Order | None] = asyncio.get_running_loop().create_future()
        await self.claims.wait(tuple(values), (values, _requested(values, actor), claimed))
        return claimed.result()

    async def _claim_batch(self, columns: tuple[str, ...], batch: list[_Claim]) -> None:
        """Claim the batch in one statement; if that fails, one by one, so that one order
        the database refuses does not take the others with it (unless the database is out
        of reach: then none can be claimed)."""
        try:
            async with self.loop_db.connection() as connection:
                found = await repo.claim(
                    connection, [v for v, _, _ in batch], SERVICE, [e for _, e, _ in batch]
                )
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, ServiceUnavailable):
                for _, _, claimed in batch:
                    claimed.set_exception(exc)
                return
            for one in batch:
                await self._claim_batch(columns, [one])
            return
        for (_, _, claimed), order in zip(batch, found, strict=True):
            claimed.set_result(order)

    async def claim_all(self, values: list[dict[str, Any]], actor: str) -> list[Order]:
        """Claim orders that go out together (the legs of a pair): all or none."""
        async with self.loop_db.transaction() as connection:
            events = [_requested(one, actor) for one in values]
            found = await repo.claim(connection, values, SERVICE, events)
            claimed = []
            for one, order in zip(values, found, strict=True):
                if order is None:  # (raised in the transaction: the others are undone)
                    raise Conflict(f"client order id {one['client_order_id']!r} is taken")
                claimed.append(order)
            return claimed

    def _finish(self, order_id: int, status: str, reason: str, actor: str) -> Order:
        with self.sessions.begin() as session:
            order = repo.get(session, order_id, lock=True)
            assert order is not None
            if order.status in repo.FINAL:
                return order
            order.status, order.reason = status, reason
            audit(session, status_kind(status), actor, order.client_order_id, reason=reason)
            return order

    # --- placing ------------------------------------------------------------------------
    async def place(self, req: OrderRequest, caller: Caller) -> tuple[Order, bool]:
        """Place `req`; returns the order and whether this call created it."""
        if self.unready is not None:
            raise ServiceUnavailable(
                f"execution is not ready to trade: {self.unready}; try again shortly"
            )
        await self.exchanges.ensure(req.exchange)  # live: keys re-read from Vault, fail closed
        market = await self.exchanges.market(req.exchange, req.symbol)
        cid = req.client_order_id or f"vx-{uuid.uuid4().hex[:24]}"
        mid, age = await self._mark(req.exchange, req.symbol)
        amount = _amount(req, market, mid)
        values = {
            "client_order_id": cid,
            "exchange": req.exchange,
            "symbol": req.symbol,
            "side": req.side.value,
            "type": req.type.value,
            "amount": amount,
            "price": req.price,
            "stop_price": req.stop_price,
            "reduce_only": req.reduce_only,
            "stop_loss": req.stop_loss,
            "take_profit": req.take_profit,
            "trailing_stop_pct": req.trailing_stop_pct,
            "role": "entry",
            "requested_by": caller.name,
        }
        # The claim commits while the order waits for its approval (the account is read
        # meanwhile): a replay finds its order, and nothing is judged before it is claimed.
        claim = asyncio.ensure_future(self._timed("claim", self.claim(values, caller.name)))
        refusal: VolexError | None = None
        try:
            _check_brackets(req, mid)  # refused after the claim: a replay gets its order
        except VolexError as exc:
            refusal = exc
        ask = _Ask(claim, market, mid, age, refusal, asyncio.get_running_loop().create_future())
        try:
            return await self._after_claim(req, caller, ask, cid)
        finally:  # approved or not, sent or not: no longer on its way
            ask.answer.cancel()  # (if still unanswered: we stopped waiting, do not judge it)
            if claim.done() and not claim.cancelled() and claim.exception() is None:
                claimed = claim.result()
                if claimed is not None and claimed.id not in self.unrecorded:
                    self.approved.pop(claimed.id, None)

    async def _after_claim(
        self, req: OrderRequest, caller: Caller, ask: _Ask, cid: str
    ) -> tuple[Order, bool]:
        """Approval, then the exchange: the rest of `place` once the claim is under way."""
        await self._approval(req.exchange, ask)
        order = await ask.claim
        self.wake_relay()
        if order is None:  # the client order id is taken (a retry, or a race): same order
            found = await self.db(self._find, cid)
            assert found is not None
            return _same_request(found, req), False
        failure = ask.answer.result()
        if isinstance(failure, ExchangeError):  # (an ExchangeError is a VolexError too)
            await self.db(self._finish, order.id, "rejected", str(failure), caller.name)
            raise ServiceUnavailable(
                f"{order.exchange} could not be read before the checks: {failure}"
            ) from failure
        if failure is not None:
            await self.db(self._finish, order.id, "rejected", failure.message, caller.name)
            raise failure
        with self._stage("send_and_record"):
            return await self.send(order), True

    async def _approval(self, exchange: str, ask: _Ask) -> None:
        """Wait for `ask`'s answer. One approval at a time per account: whoever holds the
        lock judges every order that queued meanwhile, in arrival order, in one call to
        risk and one to compliance. Risk counts the orders approved before each one (in
        the batch, and earlier ones still on their way: `approved`) as resting orders;
        compliance's wash-trade rule sees the batch's earlier limit orders and those
        resting on the exchange. Orders sent at the same moment cannot together pass a
        limit that each passes alone."""
        await self.approvals.wait(exchange, ask)

    async def _mark(self, exchange: str, symbol: str) -> tuple[Decimal, int]:
        try:
            return await self.exchanges.mark(exchange, symbol)
        except ExchangeError as exc:
            raise ServiceUnavailable(
                f"{exchange} has no price for {symbol} right now: {exc}"
            ) from exc

    async def _timed(self, stage: str, work: Awaitable[T]) -> T:
        with self._stage(stage):
            return await work

    async def _approve_batch(self, exchange: str, batch: list[_Ask]) -> None:
        """Answer every ask in `batch`: None (approved, and counted in `approved`), or why
        not. An ask whose claim found its client order id taken, or failed, is answered
        None: its owner reads its claim first."""
        try:
            await self._answer_batch(exchange, batch)
        except VolexError as exc:  # the whole batch: risk or compliance unavailable
            _answer_the_rest(batch, exc)
        except Exception as exc:
            log.exception("approving a batch of orders failed")
            _answer_the_rest(batch, ServiceUnavailable(f"order refused: approval failed ({exc})"))
        finally:  # cancelled: nobody waits for ever
            _answer_the_rest(batch, ServiceUnavailable("order refused: approval interrupted"))

    async def _answer_batch(self, exchange: str, batch: list[_Ask]) -> None:
        if self.batch_sizes is not None:
            self.batch_sizes.observe(len(batch))
        book, claims = await asyncio.gather(
            self._timed("portfolio", self.portfolio(exchange)),
            # (shielded: the owners read their claims; one batch's end does not end them)
            asyncio.gather(*(asyncio.shield(ask.claim) for ask in batch), return_exceptions=True),
            return_exceptions=True,
        )
        assert not isinstance(claims, BaseException)  # (its own errors are returned)
        judged: list[tuple[_Ask, Order]] = []
        for ask, claimed in zip(batch, claims, strict=True):
            if not isinstance(claimed, Order):
                _answer(ask, None)
            elif ask.refusal is not None:
                _answer(ask, ask.refusal)
            elif not ask.answer.done():  # (done: its caller went away)
                judged.append((ask, claimed))
        if not judged:
            return
        if isinstance(book, VolexError | ExchangeError):
            _answer_the_rest(batch, book)
            return
        if isinstance(book, BaseException):
            raise book
        failures = await self._judge(judged, *book)
        for (ask, order), failure in zip(judged, failures, strict=True):
            if failure is None and not ask.answer.done():
                # Valued as risk values it: at its limit (or stop) price, a market order at
                # the mid (as `portfolio` values our resting orders).
                self.approved[order.id] = _OnItsWay(
                    _as_open(order, order.price or order.stop_price or ask.mid),
                    limit=order.type == OrderType.limit.value,
                )
            _answer(ask, failure)

    async def _judge(
        self,
        judged: list[tuple[_Ask, Order]],
        portfolio: PortfolioView,
        resting: dict[str, list[RestingOrder]],
    ) -> list[VolexError | None]:
        """Risk's and compliance's decisions on the orders, in one call to each."""
        asked = [(ask, order, _described(order, ask.mid)) for ask, order in judged]
        pre_trade = PreTradeBatch(
            portfolio=portfolio,
            orders=[
                PreTradeOrder(
                    **same,
                    reduce_only=order.reduce_only,
                    stop_loss=order.stop_loss,
                    reference_age_ms=ask.age_ms,
                    market=ask.market.rules(),
                )
                for ask, order, same in asked
            ],
        )
        policy = PolicyBatch(
            orders=[
                PolicyRequest(
                    **same,
                    resting_orders=resting.get(order.symbol, []),
                    requested_by=order.requested_by,
                )
                for _, order, same in asked
            ]
        )
        with self._stage("checks"):
            answers: tuple[CheckDecisions | BaseException, ...] = await asyncio.gather(
                self.agents.risk.post_model(RISK_CHECKS, pre_trade, CheckDecisions),
                self.agents.compliance.post_model(POLICY_CHECKS, policy, CheckDecisions),
                return_exceptions=True,
            )
        decided: list[list[CheckDecision]] = []
        for name, answer in zip(("risk", "compliance"), answers, strict=True):
            if isinstance(answer, ServiceUnavailable):
                raise ServiceUnavailable(f"order refused: {name} unavailable ({answer.message})")
            if isinstance(answer, BaseException):
                raise ServiceUnavailable(f"order refused: {name} check failed ({answer})")
            decisions = answer.decisions
            if len(decisions) != len(judged):
                raise ServiceUnavailable(
                    f"order refused: {name} answered {len(decisions)} decisions "
                    f"for {len(judged)} orders"
                )
            decided.append(decisions)
        failures: list[VolexError | None] = []
        why_stopped: str | None = None  # asked of risk once per batch, if needed
        for by_risk, by_compliance in zip(*decided, strict=True):
            failure: VolexError | None = None
            for name, decision in (("risk", by_risk), ("compliance", by_compliance)):
                if decision.approved:
                    continue
                failed = decision.rejections
                reasons = "; ".join(f"{c.rule}: {c.detail}" for c in failed)
                message = f"rejected by {name}: {reasons}"
                if all("state" in c.rule for c in failed):
                    if why_stopped is None:
                        why_stopped = await self._why_stopped()
                    failure = Conflict(f"{why_stopped} ({message})" if why_stopped else message)
                else:
                    failure = Unprocessable(message)
                break
            failures.append(failure)
        return failures

    async def _why_stopped(self) -> str:
        """Why trading stopped (the halt reason), for a refusal for the trading state;
        empty if risk cannot say."""
        try:
            state = await self.agents.risk.get("/state")
        except VolexError:
            return ""
        return f"trading is {state.get('state')}: {state.get('reason')}"

    def _gate_refusal(self, order: Order) -> str | None:
        if order.reduce_only or self.gate == TradingState.ACTIVE:
            return None
        return f"trading is {self.gate.value}: {self.gate_reason}; only reduce-only orders go out"

    async def send(self, order: Order) -> Order:
        """Hand an approved (claimed) order to its exchange and record what came back."""
        with self.flying([order]):
            recorded = await self._send(order)
        try:
            await self.after_fill(recorded)
        except VolexError as exc:  # the order stands; the reconciler's pass tries again
            log.warning("could not protect the position yet", extra={"reason": exc.message})
        return recorded

    async def _send(self, order: Order) -> Order:
        adapter = self.exchanges.get(order.exchange)
        for attempt in (1, 2):
            # Each time it goes out: a halt may have landed since risk's approval (or
            # while our protective legs made way).
            refusal = self._gate_refusal(order)
            if refusal is not None:
                await self.db(self._finish, order.id, "rejected", refusal, SERVICE)
                raise Conflict(refusal)
            try:
                with self._stage("exchange"):
                    ex = await adapter.create_order(
                        order.symbol,
                        order.side,
                        order.type,
                        order.amount,
                        price=order.price,
                        stop_price=order.stop_price,
                        client_order_id=order.client_order_id,
                    )
                break
            except (ExchangeTimeout, NetworkError) as exc:
                # The exchange may or may not have it: reconcile by client id, never resend.
                return await self.db(self._finish, order.id, "unknown", str(exc), SERVICE)
            except InsufficientFunds as exc:
                # Refused outright, so nothing was created: if our own protective legs
                # held the coins, they make way (and follow the new position) and the
                # order goes once more.
                if attempt == 1 and order.role == "entry" and await self.make_way(order):
                    continue
                await self.db(self._finish, order.id, "rejected", str(exc), SERVICE)
                raise _refused(order.exchange, exc) from exc
            except InvalidOrder as exc:
                await self.db(self._finish, order.id, "rejected", str(exc), SERVICE)
                raise _refused(order.exchange, exc) from exc
            except AuthenticationError as exc:
                await self.db(self._finish, order.id, "rejected", str(exc), SERVICE)
                await self.halt(f"{order.exchange} rejected our credentials: {exc}")
                raise ServiceUnavailable(
                    f"{order.exchange} authentication failed; trading halted"
                ) from exc
        try:
            with self._stage("record"):
                recorded = await self._record_together(order, ex)
        except ServiceUnavailable as exc:
            self.unrecorded.add(order.id)  # (approved or not: the reconciler settles it)
            raise ServiceUnavailable(
                f"{order.exchange} accepted order {order.client_order_id!r} but recording it "
                f"failed ({exc.message}); it will be reconciled. Do not send it again: retry "
                "with the same client_order_id to see it."
            ) from exc
        self.wake_relay()
        return recorded

    async def cancel(self, order: Order) -> Order:
        """Cancel `order` on its exchange and record the outcome. An order the exchange
        already finished (filled, or cancelled with the other leg of its pair) is
        recorded as the exchange has it."""
        if order.id in self.in_flight:
            raise Conflict(
                f"order {order.id} is being sent to {order.exchange}; cancel it again "
                "in a moment, once the exchange has answered"
            )
        if order.exchange_order_id is None:
            return await self.db(
                self._finish,
                order.id,
                "cancelled",
                "cancelled before it reached the exchange",
                SERVICE,
            )
        adapter = self.exchanges.get(order.exchange)
        try:
            ex = await adapter.cancel_order(order.exchange_order_id, order.symbol)
        except (InvalidOrder, OrderNotFound) as refused:
            ex = await adapter.fetch_order(order.exchange_order_id, order.symbol)
            if ex.status == "open":
                raise refused
        return await self.record(order.id, ex)

    def settled(self, order_id: int) -> None:
        """The reconciler recorded an order whose answer could not be recorded when it
        came: the ledger counts it now, so it is no longer counted as on its way."""
        if order_id in self.unrecorded:
            self.unrecorded.discard(order_id)
            self.approved.pop(order_id, None)

    # --- ledger -----------------------------------------------------------------------------
    async def record(self, order_id: int, ex: ExchangeOrder) -> Order:
        """Bring our row in line with the exchange's order: status, fills, position."""
        [order] = await self.record_all([(order_id, ex)])
        return order

    async def record_all(self, answers: list[tuple[int, ExchangeOrder]]) -> list[Order]:
        """`record` each (order id, exchange's order), in turn, in one transaction of a
        few statements whatever the number of answers: the order rows are locked first,
        in id order, then the positions they move (two recorders never wait on each
        other's rows in opposite orders); the trades already in the ledger are looked up
        once; fills, positions, orders and audit events are written at the end, in one
        statement. (One statement per row and step made a batch of 30 answers ~200 round
        trips, each waiting for a busy event loop.)"""
        async with self.loop_db.transaction() as connection:
            orders = await repo.lock_orders(connection, sorted({i for i, _ in answers}))
            markets = sorted(
                {
                    (orders[i].exchange, orders[i].symbol)
                    for i, ex in answers
                    if _moves_position(orders[i], ex)
                }
            )
            positions = {m: await repo.lock_position(connection, *m) for m in markets}
            held = {m: repo.held_state(pos) for m, pos in positions.items()}
            before = {i: repo.recorded(order) for i, order in orders.items()}
            traded = [(orders[i].exchange, str(t.id)) for i, ex in answers for t in ex.trades]
            book = _Ledger(await repo.recorded_trades(connection, traded))
            result = [_record(orders[i], ex, positions, book) for i, ex in answers]
            await repo.save_recording(
                connection,
                book.fills,
                [pos for m, pos in positions.items() if repo.held_state(pos) != held[m]],
                [o for i, o in orders.items() if repo.recorded(o) != before[i]],
                SERVICE,
                book.events,
            )
            return result

    async def _record_together(self, order: Order, ex: ExchangeOrder) -> Order:
        """`record` the exchange's answer to an order just sent. One transaction at a time
        per market: whoever holds its lock records every answer that queued meanwhile,
        under one lock of the position row and one commit (orders sent together used to
        queue one by one for that row, a commit each)."""
        done: asyncio.Future[Order] = asyncio.get_running_loop().create_future()
        await self.records.wait((order.exchange, order.symbol), (order.id, ex, done))
        return done.result()

    async def _record_batch(self, market: tuple[str, str], batch: list[_Answer]) -> None:
        """Record the answers in one transaction; if that fails, one by one, so that one
        answer that cannot be recorded does not hold back the others (unless the database
        is out of reach: then none can be, and the reconciler records them later)."""
        try:
            rows = await self.record_all([(i, e) for i, e, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, ServiceUnavailable):
                for _, _, waiting in batch:
                    _fail_recording(waiting, exc)
                return
            for order_id, ex, waiting in batch:
                try:
                    waiting.set_result(await self.record(order_id, ex))
                except Exception as one:
                    _fail_recording(waiting, one)
            return
        for (_, _, waiting), row in zip(batch, rows, strict=True):
            waiting.set_result(row)

    # --- portfolio -----------------------------------------------------------------------------
    async def portfolio(self, exchange: str) -> tuple[PortfolioView, dict[str, list[RestingOrder]]]:
        """The account as risk should see it, and our resting orders by symbol."""
        adapter = self.exchanges.get(exchange)
        # Before the ledger is read: an order recorded in between counts twice, never not at all.
        on_their_way = [w for w in self.approved.values() if w.open.exchange == exchange]
        today = datetime.now(UTC).date()
        # The exchange and the ledger are read at once (one after the other, the exchange's
        # wait for its journal and the ledger's round trips added up under load).
        balances, (rows, realized, live) = await asyncio.gather(
            adapter.fetch_balance(), self._book(exchange, today)
        )
        views = []
        for row in rows:
            mark, _ = await self._mark(exchange, row.symbol)
            views.append(
                PositionView(
                    exchange=exchange,
                    symbol=row.symbol,
                    amount=row.amount,
                    entry_price=row.entry_price,
                    mark_price=mark,
                    stop_loss=row.stop_loss,
                )
            )
        cash = balances["USDT"].free if "USDT" in balances else Decimal(0)
        total_quote = balances["USDT"].total if "USDT" in balances else Decimal(0)
        equity = total_quote + sum((v.amount * v.mark_price for v in views), Decimal(0))
        open_orders = [w.open for w in on_their_way] + [
            _as_open(o, o.price or o.stop_price or (await self._mark(exchange, o.symbol))[0])
            for o in live
            if o.amount > o.filled and o.id not in self.approved
        ]
        view = PortfolioView(
            equity=max(equity, Decimal(0)),
            cash=cash,
            positions=views,
            realized_pnl_today=realized,
            open_orders=open_orders,
            account=self.exchanges.account(exchange),  # (risk: a drawdown peak per account)
        )
        # What compliance's wash-trade rule looks at: our limit prices resting on the book
        # (a stop waiting for its trigger is not on it), those that may be (`unknown`: the
        # exchange took them and did not say more), and our limit orders on their way
        # there (one recorded in between is listed twice: harmless, never missed).
        resting: dict[str, list[RestingOrder]] = {}
        for way in on_their_way:
            if way.limit:
                resting.setdefault(way.open.symbol, []).append(
                    RestingOrder(side=way.open.side, price=way.open.price, amount=way.open.amount)
                )
        for o in live:
            if o.status in _MAY_REST and o.price is not None and o.amount > o.filled:
                resting.setdefault(o.symbol, []).append(
                    RestingOrder(side=OrderSide(o.side), price=o.price, amount=o.amount - o.filled)
                )
        return view, resting

    async def _book(
        self, exchange: str, today: date
    ) -> tuple[list[Position], Decimal, list[Order]]:
        """Positions, today's realized PnL and our open orders, on one connection."""
        async with self.loop_db.connection() as connection:
            rows = await repo.positions(connection, exchange)
            realized = await repo.realized_on(connection, today)
            live = await repo.live(connection, exchange, with_unknown=True)
        return rows, realized, live

    async def live(self, exchange: str | None) -> list[Order]:
        """Our orders resting on `exchange` (every exchange: None), oldest first."""
        async with self.loop_db.connection() as connection:
            return await repo.live(connection, exchange)

    async def positions(self, exchange: str) -> list[Position]:
        """The exchange's positions that hold something, by symbol."""
        async with self.loop_db.connection() as connection:
            return await repo.positions(connection, exchange)

    async def halt(self, reason: str) -> None:
        try:
            await self.agents.risk.post("/halt", json={"reason": reason, "flatten": False})
        except VolexError as exc:
            log.error("could not halt trading through risk", extra={"reason": exc.message})


def _refused(exchange: str, exc: ExchangeError) -> Unprocessable:
    """The exchange's refusal of an order, for its caller: a 422 titled as the exchange's
    error ("Insufficient funds", "Order refused by the exchange"), with its reason."""
    refused = Unprocessable(f"{exchange} refused the order: {exc}")
    refused.title = exc.title
    return refused


# An exchange's answer to an order just sent: (order id, answer, the recorded order).
_Answer = tuple[int, ExchangeOrder, "asyncio.Future[Order]"]
_Claim = tuple[dict[str, Any], AuditEventIn, "asyncio.Future[Order | None]"]


@dataclasses.dataclass
class _Ask:
    """An order waiting for risk's and compliance's approval."""

    claim: asyncio.Future[Order | None]  # committing meanwhile; None: the id is taken
    market: Market
    mid: Decimal  # the reference price, and how old it is
    age_ms: int
    refusal: VolexError | None  # found before the checks (its brackets): not judged
    answer: asyncio.Future[VolexError | ExchangeError | None]  # None: approved (or not claimed)


def _described(order: Order, mid: Decimal) -> dict[str, Any]:
    """What risk's and compliance's checks both say of an order."""
    return {
        "client_order_id": order.client_order_id,
        "exchange": order.exchange,
        "symbol": order.symbol,
        "side": OrderSide(order.side),
        "type": OrderType(order.type),
        "amount": order.amount,
        "price": order.price or order.stop_price,
        "reference_price": mid,
    }


def _fail_recording(waiting: asyncio.Future[Order], exc: Exception) -> None:
    """Its caller hears it (a 503: the reconciler records the answer later)."""
    if not isinstance(exc, ServiceUnavailable):
        log.error("recording an exchange answer failed", exc_info=exc)
        exc = ServiceUnavailable(f"recording failed ({exc.__class__.__name__})")
    waiting.set_exception(exc)


def _answer(ask: _Ask, failure: VolexError | ExchangeError | None) -> None:
    if not ask.answer.done():  # (done: answered already, or its caller went away)
        ask.answer.set_result(failure)


def _answer_the_rest(batch: list[_Ask], failure: VolexError | ExchangeError) -> None:
    for ask in batch:
        _answer(ask, failure)


_MAY_REST = repo.LIVE | {"unknown"}


@dataclasses.dataclass(frozen=True, slots=True)
class _OnItsWay:
    """An approved order not yet recorded: as risk counts it, and whether it is a limit
    order (one that will rest on the book, for compliance's wash-trade rule)."""

    open: OpenOrder
    limit: bool


def _as_open(order: Order, price: Decimal) -> OpenOrder:
    """An order of ours as risk counts it: what is left of it, at its price (a market
    order's: the mark when it was approved)."""
    return OpenOrder(
        exchange=order.exchange,
        symbol=order.symbol,
        side=OrderSide(order.side),
        amount=order.amount - order.filled,
        price=price,
        reduce_only=order.reduce_only,
    )


async def _nothing_after_fill(order: Order) -> None:
    return None


async def _no_way(order: Order) -> bool:
    return False


def _requested(values: dict[str, Any], actor: str) -> AuditEventIn:
    """The `order.requested` event of an order about to be claimed with `values`."""

    def text(name: str) -> str | None:
        value = values.get(name)
        return None if value is None else str(value)

    return event(
        "order.requested",
        actor,
        values["client_order_id"],
        exchange=values["exchange"],
        symbol=values["symbol"],
        side=values["side"],
        type=values["type"],
        amount=text("amount"),
        price=text("price"),
        stop_price=text("stop_price"),
        reduce_only=bool(values.get("reduce_only")),
        role=values.get("role", "entry"),
        requested_by=values["requested_by"],
    )


def _same_request(existing: Order, req: OrderRequest) -> Order:
    """A reused client order id must describe the same order."""
    if (existing.exchange, existing.symbol, existing.side) != (
        req.exchange,
        req.symbol,
        req.side.value,
    ):
        raise Conflict(
            f"client_order_id {existing.client_order_id!r} already names order {existing.id} "
            f"({existing.side} {existing.symbol} on {existing.exchange}); use a new id"
        )
    return existing


def _amount(req: OrderRequest, market: Market, mid: Decimal) -> Decimal:
    if req.amount is not None:
        return req.amount
    assert req.quote_amount is not None
    amount = to_step(req.quote_amount / mid, market.amount_step)
    if amount <= 0:
        raise Unprocessable(
            f"quote_amount {req.quote_amount} buys less than one step "
            f"({market.amount_step}) of {req.symbol} at {mid:.2f}"
        )
    return amount


def _check_brackets(req: OrderRequest, mid: Decimal) -> None:
    below, above = (
        (req.stop_loss, req.take_profit)
        if req.side == OrderSide.buy
        else (req.take_profit, req.stop_loss)
    )
    if below is not None and below >= mid:
        raise Unprocessable(
            f"{'stop_loss' if req.side == OrderSide.buy else 'take_profit'} "
            f"{below} must be below the price {mid:.2f}"
        )
    if above is not None and above <= mid:
        raise Unprocessable(
            f"{'take_profit' if req.side == OrderSide.buy else 'stop_loss'} "
            f"{above} must be above the price {mid:.2f}"
        )


@dataclasses.dataclass
class _Ledger:
    """What recording a batch of answers writes: the fills it adds, their audit events and
    the orders' (in order), and the trades already recorded (those it adds join them)."""

    recorded: set[tuple[str, str]]
    fills: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    events: list[AuditEventIn] = dataclasses.field(default_factory=list)


def _moves_position(order: Order, ex: ExchangeOrder) -> bool:
    """Recording `ex` may change the order's position (its trades; or its legs attach)."""
    done = order.role == "entry" and ex.filled > 0 and status_of(ex) in repo.FINAL
    return bool(ex.trades) or done


def _record(
    order: Order,
    ex: ExchangeOrder,
    positions: dict[tuple[str, str], Position],
    book: _Ledger,
) -> Order:
    """Bring `order` (locked) in line with the exchange's `ex`: its new trades move the
    position (locked: `_moves_position`), then its status, fill and fee follow."""
    pos = positions.get((order.exchange, order.symbol))
    for trade in ex.trades:
        assert pos is not None
        _record_trade(order, pos, trade, book)
    order.exchange_order_id = ex.id
    if ex.filled < order.filled:  # an older answer arrived late: keep the newer one
        return order
    was_final = order.status in repo.FINAL
    order.filled, order.fee = ex.filled, ex.fee
    order.average_price = ex.average
    status = status_of(ex)
    if status != order.status:
        order.status = status
        if ex.reason:  # why the exchange expired or cancelled it, when it says
            order.reason = ex.reason
        book.events.append(
            event(
                status_kind(status),
                SERVICE,
                order.client_order_id,
                filled=str(ex.filled),
                exchange_order_id=ex.id,
                **({"reason": ex.reason} if ex.reason else {}),
            )
        )
    armable = order.role == "entry" and order.filled > 0
    if armable and status in repo.FINAL and not was_final:
        assert pos is not None
        _arm_position(order, pos)
    return order


def _record_trade(order: Order, pos: Position, trade: Any, book: _Ledger) -> None:
    """Add one trade of `order` to the fills and move `pos`, unless it is recorded already."""
    if (order.exchange, str(trade.id)) in book.recorded:
        return
    book.recorded.add((order.exchange, str(trade.id)))
    base, quote = order.symbol.split("/")
    fee = Decimal(trade.fee)
    # A fee taken in the coin leaves the account fewer coins: the position follows.
    moved, fee_quote = coins_moved(
        order.side,
        Decimal(trade.amount),
        Decimal(trade.price),
        fee,
        trade.fee_currency,
        base,
        quote,
    )
    state, realized = apply_fill(
        PositionState(pos.amount, pos.entry_price, pos.realized_pnl),
        order.side,
        moved,
        Decimal(trade.price),
        fee_quote,
    )
    filled_at = datetime.fromtimestamp(trade.timestamp / 1000, UTC)
    book.fills.append(
        {
            "order_id": order.id,
            "exchange": order.exchange,
            "trade_id": str(trade.id),
            "symbol": order.symbol,
            "side": order.side,
            "amount": trade.amount,
            "price": trade.price,
            "fee": fee,
            "fee_currency": trade.fee_currency,
            "realized_pnl": realized,
            "filled_at": filled_at,
        }
    )
    pos.amount, pos.entry_price, pos.realized_pnl = (
        state.amount,
        state.entry_price,
        state.realized_pnl,
    )
    if pos.amount == 0:
        pos.stop_loss = pos.take_profit = pos.trailing_stop_pct = pos.trail_extreme = None
    fill = FillEvent(
        fill_id=f"{order.exchange}:{trade.id}",
        client_order_id=order.client_order_id,
        exchange=order.exchange,
        symbol=order.symbol,
        side=OrderSide(order.side),
        amount=trade.amount,
        price=trade.price,
        fee=fee,
        fee_currency=trade.fee_currency,
        filled_at=filled_at,
    )
    book.events.append(
        event("order.filled", SERVICE, order.client_order_id, **fill.model_dump(mode="json"))
    )


def _arm_position(order: Order, pos: Position) -> None:
    """Attach the order's protective legs to the position it opened or added to."""
    if pos.amount == 0 or (pos.amount > 0) != (order.side == "buy"):
        return  # the order reduced or flipped the position: its legs do not describe it
    if order.stop_loss is not None:
        pos.stop_loss = order.stop_loss
    if order.take_profit is not None:
        pos.take_profit = order.take_profit
    if order.trailing_stop_pct is not None:
        pos.trailing_stop_pct = order.trailing_stop_pct
        pos.trail_extreme = order.average_price
