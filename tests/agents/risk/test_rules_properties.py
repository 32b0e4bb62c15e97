"""Property tests: no approved order breaks a limit; bad numbers never get past validation.

The first property runs `rules.evaluate` on generated requests, limits and contexts and,
whenever it approves, recomputes every limit here, independently of the rules module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_DOWN, Context, Decimal, localcontext
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agents.risk import book, rules
from agents.risk.rules import CheckContext, RecentOrder
from agents.risk.schemas import Limits
from common.contracts import (
    MarketRules,
    OpenOrder,
    OrderSide,
    OrderType,
    PortfolioView,
    PositionView,
    PreTradeRequest,
    TradingState,
)
from tests.agents.risk.conftest import Risk

EXCHANGES = ["sim", "binance"]
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
IDS = ["order-a", "order-b", "order-c"]
WIDE = Context(prec=100)


def dec(lo: str, hi: str, places: int) -> st.SearchStrategy[Decimal]:
    return st.decimals(
        Decimal(lo), Decimal(hi), places=places, allow_nan=False, allow_infinity=False
    )


def mostly(good: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` seven times in eight, else `other`: every value is mostly sensible and sometimes
    not, so approvals and each kind of rejection all come up often."""
    return st.sampled_from(range(8)).flatmap(lambda k: other if k == 0 else good)


positions = st.builds(
    PositionView,
    exchange=st.sampled_from(EXCHANGES),
    symbol=st.sampled_from(SYMBOLS),
    amount=mostly(dec("-0.5", "0.5", 3), dec("-5", "5", 3)).filter(lambda a: a != 0),
    entry_price=dec("1", "1000", 2),
    mark_price=dec("1", "1000", 2),
    stop_loss=st.none() | dec("1", "1000", 2),
)
open_orders = st.builds(
    OpenOrder,
    exchange=st.sampled_from(EXCHANGES),
    symbol=st.sampled_from(SYMBOLS),
    side=st.sampled_from(list(OrderSide)),
    amount=mostly(dec("0.001", "0.5", 3), dec("0.001", "5", 3)),
    price=dec("1", "1000", 2),
    reduce_only=mostly(st.just(False), st.just(True)),
)
limits_ = st.builds(
    Limits,
    max_order_notional=mostly(dec("5000", "20000", 2), dec("1", "20000", 2)),
    max_position_pct=mostly(dec("0.3", "2", 2), dec("0.01", "2", 2)),
    max_gross_exposure_pct=mostly(dec("1", "3", 2), dec("0.01", "3", 2)),
    max_heat_pct=mostly(dec("0.1", "0.5", 3), dec("0.001", "1", 3)),
    default_stop_pct=mostly(dec("0.001", "0.05", 3), dec("0.001", "1", 3)),
    daily_loss_limit=mostly(dec("2000", "5000", 2), dec("1", "5000", 2)),
    max_drawdown_pct=mostly(dec("0.5", "1", 2), dec("0.01", "1", 2)),
    max_orders_per_minute=mostly(st.integers(5, 8), st.integers(1, 8)),
    duplicate_window_s=st.integers(0, 10),
    price_collar_pct=mostly(dec("0.1", "0.2", 3), dec("0.001", "0.2", 3)),
    max_reference_age_ms=mostly(st.integers(1000, 10_000), st.integers(1, 10_000)),
)


@st.composite
def requests(draw: st.DrawFn) -> PreTradeRequest:
    amount_step = draw(st.sampled_from([Decimal("0.001"), Decimal("0.01"), Decimal(1)]))
    price_step = draw(st.sampled_from([Decimal("0.01"), Decimal("0.5")]))
    reference = draw(dec("1", "1000", 2))
    drift = draw(dec("-0.1", "0.1", 4))
    near = (reference * (1 + drift)).quantize(price_step)
    notional = draw(dec("1", "5000", 2))
    in_steps = max(amount_step, (notional / reference).quantize(amount_step, ROUND_DOWN))
    equity = draw(mostly(dec("20000", "200000", 2), st.just(Decimal(0)) | dec("1", "200000", 2)))
    return PreTradeRequest(
        client_order_id=draw(st.sampled_from(IDS)),
        exchange=draw(st.sampled_from(EXCHANGES)),
        symbol=draw(st.sampled_from(SYMBOLS)),
        side=draw(st.sampled_from(list(OrderSide))),
        type=draw(st.sampled_from(list(OrderType))),
        amount=draw(mostly(st.just(in_steps), dec("0.0001", "5", 4))),
        price=draw(mostly(st.just(near), dec("1", "1000", 3) | st.none())),
        reduce_only=draw(mostly(st.just(False), st.just(True))),
        stop_loss=draw(st.none() | dec("1", "1000", 2)),
        reference_price=draw(mostly(st.just(reference), st.none())),
        reference_age_ms=draw(mostly(st.integers(0, 500), st.none() | st.integers(0, 12_000))),
        market=MarketRules(
            amount_step=amount_step,
            price_step=price_step,
            min_amount=draw(mostly(st.just(Decimal(0)), dec("0", "1", 3))),
            min_notional=draw(mostly(st.just(Decimal(0)), dec("0", "100", 2))),
        ),
        portfolio=PortfolioView(
            equity=equity,
            cash=equity,
            positions=draw(st.lists(positions, max_size=3)),
            realized_pnl_today=draw(mostly(dec("-100", "1000", 2), dec("-5000", "1000", 2))),
            open_orders=draw(st.lists(open_orders, max_size=3)),
        ),
    )


