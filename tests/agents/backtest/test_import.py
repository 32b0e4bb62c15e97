"""CSV import: ms and ISO times, multipart or a text/csv body; all or nothing."""

from __future__ import annotations

from tests.agents.backtest.conftest import Backtest

MINUTE = 60_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00Z
HEADER = "Timestamp,Open,High,Low,Close,Volume\n"


def lines(n: int, start: int = T0, iso: bool = False) -> list[str]:
    out = []
    for i in range(n):
        ts = start + i * MINUTE
        stamp = f"2024-01-01T{i // 60:02d}:{i % 60:02d}:00Z" if iso else str(ts)
        price = 100 + i
        out.append(f"{stamp},{price},{price + 2.5},{price - 1.25},{price + 1},{i * 0.5}")
    return out


def test_import_ms_times_as_a_text_csv_body(backtest: Backtest) -> None:
    symbol = backtest.symbol()
    body = HEADER + "\n".join(lines(120)) + "\n"
    response = backtest.request(
        "POST",
        "/data/import",
        params={"exchange": "csvtest", "symbol": symbol.replace("/", "-"), "timeframe": "1m"},
        content=body,
        headers={"Content-Type": "text/csv"},
    )
    result = backtest.ok(response, 201)
    assert result == {
        "exchange": "csvtest",
        "symbol": symbol,
        "timeframe": "1m",
        "rows": 120,
        "rows_written": 120,
        "first": "2024-01-01T00:00:00Z",
        "last": "2024-01-01T01:59:00Z",
    }
    stored = backtest.candles("csvtest", symbol, "1m")
    assert len(stored) == 120
    assert (stored[7]["open"], stored[7]["high"], stored[7]["low"]) == (107, 109.5, 105.75)
    assert (stored[7]["close"], stored[7]["volume"]) == (108, 3.5)


def test_import_iso_times_as_multipart_then_again(backtest: Backtest) -> None:
    symbol = backtest.symbol()
    data = (HEADER + "\n".join(lines(30, iso=True))).encode()
    fields = {"exchange": "csvtest", "symbol": symbol, "timeframe": "1m"}
    files = {"file": ("candles.csv", data, "text/csv")}
    first = backtest.ok(backtest.request("POST", "/data/import", data=fields, files=files), 201)
    assert first["rows"] == 30 and first["rows_written"] == 30
    again = backtest.ok(backtest.request("POST", "/data/import", data=fields, files=files), 201)
    assert again["rows"] == 30 and again["rows_written"] == 0  # identical: nothing changes
    assert len(backtest.candles("csvtest", symbol, "1m")) == 30


def test_malformed_lines_are_named_and_nothing_is_stored(backtest: Backtest) -> None:
    symbol = backtest.symbol()
    good = lines(1000)
    bad = {
        3: f"{T0 + 1 * MINUTE},1O1,103.5,99.75,102,1",  # letter O, not zero
        10: f"{T0 + 8 * MINUTE},109,105,106,106,1",  # high below low
        20: f"{T0 + 18 * MINUTE},119,121.5,117.75,120,-4",  # negative volume
        30: f"{T0 + 28 * MINUTE + 30_000},129,131.5,127.75,130,1",  # off the 1m grid
        40: good[0],  # the time of line 2 again
        1001: f"{T0 + 999 * MINUTE},abc,1,1,1,1",  # the last line (line L holds minute L-2)
    }
    for line, text in bad.items():
        good[line - 2] = text
    response = backtest.request(
        "POST",
        "/data/import",
        params={"exchange": "csvtest", "symbol": symbol, "timeframe": "1m"},
        content=HEADER + "\n".join(good),
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    named = {(e["field"], e["message"]) for e in problem["errors"]}
    assert ("line 3", "open '1O1' is not a number") in named
    assert ("line 10", "high 105.0 is below low 106.0") in named
    assert ("line 20", "volume -4.0 is negative") in named
    assert (
        "line 30",
        "timestamp 2024-01-01T00:28:30Z is not on the 1m grid (UTC-aligned)",
    ) in named
    assert ("line 40", "timestamp 2024-01-01T00:00:00Z repeats line 2") in named
    assert ("line 1001", "open 'abc' is not a number") in named
    assert problem["detail"].startswith("nothing imported: 6 bad line(s)")
    assert backtest.candles("csvtest", symbol, "1m") == []


def test_import_needs_the_columns_and_fields(backtest: Backtest) -> None:
    symbol = backtest.symbol()
    params = {"exchange": "csvtest", "symbol": symbol, "timeframe": "1m"}
    csv = {"Content-Type": "text/csv"}
    no_volume = backtest.request(
        "POST",
        "/data/import",
        params=params,
        content="timestamp,open,high,low,close\n",
        headers=csv,
    )
    assert no_volume.status_code == 422 and "lacks volume" in no_volume.json()["detail"]
    no_timeframe = backtest.request(
        "POST",
        "/data/import",
        params={"exchange": "csvtest", "symbol": symbol},
        content=HEADER + lines(1)[0],
        headers=csv,
    )
    assert no_timeframe.status_code == 422
    assert [e["field"] for e in no_timeframe.json()["errors"]] == ["query.timeframe"]
    as_json = backtest.post("/data/import", {"rows": []}, params=params)
    assert as_json.status_code == 422 and "text/csv" in as_json.json()["detail"]
