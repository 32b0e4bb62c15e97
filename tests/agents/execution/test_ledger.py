from decimal import Decimal
from decimal import Decimal as D

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.execution.exchange.base import ExchangeOrder, Trade
from agents.execution.ledger import PositionState, apply_fill, coins_moved, unrealized_pnl
from agents.execution.service import _Ledger, _moves_position, _record
from common.contracts import OrderSide, OrderType
from common.models import Order, Position

FLAT = PositionState(D(0), D(0), D(0))


def test_buys_average_the_entry_and_pay_fees() -> None:
    p, r1 = apply_fill(FLAT, "buy", D("1"), D("100"), D("0.1"))
    p, r2 = apply_fill(p, "buy", D("3"), D("200"), D("0.6"))
    assert p.amount == D(4) and p.entry_price == D("175")
    assert (r1, r2) == (D("-0.1"), D("-0.6"))
    assert p.realized_pnl == D("-0.7")


def test_partial_close_realises_against_the_average_entry() -> None:
    p, _ = apply_fill(FLAT, "buy", D("2"), D("100"), D("0"))
    p, realized = apply_fill(p, "sell", D("0.5"), D("120"), D("0.06"))
    assert realized == D("10") - D("0.06")
    assert p.amount == D("1.5") and p.entry_price == D("100")
    assert unrealized_pnl(p, D("110")) == D("15")


def test_overshooting_sell_flips_to_short_at_the_fill_price() -> None:
    p, _ = apply_fill(FLAT, "buy", D("1"), D("100"), D("0"))
    p, realized = apply_fill(p, "sell", D("3"), D("90"), D("0"))
    assert realized == D("-10")
    assert p.amount == D("-2") and p.entry_price == D("90")
    p, realized = apply_fill(p, "buy", D("2"), D("80"), D("0"))
    assert realized == D("20") and p.amount == D(0) and p.entry_price == D(0)


def test_every_status_an_exchange_order_maps_to_is_final_or_not_final() -> None:
    """The reconciler finds non-final orders by listing their statuses (so the index
    serves it): a status outside both lists would never be reconciled."""
    from typing import get_args

    from agents.execution import repository as repo
    from agents.execution.exchange.base import ExchangeOrder, OrderStatus
    from agents.execution.service import status_of

    assert repo.FINAL.isdisjoint(repo.NOT_FINAL)
    for status in get_args(OrderStatus):
        for filled in (D(0), D(1)):
            order = ExchangeOrder(
                id="1",
                client_order_id="c",
                symbol="BTC/USDT",
                side="buy",
                type="limit",
                amount=D(2),
                price=D(1),
                stop_price=None,
                status=status,
                filled=filled,
                remaining=D(2) - filled,
                average=None,
                fee=D(0),
                fee_currency=None,
                timestamp=0,
            )
            assert status_of(order) in repo.FINAL | repo.NOT_FINAL, status


# --- fees taken in the coin --------------------------------------------------------------
def test_a_fee_in_the_coin_leaves_fewer_coins_and_costs_its_value() -> None:
    """Binance takes a buy's fee in the coin bought (unless paid in BNB): the position is
    what the account holds, and the fee is a cost at the fill's price."""
    moved, fee = coins_moved("buy", D("1"), D("100"), D("0.001"), "BTC", "BTC", "USDT")
    assert (moved, fee) == (D("0.999"), D("0.1"))
    p, r1 = apply_fill(FLAT, "buy", moved, D("100"), fee)
    assert p.amount == D("0.999") and p.entry_price == D("100") and r1 == D("-0.1")
    moved, fee = coins_moved("sell", D("0.999"), D("110"), D("0.10989"), "USDT", "BTC", "USDT")
    assert (moved, fee) == (D("0.999"), D("0.10989"))
    p, r2 = apply_fill(p, "sell", moved, D("110"), fee)
    assert p.amount == 0
    # Paid 100, received 0.999 * 110 - 0.10989: the realized PnL is exactly that.
    assert r1 + r2 == D("0.999") * D("110") - D("0.10989") - D("100")


def test_a_sell_fee_in_the_coin_gives_more_coins_away() -> None:
    assert coins_moved("sell", D("2"), D("50"), D("0.002"), "ETH", "ETH", "USDT") == (
        D("2.002"),
        D("0.100"),
    )


def test_a_fee_in_another_currency_is_not_in_this_markets_ledger() -> None:
    assert coins_moved("buy", D("1"), D("100"), D("0.0002"), "BNB", "BTC", "USDT") == (
        D("1"),
        D("0"),
    )


