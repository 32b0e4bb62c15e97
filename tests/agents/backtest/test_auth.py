"""Every market-data and backtest route needs a token."""

from __future__ import annotations

import httpx
import pytest

from tests.agents.backtest.conftest import Backtest

ROUTES = [
    ("POST", "/data/fetch"),
    ("GET", "/data/jobs"),
    ("GET", "/data/jobs/abc"),
    ("POST", "/data/jobs/abc/cancel"),
    ("POST", "/data/import"),
    ("GET", "/data/symbols/sim"),
    ("GET", "/data/ohlcv/sim/BTC-USDT"),
    ("GET", "/data/coverage"),
    ("POST", "/backtest/run"),
    ("GET", "/backtest/list"),
    ("GET", "/backtest/abc"),
    ("GET", "/backtest/abc/trades"),
    ("GET", "/backtest/abc/equity"),
    ("POST", "/backtest/abc/cancel"),
    ("DELETE", "/backtest/abc"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_no_token_no_data(backtest: Backtest, method: str, path: str) -> None:
    response = httpx.request(method, backtest.url + path, timeout=10)
    assert response.status_code == 401, response.text
    wrong = httpx.request(method, backtest.url + path, headers={"Authorization": "Bearer x"})
    assert wrong.status_code == 401


def test_execution_candles_need_a_token(backtest: Backtest) -> None:
    url = backtest.stack.url("execution") + "/ohlcv/sim/BTC-USDT"
    assert httpx.get(url, timeout=10).status_code == 401
