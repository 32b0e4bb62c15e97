"""Placing orders over HTTP in the fleet tests (their fixtures are in conftest.py)."""

from __future__ import annotations

import uuid

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
