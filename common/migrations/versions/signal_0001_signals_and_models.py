"""signal: signals (time series) and versioned ML models

Revision ID: signal_0001
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from common.db import make_time_series

revision: str = "signal_0001"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("signal",)
depends_on: str | Sequence[str] | None = None


def _key() -> list[sa.Column[Any]]:
    return [
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "signals",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("generated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("batch_id", sa.String(32), nullable=False),
        *_key(),
        sa.Column("strategy", sa.String(64), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("strength", sa.Float(), nullable=False),
        sa.Column("position", sa.SmallInteger()),
        sa.Column("confidence", sa.Float()),
        sa.Column("bar_ts", sa.BigInteger(), nullable=False),
        sa.Column("price", sa.Float(), nullable=False),
        sa.Column("params", JSONB(), nullable=False),
        sa.Column("details", JSONB(), nullable=False),
        sa.Column("model_id", sa.BigInteger()),
        sa.Column("requested_by", sa.String(64), nullable=False),
        # A hypertable's unique keys must include its time column.
        sa.PrimaryKeyConstraint("id", "generated_at", name="pk_signals"),
        sa.CheckConstraint("action IN ('buy', 'sell', 'hold')", name="ck_signals_action"),
    )
    make_time_series(op.get_bind(), "signals", "generated_at", key_columns=("symbol", "exchange"))
    op.create_table(
        "signal_models",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("created_by", sa.String(64), nullable=False),
        *_key(),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("horizon", sa.Integer(), nullable=False),
        sa.Column("params", JSONB(), nullable=False),
        sa.Column("features", JSONB(), nullable=False),
        sa.Column("metrics", JSONB(), nullable=False),
        sa.Column("bars", sa.Integer(), nullable=False),
        sa.Column("train_start_ts", sa.BigInteger(), nullable=False),
        sa.Column("train_end_ts", sa.BigInteger(), nullable=False),
        sa.Column("model_bytes", sa.LargeBinary(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_signal_models"),
        sa.UniqueConstraint(
            "exchange",
            "symbol",
            "timeframe",
            "version",
            name="uq_signal_models_exchange_symbol_timeframe_version",
        ),
        sa.CheckConstraint(
            "kind IN ('logistic_regression', 'random_forest', 'gradient_boosting')",
            name="ck_signal_models_kind",
        ),
    )
    # At most one active model per (exchange, symbol, timeframe).
    op.create_index(
        "uq_signal_models_active",
        "signal_models",
        ["exchange", "symbol", "timeframe"],
        unique=True,
        postgresql_where=sa.text("active"),
    )


def downgrade() -> None:
    op.drop_table("signal_models")
    op.drop_table("signals")
