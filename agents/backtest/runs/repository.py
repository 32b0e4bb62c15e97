"""All SQL of backtest runs: the `backtests` row, its trades (one binary COPY) and its
equity curve. Functions take the caller's Session and never commit."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from agents.backtest import pgcopy
from agents.backtest.repository import dbapi
from common.models.backtest import BacktestEquity, BacktestRun, BacktestTrade
from common.quant.engine import EXIT_REASONS

_SIDES = np.array([b"short", b"long "], dtype="S5")  # indexed by side > 0
_REASONS = np.array([r.encode().ljust(13) for r in EXIT_REASONS], dtype="S13")
_TRADE_COLUMNS = (
    "backtest_id, seq, side, entry_time, exit_time, entry_bar, exit_bar, size, entry_price,"
    " exit_price, fees, pnl, return_pct, exit_reason"
)


def add_run(session: Session, run: BacktestRun) -> BacktestRun:
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, run_id: str, *, lock: bool = False) -> BacktestRun | None:
    query = select(BacktestRun).where(BacktestRun.id == run_id)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def list_runs(
    session: Session, filters: dict[str, str | None], limit: int, offset: int
) -> tuple[Sequence[BacktestRun], int]:
    """Runs matching the non-None `filters` (column = value), newest first, and their count."""
    where = [getattr(BacktestRun, name) == value for name, value in filters.items() if value]
    query = select(BacktestRun).where(*where)
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    page = query.order_by(BacktestRun.created_at.desc(), BacktestRun.id).limit(limit)
    return session.execute(page.offset(offset)).scalars().all(), int(total)


def unfinished_ids(session: Session) -> list[str]:
    """Runs a previous process left queued or running, oldest first."""
    query = (
        select(BacktestRun.id)
        .where(BacktestRun.status.in_(("queued", "running")))
        .order_by(BacktestRun.created_at)
    )
    return list(session.execute(query).scalars())


def set_stage(session: Session, run_id: str, stage: str, progress: float) -> bool:
    """Move a running run on; False when it is no longer running (cancelled, deleted)."""
    moved = session.execute(
        update(BacktestRun)
        .where(BacktestRun.id == run_id, BacktestRun.status == "running")
        .values(stage=stage, progress=progress)
        .returning(BacktestRun.id)
    ).first()
    return moved is not None


def finish(session: Session, run: BacktestRun, status: str, error: str | None = None) -> None:
    now = db_now(session)
    run.status, run.error, run.finished_at = status, error, now
    if status == "done":
        run.stage, run.progress = "finished", 1.0
    if run.started_at is not None:
        run.duration_ms = int((now - run.started_at).total_seconds() * 1000)


def delete_run(session: Session, run_id: str) -> bool:
    """Delete a run with its trades and equity (cascade); False if there was none."""
    gone = session.execute(
        delete(BacktestRun).where(BacktestRun.id == run_id).returning(BacktestRun.id)
    ).first()
    return gone is not None


# --- results ---------------------------------------------------------------------------------
def add_trades(session: Session, run_id: str, records: np.ndarray) -> None:
    """Every trade of a run in one binary COPY (`records`: the engine's TRADE_DTYPE)."""
    if len(records) == 0:
        return
    n = len(records)
    stream = pgcopy.encode_table(
        [
            ("S32", np.full(n, run_id.encode(), dtype="S32")),
            (">i4", np.arange(n)),
            ("S5", _SIDES[(records["side"] > 0).astype(np.intp)]),
            (">i8", pgcopy.timestamptz(records["entry_ts"])),
            (">i8", pgcopy.timestamptz(records["exit_ts"])),
            (">i4", records["entry_bar"]),
            (">i4", records["exit_bar"]),
            *(
                (">f8", records[name])
                for name in ("size", "entry_price", "exit_price", "fees", "pnl", "return_pct")
            ),
            ("S13", _REASONS[records["exit_reason"]]),
        ]
    )
    with dbapi(session) as conn, conn.cursor() as cur:
        sql = f"COPY backtest_trades ({_TRADE_COLUMNS}) FROM STDIN (FORMAT binary)"
        cur.copy_expert(sql, io.BytesIO(stream))


def add_equity(session: Session, equity: BacktestEquity) -> None:
    session.add(equity)
    session.flush()


def trades(session: Session, run_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
    query = (
        select(BacktestTrade)
        .where(BacktestTrade.backtest_id == run_id)
        .order_by(BacktestTrade.seq)
        .offset(offset)
        .limit(limit)
    )
    rows = []
    for trade in session.execute(query).scalars():
        row = {c.key: getattr(trade, c.key) for c in BacktestTrade.__table__.columns}
        row["side"], row["exit_reason"] = trade.side.rstrip(), trade.exit_reason.rstrip()
        rows.append(row)
    return rows


def equity(session: Session, run_id: str) -> BacktestEquity | None:
    return session.get(BacktestEquity, run_id)


def db_now(session: Session) -> datetime:
    now: datetime = session.execute(text("SELECT clock_timestamp()")).scalar_one()
    return now
