"""backtest: OHLCV candles and their fetch jobs

Revision ID: backtest_0001
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from common.db import make_time_series

revision: str = "backtest_0001"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("backtest",)
depends_on: str | Sequence[str] | None = None

STATUSES = "status IN ('queued', 'running', 'done', 'failed', 'cancelled')"


def upgrade() -> None:
    op.create_table(
        "ohlcv",
        sa.Column("exchange", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(41), nullable=False),
        sa.Column("timeframe", sa.String(4), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        # Market data for float indicators, not ledger money: double precision.
        *(
            sa.Column(name, sa.Double(), nullable=False)
            for name in ("open", "high", "low", "close", "volume")
        ),
        sa.PrimaryKeyConstraint("exchange", "symbol", "timeframe", "time", name="pk_ohlcv"),
    )
    # The primary key already leads with the series and ends with the time: no second
    # index on the plain table (it would only slow every COPY down).
    make_time_series(
        op.get_bind(),
        "ohlcv",
        "time",
        key_columns=("exchange", "symbol", "timeframe"),
        plain_index=False,
    )
    op.create_table(
        "ohlcv_fetch_jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("exchange", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(41), nullable=False),
        sa.Column("timeframe", sa.String(4), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("fetched", sa.Integer(), nullable=False),
        sa.Column("rows_written", sa.Integer(), nullable=False),
        sa.Column("plan", JSONB(), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=True),
        sa.Column("gaps", JSONB(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_ohlcv_fetch_jobs"),
        sa.CheckConstraint(STATUSES, name="ck_ohlcv_fetch_jobs_status"),
    )
    op.create_index("ix_ohlcv_fetch_jobs_status", "ohlcv_fetch_jobs", ["status"])


def downgrade() -> None:
    op.drop_table("ohlcv_fetch_jobs")
    op.drop_table("ohlcv")