@st.composite
def contexts(draw: st.DrawFn, req: PreTradeRequest) -> CheckContext:
    def recent(copy: bool) -> RecentOrder:
        return RecentOrder(
            client_order_id=draw(st.sampled_from(IDS)),
            exchange=req.exchange if copy else draw(st.sampled_from(EXCHANGES)),
            symbol=req.symbol if copy else draw(st.sampled_from(SYMBOLS)),
            side=req.side.value if copy else draw(st.sampled_from(["buy", "sell"])),
            amount=req.amount if copy else draw(dec("0.001", "5", 3)),
            price=req.price if copy else draw(st.none() | dec("1", "1000", 2)),
            age_s=draw(st.floats(0, 120)),
        )

    copies = draw(st.lists(mostly(st.just(False), st.just(True)), max_size=3))
    above = draw(mostly(dec("0", "0.2", 3), dec("0", "2", 3)))
    return CheckContext(
        state=draw(mostly(st.just(TradingState.ACTIVE), st.sampled_from(list(TradingState)))),
        peak_equity=draw(st.just(Decimal(0)) | st.just(req.portfolio.equity * (1 + above))),
        recent_approved=[recent(copy) for copy in copies],
    )


# --- the oracle: each limit recomputed from its definition ---------------------------------
def _lots_at_risk(req: PreTradeRequest, limits: Limits, price: Decimal) -> Decimal:
    """Money at risk to stops once the order is filled, book built position by position."""
    pct = limits.default_stop_pct
    total, mine, before = Decimal(0), Decimal(0), Decimal(0)
    for p in req.portfolio.positions:
        at_risk = abs(p.amount) * (
            abs(p.entry_price - p.stop_loss) if p.stop_loss else p.mark_price * pct
        )
        if (p.exchange, p.symbol) == (req.exchange, req.symbol):
            mine, before = mine + at_risk, before + p.amount
        else:
            total += at_risk
    delta = req.amount if req.side is OrderSide.buy else -req.amount
    after = before + delta
    per_unit = abs(price - req.stop_loss) if req.stop_loss else price * pct
    if before == 0 or before * delta > 0:  # opened or added to
        return total + mine + req.amount * per_unit
    if before * after < 0:  # flipped: only the new side is at risk
        return total + abs(after) * per_unit
    return total + mine * abs(after) / abs(before)  # reduced


@dataclass(frozen=True)
class Measured:
    """The numbers each limit is about, for one order on one book."""

    smaller: bool  # the order shrinks its position without flipping it
    # ... and still does with our resting orders on its side filled too (what exposure
    # rules let through)
    smaller_worst: bool
    price: Decimal | None
    amounts: dict[str, Decimal]  # limit name -> the case's value for it


