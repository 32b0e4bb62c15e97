"""risk: trading state, limits, checks, equity peak and snapshots, audit outbox

Revision ID: risk_0001
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from common.db import make_time_series

revision: str = "risk_0001"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("risk",)
depends_on: str | Sequence[str] | None = None

STATES = "state IN ('ACTIVE', 'REDUCING', 'HALTED')"


def _money(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.Numeric(38, 18), nullable=nullable)


def _at(name: str, nullable: bool = False, now: bool = False) -> sa.Column[Any]:
    default = sa.func.now() if now else None
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def upgrade() -> None:
    op.create_table(
        "risk_trading_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("changed_by", sa.String(64), nullable=False),
        _at("changed_at"),
        sa.Column("flatten", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_risk_trading_state"),
        sa.CheckConstraint("id = 1", name="ck_risk_trading_state_singleton"),
        sa.CheckConstraint(STATES, name="ck_risk_trading_state_state"),
    )
    op.execute(
        "INSERT INTO risk_trading_state (id, state, reason, changed_by, changed_at, flatten)"
        " VALUES (1, 'ACTIVE', 'initial state', 'migration', now(), false)"
    )
    op.create_table(
        "risk_trading_state_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        _at("changed_at"),
        sa.Column("previous_state", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("changed_by", sa.String(64), nullable=False),
        sa.Column("flatten", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_risk_trading_state_history"),
    )
    op.create_index(
        "ix_risk_trading_state_history_changed_at", "risk_trading_state_history", ["changed_at"]
    )
    op.create_table(
        "risk_limits",
        sa.Column("id", sa.Integer(), nullable=False),
        _money("max_order_notional"),
        _money("max_position_pct"),
        _money("max_gross_exposure_pct"),
        _money("max_heat_pct"),
        _money("default_stop_pct"),
        _money("daily_loss_limit"),
        _money("max_drawdown_pct"),
        sa.Column("max_orders_per_minute", sa.Integer(), nullable=False),
        sa.Column("duplicate_window_s", sa.Integer(), nullable=False),
        _money("price_collar_pct"),
        sa.Column("max_reference_age_ms", sa.Integer(), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_risk_limits"),
        sa.CheckConstraint("id = 1", name="ck_risk_limits_singleton"),
    )
    op.create_table(
        "risk_equity_peak",
        sa.Column("id", sa.Integer(), nullable=False),
        _money("peak_equity"),
        _at("peak_at", nullable=True),
        _money("last_equity", nullable=True),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_risk_equity_peak"),
        sa.CheckConstraint("id = 1", name="ck_risk_equity_peak_singleton"),
    )
    op.execute("INSERT INTO risk_equity_peak (id, peak_equity, updated_at) VALUES (1, 0, now())")
    op.create_table(
        "risk_checks",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        _at("checked_at"),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("exchange", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(41), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        _money("amount"),
        _money("price", nullable=True),
        sa.Column("reduce_only", sa.Boolean(), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("checks", JSONB(), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_risk_checks"),
    )
    op.create_index("ix_risk_checks_checked_at", "risk_checks", ["checked_at"])
    op.create_index("ix_risk_checks_client_order_id", "risk_checks", ["client_order_id"])
    op.create_table(
        "risk_equity_snapshots",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        _at("taken_at"),
        _money("equity"),
        _money("cash"),
        _money("realized_pnl_today"),
        _money("gross_exposure"),
        _money("net_exposure"),
        sa.Column("positions", JSONB(), nullable=False),
        # A hypertable's unique keys must include its time column.
        sa.PrimaryKeyConstraint("id", "taken_at", name="pk_risk_equity_snapshots"),
    )
    make_time_series(op.get_bind(), "risk_equity_snapshots", "taken_at")
    op.create_table(
        "risk_audit_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        _at("created_at", now=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(128)),
        sa.Column("data", JSONB(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text()),
        _at("last_attempt_at", nullable=True),
        _at("next_attempt_at", now=True),
        _at("delivered_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_risk_audit_outbox"),
        sa.UniqueConstraint("event_id", name="uq_risk_audit_outbox_event_id"),
    )
    op.create_index("ix_risk_audit_outbox_delivered_at", "risk_audit_outbox", ["delivered_at"])
    # The flusher's query: undelivered events, oldest first.
    op.create_index(
        "ix_risk_audit_outbox_pending",
        "risk_audit_outbox",
        ["id"],
        postgresql_where=sa.text("delivered_at IS NULL"),
    )


def downgrade() -> None:
    for table in (
        "risk_audit_outbox",
        "risk_equity_snapshots",
        "risk_checks",
        "risk_equity_peak",
        "risk_limits",
        "risk_trading_state_history",
        "risk_trading_state",
    ):
        op.drop_table(table)
