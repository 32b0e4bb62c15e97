"""Placing orders over HTTP in the fleet tests (their fixtures are in conftest.py)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import httpx

from tests.conftest import Stack


def new_cid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def order(stack: Stack, **body: object) -> httpx.Response:
    body.setdefault("symbol", "BTC/USDT")
    body.setdefault("side", "buy")
    body.setdefault("type", "market")
    return stack.post("execution", "/orders", body)


def close_position(stack: Stack, symbol: str, exchange: str = "sim") -> httpx.Response:
    return stack.post("execution", f"/positions/{exchange}/close", {"symbol": symbol})


def balance(stack: Stack, currency: str, exchange: str = "sim") -> dict[str, Decimal]:
    """The account's free, used and total `currency`, as the exchange reports them (all
    zero when it holds none)."""
    balances = stack.get("execution", f"/balance/{exchange}").json()["balances"]
    found = balances.get(currency, {"free": 0, "used": 0, "total": 0})
    return {k: Decimal(str(found[k])) for k in ("free", "used", "total")}


def positions(stack: Stack, exchange: str = "sim") -> dict[str, dict[str, Any]]:
    """Our positions on `exchange`, by symbol, as execution's ledger has them."""
    response = stack.get("execution", f"/positions/{exchange}")
    assert response.status_code == 200, response.text
    return {p["symbol"]: p for p in response.json()}