_amounts = st.decimals(min_value="0.001", max_value="5", places=3)
_prices = st.decimals(min_value="1", max_value="1000", places=2)
_trades = st.lists(
    st.tuples(
        st.sampled_from(["buy", "sell"]),
        _amounts,
        _prices,
        st.decimals(min_value="0", max_value="0.002", places=4),  # fee rate
        st.sampled_from(["BTC", "USDT"]),
    ),
    min_size=1,
    max_size=12,
)


@given(trades=_trades, mark=_prices)
@settings(max_examples=300, deadline=None)
def test_the_ledger_is_what_the_account_holds_and_what_it_paid(
    trades: list[tuple[str, Decimal, Decimal, Decimal, str]], mark: Decimal
) -> None:
    """Whatever the fills and whichever currency their fees were taken in, the position is
    the coins the account gained and lost, and realized plus unrealized PnL is the cash
    paid and received plus those coins at the mark."""
    position, realized = FLAT, D(0)
    cash, coins = D(0), D(0)
    for side, amount, price, rate, fee_currency in trades:
        fee = (amount * rate if fee_currency == "BTC" else amount * price * rate).quantize(
            D("0.00000001")
        )
        buy = side == "buy"
        cash += -amount * price if buy else amount * price
        coins += amount if buy else -amount
        if fee_currency == "BTC":
            coins -= fee
        else:
            cash -= fee
        moved, fee_quote = coins_moved(side, amount, price, fee, fee_currency, "BTC", "USDT")
        position, this = apply_fill(position, side, moved, price, fee_quote)
        realized += this
    assert position.amount == coins
    assert position.realized_pnl == realized
    total = realized + unrealized_pnl(position, mark)
    assert abs(total - (cash + coins * mark)) < D("1e-12")


def _answer(filled: str, status: str, trades: list[tuple[str, str]]) -> ExchangeOrder:
    """The sim's answer to order `x-1` (buy 0.3 BTC) with these (trade id, amount) trades."""
    fills = [
        Trade(
            tid, "ex-1", "x-1", "BTC/USDT", OrderSide.buy, D(a), D(100), D("0.1"), "USDT", 0, True
        )
        for tid, a in trades
    ]
    return ExchangeOrder(
        id="ex-1",
        client_order_id="x-1",
        symbol="BTC/USDT",
        side=OrderSide.buy,
        type=OrderType.market,
        amount=D("0.3"),
        price=None,
        stop_price=None,
        status=status,  # type: ignore[arg-type]
        filled=D(filled),
        remaining=D("0.3") - D(filled),
        average=D(100),
        fee=D("0.1") * len(trades),
        fee_currency="USDT",
        timestamp=0,
        trades=fills,
    )


def test_a_batch_records_each_trade_once_however_often_it_is_reported() -> None:
    """Answers recorded together (service.record_all) are applied in Python before
    anything is written: a trade the ledger holds, or one an earlier answer of the same
    batch carried, moves nothing again, and the later, fuller answer sets the order."""
    order = Order(
        id=1, client_order_id="x-1", exchange="sim", symbol="BTC/USDT", side="buy",
        type="market", amount=D("0.3"), status="pending", filled=D(0), fee=D(0),
        role="entry", stop_loss=D(90),
    )  # fmt: skip
    pos = Position(
        exchange="sim", symbol="BTC/USDT", amount=D(0), entry_price=D(0), realized_pnl=D(0)
    )
    book = _Ledger(recorded={("sim", "t0")})  # recorded in an earlier transaction
    positions = {("sim", "BTC/USDT"): pos}
    partial = _answer("0.2", "open", [("t0", "0.1"), ("t1", "0.1")])
    full = _answer("0.3", "closed", [("t0", "0.1"), ("t1", "0.1"), ("t2", "0.1")])
    assert _moves_position(order, partial) and _moves_position(order, full)
    _record(order, partial, positions, book)
    _record(order, full, positions, book)
    _record(order, partial, positions, book)  # a late, older answer changes nothing
    assert [f["trade_id"] for f in book.fills] == ["t1", "t2"]
    assert pos.amount == D("0.2")  # t0 moved it in its own transaction, not here
    assert pos.realized_pnl == D("-0.2")  # the two new trades' fees
    assert (order.status, order.filled) == ("filled", D("0.3"))
    assert pos.stop_loss == D(90)  # the entry's stop attached once it completed
    kinds = [e.kind for e in book.events]
    assert kinds == ["order.filled", "order.partially_filled", "order.filled", "order.completed"]
