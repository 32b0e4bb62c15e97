"""Fetch jobs against the sim through execution: idempotent, resumable, honest about gaps."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.agents.backtest.conftest import Backtest, field_errors

HOUR = 3_600_000
MINUTE = 60_000


def test_fetching_twice_stores_the_same_rows_once(backtest: Backtest) -> None:
    body = {"symbol": "SOL/USDT", "timeframe": "1h", "since": "2024-02-01", "until": "2024-03-01"}
    first = backtest.wait(backtest.fetch(**body)["id"])
    assert first["status"] == "done", first
    assert first["total"] == first["done"] == first["fetched"] == 29 * 24
    assert first["rows_written"] == 29 * 24 and first["gaps"] == []
    stored = backtest.candles("sim", "SOL/USDT", "1h")
    assert len(stored) == 29 * 24

    again = backtest.fetch(**{**body, "since": 1706745600000})  # the same start, in epoch ms
    # Everything but the last stored candle (which may have been forming) is skipped.
    assert again["done"] == again["total"] - 1
    again = backtest.wait(again["id"])
    assert again["status"] == "done" and again["done"] == again["total"]
    assert again["fetched"] == 1 and again["rows_written"] == 0
    assert backtest.candles("sim", "SOL/USDT", "1h") == stored


def test_gaps_are_reported(backtest: Backtest) -> None:
    # The sim's history starts at 2024-01-01T00:00Z: the day before has no candles.
    # 2h candles: no other test stores them (they would make this fetch skip).
    job = backtest.fetch(
        symbol="ETH-USDT", timeframe="2h", since="2023-12-31T00:00:00Z", until="2024-01-01T06:00Z"
    )
    job = backtest.wait(job["id"])
    assert job["status"] == "done", job
    assert job["total"] == job["done"] == 15 and job["fetched"] == 3
    assert job["gaps"] == [["2023-12-31T00:00:00Z", "2023-12-31T22:00:00Z"]]
    assert len(backtest.candles("sim", "ETH/USDT", "2h")) == 3


def test_the_still_forming_candle_is_updated_on_the_next_fetch(backtest: Backtest) -> None:
    now = int(time.time() * 1000)
    body = {"symbol": "XRP/USDT", "timeframe": "1m", "since": now - 10 * MINUTE, "until": now}
    first = backtest.wait(backtest.fetch(**body)["id"])
    assert first["status"] == "done", first
    forming = backtest.candles("sim", "XRP/USDT", "1m")[-1]
    time.sleep(1.5)  # the sim's forming candle grows every second
    second = backtest.wait(backtest.fetch(**{**body, "until": now + 2 * MINUTE})["id"])
    assert second["status"] == "done" and second["rows_written"] >= 1, second
    assert backtest.candles("sim", "XRP/USDT", "1m")[-1] != forming or (
        backtest.candles("sim", "XRP/USDT", "1m")[-2] != forming
    )


def test_an_interrupted_fetch_resumes_from_its_cursor(backtest: Backtest) -> None:
    body = {"symbol": "BTC/USDT", "timeframe": "1m", "since": "2024-03-01", "until": "2024-11-01"}
    job = backtest.fetch(**body)
    total = job["total"]
    assert total == 245 * 1440
    backtest.wait(job["id"], lambda j: j["status"] == "running" and j["done"] > 0)
    backtest.stack.volex("stop", "backtest")
    [row] = backtest.rows("SELECT * FROM ohlcv_fetch_jobs WHERE id = :id", id=job["id"])
    assert row["status"] == "running" and 0 < row["done"] < total, "stopped too late to test"
    stored = backtest.rows(
        "SELECT count(*) AS n FROM ohlcv WHERE exchange = 'sim' AND symbol = 'BTC/USDT'"
        " AND timeframe = '1m' AND time < to_timestamp(:c / 1000.0)",
        c=row["cursor"],
    )[0]["n"]
    assert stored == row["done"] == row["fetched"]  # every committed page is in the table

    backtest.stack.volex("start", "backtest")
    done = backtest.wait(job["id"])
    assert done["status"] == "done", done
    assert done["attempts"] == 2  # picked up again on start-up ...
    assert done["fetched"] == total  # ... from its cursor: no candle was fetched twice
    assert done["done"] == total and done["gaps"] == []
    count = backtest.rows(
        "SELECT count(*) AS n, count(DISTINCT time) AS d FROM ohlcv WHERE exchange = 'sim'"
        " AND symbol = 'BTC/USDT' AND timeframe = '1m' AND time >= '2024-03-01'"
        " AND time < '2024-11-01'"
    )[0]
    assert count == {"n": total, "d": total}


def test_a_cancelled_fetch_is_continued_by_a_new_one(backtest: Backtest) -> None:
    body = {"symbol": "BNB/USDT", "timeframe": "1m", "since": "2024-05-01", "until": "2024-06-15"}
    job = backtest.fetch(**body)
    backtest.wait(job["id"], lambda j: j["done"] >= 5000)
    cancelled = backtest.ok(backtest.post(f"/data/jobs/{job['id']}/cancel"))
    assert cancelled["status"] == "cancelled"
    stopped = backtest.wait(job["id"])
    time.sleep(0.3)  # a page in flight is not written once the job is cancelled
    assert backtest.job(job["id"])["done"] == stopped["done"] < stopped["total"]

    again = backtest.fetch(**body)
    # What the first job stored is skipped, bar its last candle (fetched again).
    assert again["done"] == stopped["done"] - 1
    again = backtest.wait(again["id"])
    assert again["status"] == "done" and again["fetched"] == again["total"] - stopped["done"] + 1
    assert len(backtest.candles("sim", "BNB/USDT", "1m")) == again["total"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"timeframe": "2m"}, "body.timeframe", "'1m'"),
        ({"symbol": "BTCUSDT"}, "body.symbol", "pattern"),
        ({"since": "yesterday"}, "body.since", "ISO-8601"),
        ({"since": 1704067200}, "body.since", "seconds"),
        ({"until": "2024-01-01"}, "body.until", "after since"),
        ({"timeframe": "1m", "since": "2010-01-01"}, "body.until", "1,100,000"),
        ({"exchange": "Not An Exchange"}, "body.exchange", "pattern"),
    ],
)
def test_bad_requests_name_the_field(
    backtest: Backtest, change: dict[str, Any], field: str, words: str
) -> None:
    body = {"exchange": "sim", "symbol": "BTC/USDT", "timeframe": "1h", "since": "2024-01-02"}
    body |= {"until": "2024-01-03"} | change
    response = backtest.post("/data/fetch", body)
    assert field_errors(response) == [field]
    assert words in response.json()["detail"]


def test_execution_says_what_it_does_not_know(backtest: Backtest) -> None:
    body = {"symbol": "BTC/USDT", "timeframe": "1h", "since": "2024-01-02", "until": "2024-01-03"}
    unknown = backtest.post("/data/fetch", {**body, "exchange": "nosuchexchange"})
    assert unknown.status_code == 404 and "nosuchexchange" in unknown.json()["detail"]
    unlisted = backtest.post("/data/fetch", {**body, "exchange": "sim", "symbol": "FOO/BAR"})
    assert unlisted.status_code == 422 and "not traded on sim" in unlisted.json()["detail"]
    future = backtest.post(
        "/data/fetch", {**body, "exchange": "sim", "since": "2099-01-01", "until": "2099-02-01"}
    )
    assert field_errors(future) == ["body.since"]