def measure(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> Measured:
    book = req.portfolio
    here = [p for p in book.positions if (p.exchange, p.symbol) == (req.exchange, req.symbol)]
    before = sum((p.amount for p in here), Decimal(0))
    after = before + (req.amount if req.side is OrderSide.buy else -req.amount)
    smaller = before != 0 and before * after >= 0 and abs(after) < abs(before)
    same_side = sum(
        (
            o.amount
            for o in book.open_orders
            if (o.exchange, o.symbol) == (req.exchange, req.symbol)
            and o.side is req.side
            and not o.reduce_only
        ),
        Decimal(0),
    )
    worst_after = after + (same_side if req.side is OrderSide.buy else -same_side)
    smaller_worst = before != 0 and before * worst_after >= 0 and abs(worst_after) < abs(before)
    price = req.reference_price if req.type is OrderType.market else req.price
    price = price if price is not None else req.reference_price
    pnl = book.realized_pnl_today + sum(
        (p.amount * (p.mark_price - p.entry_price) for p in book.positions), Decimal(0)
    )
    peak = max(ctx.peak_equity, book.equity)
    amounts = {
        "daily_loss_limit": -pnl,
        "max_drawdown_pct": (peak - book.equity) / peak if peak > 0 else Decimal(0),
    }
    if price is not None:
        amounts["max_order_notional"] = req.amount * price
    if price is not None and book.equity > 0:
        # Worst case: the resting orders that would grow a position fill too.
        mine = [
            o
            for o in book.open_orders
            if (o.exchange, o.symbol) == (req.exchange, req.symbol)
            and o.side is req.side
            and not o.reduce_only
        ]
        more = sum((o.amount for o in mine), Decimal(0))
        worst = after + (more if req.side is OrderSide.buy else -more)
        elsewhere = _growth_elsewhere(req)
        others = [p for p in book.positions if p not in here]
        gross = sum((abs(p.amount) * p.mark_price for p in others), Decimal(0)) + elsewhere
        amounts["max_position_pct"] = abs(worst) * price / book.equity
        amounts["max_gross_exposure_pct"] = (gross + abs(worst) * price) / book.equity
        resting_risk = (elsewhere + sum((o.amount * o.price for o in mine), Decimal(0))) * (
            limits.default_stop_pct
        )
        heat = _lots_at_risk(req, limits, price)
        if not smaller:
            heat += resting_risk
        else:
            heat += elsewhere * limits.default_stop_pct
        amounts["max_heat_pct"] = heat / book.equity
    return Measured(smaller, smaller_worst, price, amounts)


def _growth_elsewhere(req: PreTradeRequest) -> Decimal:
    """Notional our resting orders add in other markets: per market, the side its position
    is on (the larger side when flat); reduce-only orders never."""
    total = Decimal(0)
    for exchange in EXCHANGES:
        for symbol in SYMBOLS:
            if (exchange, symbol) == (req.exchange, req.symbol):
                continue
            held = sum(
                (
                    p.amount
                    for p in req.portfolio.positions
                    if (p.exchange, p.symbol) == (exchange, symbol)
                ),
                Decimal(0),
            )
            notional = {
                side: sum(
                    (
                        o.amount * o.price
                        for o in req.portfolio.open_orders
                        if (o.exchange, o.symbol, o.side) == (exchange, symbol, side)
                        and not o.reduce_only
                    ),
                    Decimal(0),
                )
                for side in OrderSide
            }
            if held > 0:
                total += notional[OrderSide.buy]
            elif held < 0:
                total += notional[OrderSide.sell]
            else:
                total += max(notional.values())
    return total


def broken_limits(req: PreTradeRequest, limits: Limits, ctx: CheckContext) -> list[str]:
    m = measure(req, limits, ctx)
    broken = [
        name
        for name, value in m.amounts.items()
        if value > getattr(limits, name)
        and not (name in EXPOSURE and m.smaller_worst)
        and not (name in REDUCE_ONLY_PASSES and req.reduce_only and m.smaller)
    ]
    if ctx.state is not TradingState.ACTIVE and not (req.reduce_only and m.smaller):
        broken.append("trading state")
    if req.reduce_only and not m.smaller:
        broken.append("reduce only")
    if m.price is None:
        return [*broken, "no price"]
    if req.portfolio.equity <= 0 and not m.smaller_worst:
        broken.append("no equity")
    return broken + _flow_limits(req, limits, ctx, m.price)


EXPOSURE = {"max_position_pct", "max_gross_exposure_pct", "max_heat_pct"}
REDUCE_ONLY_PASSES = {"daily_loss_limit", "max_drawdown_pct"}


def _flow_limits(
    req: PreTradeRequest, limits: Limits, ctx: CheckContext, price: Decimal
) -> list[str]:
    broken = []
    others = [o for o in ctx.recent_approved if o.client_order_id != req.client_order_id]
    if len({o.client_order_id for o in others if o.age_s <= 60}) + 1 > limits.max_orders_per_minute:
        broken.append("rate")
    same = (req.exchange, req.symbol, req.side.value, req.amount, req.price)
    if limits.duplicate_window_s and any(
        o.age_s <= limits.duplicate_window_s
        and (o.exchange, o.symbol, o.side, o.amount, o.price) == same
        for o in others
    ):
        broken.append("duplicate")
    ref, age = req.reference_price, req.reference_age_ms
    if ref is None or age is None or age > limits.max_reference_age_ms:
        broken.append("reference")
    if req.type is OrderType.limit and (
        req.price is None
        or (ref is not None and abs(req.price - ref) > limits.price_collar_pct * ref)
    ):
        broken.append("collar")
    if req.amount % req.market.amount_step:
        broken.append("amount step")
    priced = req.type is not OrderType.market and req.price is not None
    if priced and req.price is not None and req.price % req.market.price_step:
        broken.append("price step")
    if req.amount < req.market.min_amount or req.amount * price < req.market.min_notional:
        broken.append("minimums")
    return broken


# --- properties ----------------------------------------------------------------------------
CAPS = {"max_heat_pct": Decimal(1), "max_drawdown_pct": Decimal(1)}
CAPS |= {"max_position_pct": Decimal(100), "max_gross_exposure_pct": Decimal(100)}


@st.composite
def cases(draw: st.DrawFn) -> tuple[PreTradeRequest, Limits, CheckContext]:
    """A request, limits and context; some limits are then set within 10 % of the case's own
    numbers, so that orders right at and around each limit come up often."""
    req = draw(requests())
    ctx = draw(contexts(req))
    limits = draw(limits_)
    amounts = measure(req, limits, ctx).amounts
    near = draw(st.lists(st.sampled_from(sorted(amounts)), max_size=3, unique=True))
    update = {}
    for name in near:
        value = (amounts[name] * draw(dec("0.9", "1.1", 3))).quantize(Decimal("1e-9"))
        if value > 0:
            update[name] = min(value, CAPS.get(name, Decimal("1e12")))
    return req, Limits.model_validate({**limits.model_dump(), **update}), ctx


def test_no_approved_order_breaks_a_limit() -> None:
    seen = {"approved": 0, "rejected": 0}

    @settings(max_examples=1500, deadline=None, database=None)
    @given(cases())
    def check(case: tuple[PreTradeRequest, Limits, CheckContext]) -> None:
        req, limits, ctx = case
        results = rules.evaluate(req, limits, ctx)
        assert len({r.rule for r in results}) == len(results) == len(rules.RULES)
        assert all(r.detail for r in results)
        if all(r.passed for r in results):
            seen["approved"] += 1
            with localcontext(WIDE):
                assert broken_limits(req, limits, ctx) == [], [r.detail for r in results]
        else:
            seen["rejected"] += 1

    check()
    # The property means nothing unless both outcomes were exercised.
    assert seen["approved"] >= 20 and seen["rejected"] >= 20, seen


def test_every_broken_limit_is_rejected() -> None:
    """The converse on the same cases: when the oracle finds a broken limit, no approval."""

    @settings(max_examples=1500, deadline=None, database=None)
    @given(cases())
    def check(case: tuple[PreTradeRequest, Limits, CheckContext]) -> None:
        req, limits, ctx = case
        with localcontext(WIDE):
            broken = broken_limits(req, limits, ctx)
        if broken:
            assert not all(r.passed for r in rules.evaluate(req, limits, ctx)), broken

    check()


# --- bad numbers stop at the boundary ------------------------------------------------------
NON_POSITIVE = [float("nan"), "NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf"]
NON_POSITIVE += [float("inf"), float("-inf"), 0, 0.0, "0", "-0", "0.000"]
NEGATIVE = st.decimals(max_value=Decimal("-1e-6"), allow_nan=False, allow_infinity=False, places=6)
BAD = st.one_of(
    st.sampled_from(NON_POSITIVE),
    NEGATIVE.map(str),
    st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
)
# Amounts and prices that must be strictly positive, as paths into a pre-trade request.
POSITIVE_FIELDS = [
    ("amount",),
    ("price",),
    ("reference_price",),
    ("stop_loss",),
    ("market", "amount_step"),
    ("market", "price_step"),
    ("portfolio", "positions", 0, "stop_loss"),
    ("portfolio", "open_orders", 0, "amount"),
    ("portfolio", "open_orders", 0, "price"),
]


def valid_request() -> dict[str, Any]:
    return {
        "client_order_id": "boundary-test",
        "exchange": "sim",
        "symbol": "BTC/USDT",
        "side": "buy",
        "type": "limit",
        "amount": "0.1",
        "price": "50000",
        "stop_loss": "49000",
        "reference_price": "50000",
        "reference_age_ms": 10,
        "market": {"amount_step": "0.001", "price_step": "0.01"},
        "portfolio": {
            "equity": "100000",
            "cash": "100000",
            "positions": [
                {
                    "exchange": "sim",
                    "symbol": "ETH/USDT",
                    "amount": "1",
                    "entry_price": "3000",
                    "mark_price": "3000",
                    "stop_loss": "2900",
                }
            ],
            "open_orders": [
                {
                    "exchange": "sim",
                    "symbol": "BTC/USDT",
                    "side": "buy",
                    "amount": "0.05",
                    "price": "49000",
                }
            ],
        },
    }


def with_value(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    body = valid_request()
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


def test_the_valid_request_is_valid() -> None:
    PreTradeRequest.model_validate(valid_request())


@settings(max_examples=300, deadline=None, database=None)
@given(path=st.sampled_from(POSITIVE_FIELDS), value=BAD)
def test_nan_infinite_zero_or_negative_numbers_never_validate(
    path: tuple[Any, ...], value: Any
) -> None:
    with pytest.raises(ValidationError) as caught:
        PreTradeRequest.model_validate(with_value(path, value))
    assert [e["loc"] for e in caught.value.errors()] == [path]


@settings(max_examples=60, deadline=None, database=None)
@given(path=st.sampled_from(POSITIVE_FIELDS), value=BAD)
def test_posting_them_is_422_naming_the_field(
    risk: Risk, path: tuple[Any, ...], value: Any
) -> None:
    # json.dumps writes NaN and Infinity as bare literals, which the server's parser accepts.
    body = json.dumps(with_value(path, value))
    headers = {"Content-Type": "application/json"}
    response = risk.request("POST", "/checks/pre-trade", content=body, headers=headers)
    assert response.status_code == 422, response.text
    field = ".".join(str(part) for part in ("body", *path))
    assert [e["field"] for e in response.json()["errors"]] == [field]


# --- batches -------------------------------------------------------------------------------
@st.composite
def batches(draw: st.DrawFn) -> tuple[list[PreTradeRequest], Limits, CheckContext]:
    """Orders judged in turn against the first one's account, mostly in its market."""
    first = draw(requests())
    orders = [first]
    for other in draw(st.lists(requests(), min_size=1, max_size=3)):
        market = draw(mostly(st.just(True), st.just(False)))
        where = {"exchange": first.exchange, "symbol": first.symbol} if market else {}
        orders.append(other.model_copy(update={**where, "portfolio": first.portfolio}))
    return orders, draw(limits_), draw(contexts(first))


def _as_resting(req: PreTradeRequest) -> OpenOrder:
    """An approved order as the oracle counts it, built here: at its own price, or the
    reference price for a market order."""
    price = req.price if req.type is not OrderType.market and req.price else req.reference_price
    assert price is not None  # approved orders have a price (the collar)
    return OpenOrder(
        exchange=req.exchange,
        symbol=req.symbol,
        side=req.side,
        amount=req.amount,
        price=price,
        reduce_only=req.reduce_only,
    )


def test_orders_approved_in_turn_break_no_limit_together() -> None:
    """Each order of a batch is judged against the account plus the orders approved
    before it (`book.with_resting`, as risk's batch check does); whenever one is approved,
    the oracle, on the account with every earlier approval resting, finds nothing broken."""
    seen = {"approved after another": 0, "rejected after another": 0}

    @settings(max_examples=600, deadline=None, database=None)
    @given(batches())
    def check(case: tuple[list[PreTradeRequest], Limits, CheckContext]) -> None:
        orders, limits, ctx = case
        account = orders[0].portfolio
        running = account
        before: list[OpenOrder] = []
        for order in orders:
            results = rules.evaluate(book.request(order, running), limits, ctx)
            if not all(r.passed for r in results):
                seen["rejected after another"] += bool(before)
                continue
            seen["approved after another"] += bool(before)
            resting = account.model_copy(update={"open_orders": [*account.open_orders, *before]})
            with localcontext(WIDE):
                found = broken_limits(order.model_copy(update={"portfolio": resting}), limits, ctx)
            assert found == [], [r.detail for r in results]
            before.append(_as_resting(order))
            running = book.with_resting(running, book.request(order, running))

    check()
    assert seen["approved after another"] >= 20 and seen["rejected after another"] >= 20, seen
