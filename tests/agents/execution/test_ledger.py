from decimal import Decimal as D

from agents.execution.ledger import PositionState, apply_fill, unrealized_pnl

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
