"""backtest: backtest runs, their trades and equity curves

Revision ID: backtest_0002
Revises: backtest_0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import CHAR, JSONB

revision: str = "backtest_0002"
down_revision: str | None = "backtest_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "status IN ('queued', 'running', 'done', 'failed', 'cancelled')"


def upgrade() -> None:
    op.create_table(
        "backtests",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("progress", sa.Double(), nullable=False),
        sa.Column("exchange", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(41), nullable=False),
        sa.Column("timeframe", sa.String(4), nullable=False),
        sa.Column("strategy", sa.String(64), nullable=False),
        sa.Column("fill", sa.String(16), nullable=False),
        sa.Column("request", JSONB(), nullable=False),
        sa.Column("stats", JSONB(), nullable=True),
        sa.Column("bars", sa.Integer(), nullable=True),
        sa.Column("resampled_from", sa.String(4), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_backtests"),
        sa.CheckConstraint(STATUSES, name="ck_backtests_status"),
    )
    op.create_index("ix_backtests_status", "backtests", ["status"])
    op.create_index("ix_backtests_created_at", "backtests", ["created_at"])
    op.create_table(
        "backtest_trades",
        sa.Column("backtest_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("side", CHAR(5), nullable=False),
        sa.Column("entry_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("exit_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entry_bar", sa.Integer(), nullable=False),
        sa.Column("exit_bar", sa.Integer(), nullable=False),
        *(
            sa.Column(name, sa.Double(), nullable=False)
            for name in ("size", "entry_price", "exit_price", "fees", "pnl", "return_pct")
        ),
        sa.Column("exit_reason", CHAR(13), nullable=False),
        sa.PrimaryKeyConstraint("backtest_id", "seq", name="pk_backtest_trades"),
        sa.ForeignKeyConstraint(
            ["backtest_id"],
            ["backtests.id"],
            name="fk_backtest_trades_backtest_id_backtests",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "backtest_equity",
        sa.Column("backtest_id", sa.String(32), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_ts", sa.BigInteger(), nullable=False),
        sa.Column("ts_deltas", sa.LargeBinary(), nullable=False),
        sa.Column("equity", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("backtest_id", name="pk_backtest_equity"),
        sa.ForeignKeyConstraint(
            ["backtest_id"],
            ["backtests.id"],
            name="fk_backtest_equity_backtest_id_backtests",
            ondelete="CASCADE",
        ),
    )
    # Already zlib-compressed: PostgreSQL's own TOAST compression would only cost time.
    op.execute("ALTER TABLE backtest_equity ALTER COLUMN ts_deltas SET STORAGE EXTERNAL")
    op.execute("ALTER TABLE backtest_equity ALTER COLUMN equity SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("backtest_equity")
    op.drop_table("backtest_trades")
    op.drop_table("backtests")
