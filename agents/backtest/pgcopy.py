"""PostgreSQL's binary COPY format for candles, encoded and decoded with numpy.

One candle row is (time timestamptz, open, high, low, close, volume float8): a
fixed 74 bytes in binary COPY, so a whole COPY stream maps onto one numpy
structured array without a Python loop either way. timestamptz travels as int64
microseconds since 2000-01-01.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

from common.quant.bars import Bars

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
COLUMNS = ("open", "high", "low", "close", "volume")

ROW = np.dtype(
    [("fields", ">i2"), ("time_len", ">i4"), ("time", ">i8")]
    + [field for name in COLUMNS for field in ((f"{name}_len", ">i4"), (name, ">f8"))]
)
TIME_ROW = np.dtype([("fields", ">i2"), ("time_len", ">i4"), ("time", ">i8")])


def encode(bars: Bars) -> bytes:
    """A binary COPY stream of `bars` for a table (time, open, high, low, close, volume)."""
    rows = np.empty(len(bars), ROW)
    rows["fields"] = 1 + len(COLUMNS)
    rows["time_len"] = 8
    rows["time"] = (bars.ts - PG_EPOCH_MS) * 1000
    for name in COLUMNS:
        rows[f"{name}_len"] = 8
        rows[name] = getattr(bars, name)
    return HEADER + rows.tobytes() + TRAILER


def _rows(stream: bytes, dtype: np.dtype[np.void], fields: int) -> npt.NDArray[np.void]:
    if not stream.startswith(SIGNATURE):
        raise ValueError("not a binary COPY stream")
    (extension,) = struct.unpack_from(">i", stream, len(SIGNATURE) + 4)
    start = len(SIGNATURE) + 8 + extension
    body = memoryview(stream)[start : len(stream) - len(TRAILER)]
    if len(body) % dtype.itemsize:
        raise ValueError("binary COPY stream with rows of an unexpected size (a NULL?)")
    rows = np.frombuffer(body, dtype)
    if len(rows) and not (rows["fields"] == fields).all():
        raise ValueError(f"binary COPY rows must have {fields} fields")
    return rows


def _ms(micros: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return (micros // 1000 + PG_EPOCH_MS).astype(np.int64)


def decode(stream: bytes) -> Bars:
    """Candles from a binary COPY of (time, open, high, low, close, volume)."""
    rows = _rows(stream, ROW, 1 + len(COLUMNS))
    columns = (rows[name].astype(np.float64) for name in COLUMNS)
    return Bars(_ms(rows["time"]), *columns)


def decode_times(stream: bytes) -> npt.NDArray[np.int64]:
    """Epoch milliseconds from a binary COPY of one timestamptz column."""
    return _ms(_rows(stream, TIME_ROW, 1)["time"])


def encode_table(columns: list[tuple[str, np.ndarray]]) -> bytes:
    """A binary COPY stream of fixed-width columns, in order: each (big-endian numpy
    type of its binary form, values). int64 for bigint and timestamptz (microseconds
    since 2000), int32, float64, or `S<n>` bytes for text of exactly n bytes."""
    count = len(columns[0][1]) if columns else 0
    layout: list[tuple[str, str]] = [("fields", ">i2")]
    for i, (kind, _) in enumerate(columns):
        layout += [(f"len{i}", ">i4"), (f"col{i}", kind)]
    rows = np.empty(count, np.dtype(layout))
    rows["fields"] = len(columns)
    for i, (_, values) in enumerate(columns):
        rows[f"len{i}"] = rows.dtype[f"col{i}"].itemsize
        rows[f"col{i}"] = values
    return HEADER + rows.tobytes() + TRAILER


def timestamptz(ts_ms: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Epoch milliseconds as timestamptz's binary value (microseconds since 2000)."""
    return (ts_ms - PG_EPOCH_MS) * 1000
