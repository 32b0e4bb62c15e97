"""signal: the autonomous loop's runs and decisions

Revision ID: signal_0002
Revises: signal_0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "signal_0002"
down_revision: str | None = "signal_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _at(name: str, nullable: bool = True, now: bool = False) -> sa.Column[Any]:
    default = sa.func.now() if now else None
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def upgrade() -> None:
    op.create_table(
        "autonomous_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("symbols", JSONB(), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("strategy", sa.String(64), nullable=False),
        sa.Column("params", JSONB(), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("risk_fraction", sa.Numeric(38, 18), nullable=False),
        sa.Column("atr_multiple", sa.Numeric(38, 18), nullable=False),
        sa.Column("started_by", sa.String(64), nullable=False),
        _at("started_at", nullable=False, now=True),
        sa.Column("stopped_by", sa.String(64)),
        _at("stopped_at"),
        sa.Column("stop_reason", sa.Text()),
        _at("state_seen_at"),
        sa.Column("ticks", sa.Integer(), nullable=False, server_default="0"),
        _at("last_tick_at"),
        sa.PrimaryKeyConstraint("id", name="pk_autonomous_runs"),
        sa.CheckConstraint("status IN ('running', 'stopped')", name="ck_autonomous_runs_status"),
    )
    # One loop at a time: a second start must be refused by the database, not by luck.
    op.create_index(
        "uq_autonomous_runs_running",
        "autonomous_runs",
        ["status"],
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_table(
        "autonomous_decisions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("run_id", sa.BigInteger()),
        _at("decided_at", nullable=False, now=True),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("strategy", sa.String(64), nullable=False),
        _at("bar_ts"),
        sa.Column("signal", sa.String(8), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reasons", JSONB(), nullable=False),
        sa.Column("client_order_id", sa.String(64)),
        sa.Column("order_id", sa.BigInteger()),
        sa.Column("order_status", sa.String(24)),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_autonomous_decisions"),
    )
    op.create_index(
        "ix_autonomous_decisions_symbol_at", "autonomous_decisions", ["symbol", "decided_at"]
    )
    op.create_index("ix_autonomous_decisions_run", "autonomous_decisions", ["run_id", "id"])


def downgrade() -> None:
    op.drop_table("autonomous_decisions")
    op.drop_table("autonomous_runs")
