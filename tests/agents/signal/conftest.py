"""Fixtures for the signal agent's tests: a client for the real service, and stored
models made the way the agent makes them. Bars come from the backtest agent's
`GET /data/ohlcv`: the end-to-end tests import the sim's own candles first."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import insert, text

from agents.signal import artifacts, training
from common.models.signal import SignalModel
from common.quant.features import FEATURE_NAMES, feature_matrix, labels, usable_rows
from tests.agents.signal.bars import sim_bars
from tests.client import AgentClient
from tests.conftest import Stack


class Signal(AgentClient):
    """The signal service over HTTP, plus a look into its tables."""

    service = "signal"
    timeout = 60.0

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
