"""Reading an OHLCV CSV into candles, refusing the whole file over any bad line.

The header names `timestamp, open, high, low, close, volume` (any case, any order;
other columns are ignored). A timestamp is epoch milliseconds or ISO-8601 (no zone
means UTC). Every data line is checked, column by column and all at once: numbers,
high ≥ low, open and close within [low, high], prices > 0, volume ≥ 0, the time on
the timeframe's grid, no time twice. Line numbers count the header as line 1.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pandas as pd

from agents.backtest.timegrid import MIN_MS, iso, off_grid
from common.errors import Unprocessable
from common.quant.bars import Bars

COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
MAX_ERRORS = 20  # listed in the answer; the count says how many lines were bad in all
FIRST_LINE = 2  # the header is line 1

Mask = npt.NDArray[np.bool_]


class Problems:
    """What is wrong, line by line: every bad line counted, the first few described."""

    def __init__(self, lines: npt.NDArray[np.int64]) -> None:
        self.lines = lines
        self.bad: Mask = np.zeros(len(lines), bool)
        self.items: list[tuple[int, str]] = []

    def report(self, mask: Mask, message: Callable[[int], str]) -> None:
        self.bad |= mask
        for i in np.flatnonzero(mask)[:MAX_ERRORS]:
            self.items.append((int(self.lines[i]), message(int(i))))


def read_csv(data: bytes, timeframe: str) -> Bars:
    """The file's candles, oldest first; Unprocessable naming every bad line otherwise."""
    frame = _frame(data)
    problems = Problems(frame.index.to_numpy() + FIRST_LINE)
    ts = _times(frame["timestamp"], problems)
    numbers = {name: _numbers(frame[name], name, problems) for name in COLUMNS[1:]}
    good_numbers = np.asarray(np.isfinite(np.column_stack(list(numbers.values()))).all(axis=1))
    _check_values(numbers, good_numbers, problems)
    _check_times(ts, timeframe, problems)
    if problems.items:
        raise _refusal(problems)
    order = np.argsort(ts, kind="stable")
    return Bars(ts[order], *(numbers[name][order] for name in COLUMNS[1:]))


def _frame(data: bytes) -> pd.DataFrame:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Unprocessable(f"the file is not UTF-8 text (byte {exc.start})") from None
    try:
        frame = pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=False
        )
    except pd.errors.EmptyDataError:
        raise Unprocessable("the file is empty: it needs a header line and candles") from None
    except pd.errors.ParserError as exc:
        raise Unprocessable(
            f"the file is not well-formed CSV: {exc}".replace("C error: ", "")
        ) from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise Unprocessable(
            f"the header lacks {', '.join(missing)}: it must name {', '.join(COLUMNS)}"
        )
    frame = frame[list(COLUMNS)].fillna("")
    frame = frame[(frame != "").any(axis=1)]  # blank lines are skipped (and keep their number)
    if frame.empty:
        raise Unprocessable("the file has a header but no candles")
    return frame


def _times(raw: pd.Series[str], problems: Problems) -> npt.NDArray[np.int64]:
    text = raw.str.strip()
    digits = text.str.fullmatch(r"\d+").to_numpy(dtype=bool)
    ms = np.zeros(len(text), np.int64)
    ms[digits] = text[digits].astype(np.int64).to_numpy()
    parsed = pd.to_datetime(text[~digits], format="ISO8601", utc=True, errors="coerce")
    bad = np.zeros(len(text), bool)
    bad[~digits] = parsed.isna().to_numpy()
    good_iso = ~digits & ~bad
    epoch = pd.Timestamp(0, tz="UTC")
    ms[good_iso] = ((parsed[~parsed.isna()] - epoch) // pd.Timedelta(milliseconds=1)).to_numpy()
    values = text.to_numpy()
    problems.report(bad, lambda i: f"timestamp {values[i]!r} is neither epoch ms nor ISO-8601")
    seconds = digits & (ms < MIN_MS)
    problems.report(seconds, lambda i: f"timestamp {values[i]} looks like seconds; use ms")
    ms[bad | seconds] = -1
    return ms


def _numbers(raw: pd.Series[str], name: str, problems: Problems) -> npt.NDArray[np.float64]:
    text = raw.str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    bad = ~np.isfinite(values)
    shown = text.to_numpy()
    problems.report(bad, lambda i: f"{name} {shown[i]!r} is not a number")
    values[bad] = np.nan
    return values


def _check_values(
    numbers: dict[str, npt.NDArray[np.float64]], good: Mask, problems: Problems
) -> None:
    o, h, lo, c, v = (numbers[name] for name in COLUMNS[1:])
    problems.report(good & (h < lo), lambda i: f"high {h[i]} is below low {lo[i]}")
    for name, price in (("open", o), ("close", c)):
        outside = good & (h >= lo) & ((price < lo) | (price > h))
        problems.report(outside, _outside(name, price, lo, h))
    problems.report(good & (lo <= 0), lambda i: f"low {lo[i]} is not a positive price")
    problems.report(good & (v < 0), lambda i: f"volume {v[i]} is negative")


def _outside(
    name: str,
    price: npt.NDArray[np.float64],
    lo: npt.NDArray[np.float64],
    h: npt.NDArray[np.float64],
) -> Callable[[int], str]:
    return lambda i: f"{name} {price[i]} is outside low..high ({lo[i]}..{h[i]})"


def _check_times(ts: npt.NDArray[np.int64], timeframe: str, problems: Problems) -> None:
    valid = ts >= 0
    grid = np.zeros(len(ts), bool)
    grid[off_grid(ts, timeframe)] = True
    problems.report(
        valid & grid,
        lambda i: f"timestamp {iso(int(ts[i]))} is not on the {timeframe} grid (UTC-aligned)",
    )
    order = np.argsort(ts, kind="stable")
    ordered = ts[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(ts)), 0))
    repeats = order[~starts & (ordered >= 0)]
    first_line = dict(
        zip(
            repeats.tolist(),
            problems.lines[order[group_start[~starts & (ordered >= 0)]]].tolist(),
            strict=True,
        )
    )
    repeat = np.zeros(len(ts), bool)
    repeat[repeats] = True
    problems.report(repeat, lambda i: f"timestamp {iso(int(ts[i]))} repeats line {first_line[i]}")


def _refusal(problems: Problems) -> Unprocessable:
    shown = sorted(problems.items)[:MAX_ERRORS]
    detail = "; ".join(f"line {line}: {message}" for line, message in shown[:3])
    more = "; ..." if len(problems.items) > 3 else ""
    return Unprocessable(
        f"nothing imported: {int(problems.bad.sum())} bad line(s): {detail}{more}",
        errors=[{"field": f"line {line}", "message": message} for line, message in shown],
    )
