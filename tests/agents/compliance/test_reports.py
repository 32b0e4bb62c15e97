"""GET /reports/trades: fills from the audit log with fees and FIFO realized PnL.

The numbers are worked out by hand. Lots per exchange and symbol, oldest first;
quote-currency fees go into PnL in proportion to the amount matched:

  buy  1   @ 100, fee 0.10 USDT   -> lot A: 1 @ 100, fee 0.10
  buy  1   @ 120, fee 0.12 USDT   -> lot B: 1 @ 120, fee 0.12
  sell 1.5 @ 130, fee 0.195 USDT  -> closes A: (130-100)*1   - 0.10 - 0.195*1/1.5   = 29.77
                                     closes half of B: (130-120)*0.5 - 0.06 - 0.065 = 4.875
                                     realized 34.645
  sell 0.5 @ 110, fee 0.01 BNB    -> closes rest of B: (110-120)*0.5 - 0.06 = -5.06
                                     (the BNB fee is listed, not in PnL)
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

import pytest

from agents.compliance.reports import CSV_COLUMNS
from tests.agents.compliance.conftest import call, service_token, unique
from tests.conftest import Stack

D = Decimal


@pytest.fixture(scope="module")
def fills(stack: Stack) -> dict[str, Any]:
    """Post the four fills (one of them twice, as a retry would) on an exchange of their own."""
    exchange = unique("x")
    token = service_token(stack, "execution")
    specs = [
        ("2021-03-01T10:00:00Z", "buy", "1", "100", "0.1", "USDT"),
        ("2021-03-01T11:00:00+00:00", "buy", "1", "120", "0.12", "USDT"),
        ("2021-03-02T09:00:00Z", "sell", "1.5", "130", "0.195", "USDT"),
        ("2021-03-02T10:00:00Z", "sell", "0.5", "110", "0.01", "BNB"),
    ]
    first_ids: dict[int, int] = {}
    # Posted newest first (the report orders by fill time), the oldest one twice.
    for n, (at, side, amount, price, fee, currency) in reversed(list(enumerate(specs))):
        fill = {
            "fill_id": f"{exchange}-f{n}",
            "client_order_id": f"=HYPERLINK-{n}" if n == 3 else f"coid-{n}",
            "exchange": exchange,
            "symbol": "BTC/USDT",
            "side": side,
            "amount": amount,
            "price": price,
            "fee": fee,
            "fee_currency": currency,
            "filled_at": at,
        }
        body = {"kind": "order.filled", "actor": "execution", "subject": fill["client_order_id"]}
        for _ in range(2 if n == 0 else 1):
            response = call(
                stack, "POST", "/audit/events", json={**body, "data": fill}, token=token
            )
            assert response.status_code == 201, response.text
            first_ids.setdefault(n, response.json()["id"])
    return {"exchange": exchange, "first_ids": first_ids}


def report(stack: Stack, **params: str) -> Any:
    response = call(stack, "GET", "/reports/trades", params=params)
    assert response.status_code == 200, response.text
    return response


def ours(lines: list[dict[str, Any]], exchange: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["exchange"] == exchange]


def test_fifo_pnl_with_fees_as_json(stack: Stack, fills: dict[str, Any]) -> None:
    body = report(stack, **{"from": "2021-03-01", "to": "2021-03-02"}).json()
    assert body["from"].startswith("2021-03-01T00:00:00")
    assert body["to"].startswith("2021-03-03T00:00:00")  # a date `to` covers that whole day
    lines = ours(body["fills"], fills["exchange"])
    assert [(x["side"], D(x["amount"]), D(x["realized_pnl"])) for x in lines] == [
        ("buy", D("1"), D("0")),
        ("buy", D("1"), D("0")),
        ("sell", D("1.5"), D("34.645")),
        ("sell", D("0.5"), D("-5.06")),
    ]
    assert [D(x["closed_amount"]) for x in lines] == [D(0), D(0), D("1.5"), D("0.5")]
    assert D(lines[2]["notional"]) == D("195")
    assert [x["audit_id"] for x in lines] == [fills["first_ids"][n] for n in range(4)]
    [totals] = ours(body["totals"], fills["exchange"])
    assert totals["fills"] == 4
    assert D(totals["bought"]) == D(2) and D(totals["sold"]) == D(2)
    assert D(totals["fees_in_quote"]) == D("0.415")
    assert D(totals["realized_pnl"]) == D("29.585")
    assert {"currency": "BNB", "amount": "0.01"} in body["other_fees"]


def test_lots_opened_before_the_period_still_count(stack: Stack, fills: dict[str, Any]) -> None:
    body = report(stack, **{"from": "2021-03-02T00:00:00Z", "to": "2021-03-02T09:30:00Z"}).json()
    [sell] = ours(body["fills"], fills["exchange"])
    assert sell["side"] == "sell" and D(sell["realized_pnl"]) == D("34.645")


def test_fifo_pnl_as_csv_for_an_accountant(stack: Stack, fills: dict[str, Any]) -> None:
    response = report(stack, **{"from": "2021-03-01", "to": "2021-03-02", "format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    reader = csv.reader(io.StringIO(response.text))
    header = next(reader)
    assert tuple(header) == CSV_COLUMNS
    rows = [dict(zip(header, row, strict=True)) for row in reader]
    lines = ours(rows, fills["exchange"])
    assert [(x["side"], x["amount"], x["price"], x["fee"], x["realized_pnl"]) for x in lines] == [
        ("buy", "1", "100", "0.1", "0"),
        ("buy", "1", "120", "0.12", "0"),
        ("sell", "1.5", "130", "0.195", "34.645"),
        ("sell", "0.5", "110", "0.01", "-5.06"),
    ]
    assert lines[3]["fee_currency"] == "BNB" and lines[3]["quote_currency"] == "USDT"
    # A cell a spreadsheet would run as a formula is defused.
    assert lines[3]["client_order_id"] == "'=HYPERLINK-3"
    assert lines[0]["filled_at"] == "2021-03-01T10:00:00+00:00"


def test_a_period_without_fills_is_an_empty_report(stack: Stack) -> None:
    body = report(stack, **{"from": "1999-01-01", "to": "1999-01-31"}).json()
    assert body["fills"] == [] and body["totals"] == []
    csv_text = report(stack, **{"from": "1999-01-01", "to": "1999-01-31", "format": "csv"}).text
    assert csv_text.splitlines() == [",".join(CSV_COLUMNS)]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2021-13-01", "to": "2021-12-31"}, "query.from"),
        ({"from": "2021-01-01", "to": "next tuesday"}, "query.to"),
        ({"from": "2021-03-02", "to": "2021-03-01"}, "query.from"),
        ({"from": "2021-03-01T10:00:00Z", "to": "2021-03-01T09:00:00Z"}, "query.from"),
        ({"to": "2021-03-01"}, "query.from"),
        ({"from": "2021-03-01", "to": "2021-03-02", "format": "xlsx"}, "query.format"),
    ],
)
def test_bad_report_periods_are_422_naming_the_field(
    stack: Stack, params: dict[str, str], field: str
) -> None:
    response = call(stack, "GET", "/reports/trades", params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in response.json()["errors"]]
