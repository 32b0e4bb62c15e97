"""Bad numbers stop at execution's boundary: NaN, infinities, zero and negative amounts,
prices and protective levels are refused, naming the field, before anything is stored
(as risk's own request is: tests/agents/risk/test_rules_properties.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import Engine, text

from agents.execution.schemas import OrderRequest
from tests.agents.execution.fleet import new_cid
from tests.agents.risk.test_rules_properties import BAD
from tests.conftest import Stack

# A valid order for each field that must be strictly positive.
LIMIT = {
    "symbol": "BTC/USDT",
    "side": "buy",
    "type": "limit",
    "amount": "0.01",
    "price": "100",
    "stop_loss": "90",
    "take_profit": "120",
    "trailing_stop_pct": "0.05",
}
VALID = {
    "amount": LIMIT,
    "price": LIMIT,
    "stop_loss": LIMIT,
    "take_profit": LIMIT,
    "trailing_stop_pct": LIMIT,
    "quote_amount": {"symbol": "BTC/USDT", "side": "buy", "quote_amount": "50"},
    "stop_price": {
        "symbol": "BTC/USDT",
        "side": "sell",
        "type": "stop_loss",
        "amount": "0.01",
        "stop_price": "90",
    },
}
TOO_BIG = st.one_of(
    st.sampled_from(["1.0001", 2, "100"]), st.floats(min_value=1.0001, max_value=1e6)
)


def _with(field: str, value: Any) -> dict[str, Any]:
    return {**VALID[field], field: value}


@pytest.mark.parametrize("field", VALID)
def test_the_valid_orders_are_valid(field: str) -> None:
    OrderRequest.model_validate(VALID[field])


@settings(max_examples=300, deadline=None, database=None)
@given(field=st.sampled_from(list(VALID)), value=BAD)
def test_nan_infinite_zero_or_negative_numbers_never_validate(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        OrderRequest.model_validate(_with(field, value))
    assert [e["loc"] for e in caught.value.errors()] == [(field,)]


@settings(max_examples=50, deadline=None, database=None)
@given(value=TOO_BIG)
def test_a_trailing_stop_is_a_fraction_of_the_price(value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        OrderRequest.model_validate(_with("trailing_stop_pct", value))
    assert [e["loc"] for e in caught.value.errors()] == [("trailing_stop_pct",)]


@pytest.fixture(scope="module")
def orders_db(stack: Stack) -> Iterator[Engine]:
    engine = stack.engine()
    yield engine
    engine.dispose()


@settings(max_examples=40, deadline=None, database=None)
@given(field=st.sampled_from(list(VALID)), value=BAD)
def test_posting_them_is_422_naming_the_field_and_stores_nothing(
    stack: Stack, orders_db: Engine, field: str, value: Any
) -> None:
    cid = new_cid("bad")
    # json.dumps writes NaN and Infinity as bare literals, which the server's parser accepts.
    body = json.dumps({**_with(field, value), "client_order_id": cid})
    headers = {**stack.auth(), "Content-Type": "application/json"}
    response = httpx.post(stack.url("execution") + "/orders", content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [f"body.{field}"]
    with orders_db.connect() as conn:
        stored = conn.execute(
            text("SELECT count(*) FROM orders WHERE client_order_id = :c"), {"c": cid}
        ).scalar_one()
    assert stored == 0
