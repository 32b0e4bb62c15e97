"""Fixtures for the signal agent's tests: a client for the real service, and stored
models made the way the agent makes them. Bars come from the backtest agent's
`GET /data/ohlcv`: the end-to-end tests import the sim's own candles first."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, text

from agents.signal import artifacts, training
from common.models.signal import SignalModel
from common.quant.features import FEATURE_NAMES, feature_matrix, labels, usable_rows
from tests.agents.signal.bars import sim_bars
from tests.conftest import Stack


class Signal:
    """The signal service over HTTP, plus a look into its tables."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.url = stack.url("signal")

    def request(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {**self.stack.auth(token), **kwargs.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, json=body, **kwargs)

    def ok(self, response: httpx.Response, status: int = 200) -> Any:
        assert response.status_code == status, response.text
        return response.json()

    def execute(self, sql: Any, params: Any = None) -> list[dict[str, Any]]:
        engine = self.stack.engine()
        try:
            with engine.begin() as conn:
                result = conn.execute(sql, params) if params is not None else conn.execute(sql)
                return [dict(row._mapping) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def create_model(
        self, symbol: str, *, timeframe: str = "1h", version: int = 1, tamper: bool = False
    ) -> int:
        """A model row as `POST /models/train` stores one: a fitted estimator, its bytes and
        their digest (with one byte flipped after hashing when `tamper`)."""
        bars = sim_bars("BTC/USDT", timeframe, 600)
        X, y = feature_matrix(bars), labels(bars, 5)
        rows = usable_rows(X, y)
        params = training.validate_params("logistic_regression", None)
        model = training.make_estimator("logistic_regression", params).fit(X[rows], y[rows])
        blob, digest = artifacts.dump(model)
        if tamper:
            flipped = bytearray(blob)
            flipped[len(flipped) // 2] ^= 0x01
            blob = bytes(flipped)
        values = {
            "created_by": "test",
            "exchange": "sim",
            "symbol": symbol,
            "timeframe": timeframe,
            "version": version,
            "kind": "logistic_regression",
            "horizon": 5,
            "params": params,
            "features": list(FEATURE_NAMES),
            "metrics": {
                "out_of_sample": {"accuracy": 0.51, "auc": 0.5, "samples": 100},
                "backtest": {"total_return": -0.01, "bars": 100},
            },
            "bars": len(bars),
            "train_start_ts": int(bars.ts[rows[0]]),
            "train_end_ts": int(bars.ts[rows[-1]]),
            "model_bytes": blob,
            "digest": digest,
        }
        [row] = self.execute(insert(SignalModel).values(**values).returning(SignalModel.id))
        return int(row["id"])

    def active_ids(self, symbol: str) -> list[int]:
        rows = self.execute(
            text("SELECT id FROM signal_models WHERE symbol = :s AND active ORDER BY id"),
            {"s": symbol},
        )
        return [int(r["id"]) for r in rows]


def fresh_symbol() -> str:
    """A market of the test's own, so tests sharing the fleet never see each other's rows."""
    return f"T{uuid.uuid4().hex[:8].upper()}/USDT"


@pytest.fixture(scope="session")
def signal(stack: Stack) -> Signal:
    return Signal(stack)
