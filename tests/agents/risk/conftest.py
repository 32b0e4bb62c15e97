"""Fixtures for the risk agent's tests: a client for the real service and a known baseline.

Tests share one fleet, so `baseline` puts risk back to a known place before each test:
default limits (but a rate limit high enough for a whole test session and the
duplicate check off), the equity
peak at 100000 (the equity of `Risk.order()`), and trading ACTIVE before and after.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from common.auth import api_token_path
from common.contracts import TRADING_STATE_CHANNEL
from common.events import CHANNEL_PREFIX, EventBus
from tests.client import AgentClient
from tests.conftest import Stack

EQUITY = Decimal(100000)
BASELINE_LIMITS: dict[str, Any] = {
    "max_order_notional": "10000",
    "max_position_pct": "0.25",
    "max_gross_exposure_pct": "1.0",
    "max_heat_pct": "0.06",
    "default_stop_pct": "0.05",
    "daily_loss_limit": "500",
    "max_drawdown_pct": "0.2",
    "max_orders_per_minute": 100_000,
    "duplicate_window_s": 0,  # on only where tested: fixed amounts recur across tests
    "price_collar_pct": "0.05",
    "max_reference_age_ms": 5000,
}
_amounts = itertools.count(1)


class Risk(AgentClient):
    """The risk service over HTTP, plus a look into its tables."""

    service = "risk"

    def __init__(self, stack: Stack) -> None:
        super().__init__(stack)
        self._service_token: str | None = None

    @property
    def service_token(self) -> str:
        """Execution's token: a service, not the operator."""
        if self._service_token is None:
            secret = self.stack.admin_vault().secrets.kv.v2.read_secret_version(
                path=api_token_path("execution"),
                mount_point="secret",
                raise_on_deleted_version=True,
            )
            self._service_token = str(secret["data"]["data"]["token"])
        return self._service_token

    # --- the trading state ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        body: dict[str, Any] = self.ok(self.get("/state"))
        return body

    def halt(self, reason: str = "test halt", flatten: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = self.ok(self.post("/halt", {"reason": reason, "flatten": flatten}))
        return body

    def resume(self, reason: str = "test resume") -> dict[str, Any]:
        body: dict[str, Any] = self.ok(self.post("/resume", {"reason": reason}))
        return body

    # --- orders ---------------------------------------------------------------------------
    def order(self, **overrides: Any) -> dict[str, Any]:
        """A limit buy that passes every rule; each call has its own id and amount."""
        amount = Decimal("0.05") + Decimal(next(_amounts) % 1000) * Decimal("0.00001")
        order: dict[str, Any] = {
            "client_order_id": uuid.uuid4().hex,
            "exchange": "sim",
            "symbol": "BTC/USDT",
            "side": "buy",
            "type": "limit",
            "amount": str(amount),
            "price": "50000",
            "stop_loss": "49000",
            "reference_price": "50010",
            "reference_age_ms": 100,
            "market": {
                "amount_step": "0.00001",
                "price_step": "0.01",
                "min_amount": "0.001",
                "min_notional": "10",
            },
            "portfolio": {"equity": str(EQUITY), "cash": str(EQUITY), "positions": []},
        }
        for key, value in overrides.items():
            if key in ("market", "portfolio"):
                order[key] = {**order[key], **value}
            else:
                order[key] = value
        return order

    def check(self, order: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = self.ok(self.post("/checks/pre-trade", order, **kwargs))
        return body

    # --- tables ---------------------------------------------------------------------------
    def audited(self, mark: int, kind: str, count: int = 1) -> list[dict[str, Any]]:
        """Risk's events of `kind` in compliance's audit log after row `mark`, once there
        are `count` of them (they travel through risk's outbox, a moment after the change)."""

        def arrived() -> list[dict[str, Any]] | None:
            rows = self.rows(
                "SELECT * FROM audit_events WHERE id > :mark AND kind = :kind"
                " AND actor = 'risk' ORDER BY id",
                mark=mark,
                kind=kind,
            )
            return rows if len(rows) >= count else None

        found: list[dict[str, Any]] = self.stack.wait_for(
            arrived, timeout=30, what=f"{count} {kind} event(s) from risk at compliance"
        )
        return found

    def broadcast_during(self, action: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
        """Run `action` while subscribed to the trading-state channel: (its result, the
        first trading-state event published after it started)."""

        async def listen() -> tuple[Any, dict[str, Any]]:
            bus = EventBus(self.stack.settings.resolved_redis_url())
            pubsub = bus.redis.pubsub()
            await pubsub.subscribe(CHANNEL_PREFIX + TRADING_STATE_CHANNEL)
            try:
                confirmed = await pubsub.get_message(timeout=5)
                assert confirmed and confirmed["type"] == "subscribe"
                result = await asyncio.to_thread(action)
                message = None
                while message is None or message["type"] != "message":
                    message = await pubsub.get_message(timeout=10)
                    assert message is not None, "no trading-state event within 10 s"
                return result, json.loads(message["data"])
            finally:
                await pubsub.aclose()
                await bus.close()

        return asyncio.run(listen())

    def audit_mark(self) -> int:
        """The newest row of compliance's audit log once risk's queue has drained, so that
        what comes after it is new (not an earlier change's event arriving late)."""

        def drained() -> bool:
            [row] = self.rows(
                "SELECT count(*) AS n FROM event_outbox WHERE service = 'risk'"
                " AND next_attempt_at <= now()"
            )
            return int(row["n"]) == 0

        self.stack.wait_for(drained, timeout=30, what="risk's audit queue to drain")
        return int(self.rows("SELECT coalesce(max(id), 0) AS id FROM audit_events")[0]["id"])


def failed(decision: dict[str, Any]) -> set[str]:
    return {c["rule"] for c in decision["checks"] if not c["passed"]}


def detail(decision: dict[str, Any], rule: str) -> str:
    [found] = [c["detail"] for c in decision["checks"] if c["rule"] == rule]
    return str(found)


@pytest.fixture(scope="session")
def risk(stack: Stack) -> Risk:
    return Risk(stack)


@pytest.fixture
def baseline(risk: Risk) -> Iterator[Risk]:
    """Known limits, peak and state before the test; trading ACTIVE again after it."""
    risk.ok(risk.put("/limits", BASELINE_LIMITS))
    risk.ok(risk.post("/drawdown/reset", {"reason": "test baseline", "equity": str(EQUITY)}))
    if risk.state()["state"] != "ACTIVE":
        risk.resume("test baseline")
    try:
        yield risk
    finally:
        if risk.state()["state"] != "ACTIVE":
            risk.resume("test cleanup")
