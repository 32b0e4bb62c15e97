"""execution: orders, fills, positions

Revision ID: execution_0001
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "execution_0001"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("execution",)
depends_on: str | Sequence[str] | None = None


def money() -> sa.Numeric:
    return sa.Numeric(38, 18)


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("exchange", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(41), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("amount", money(), nullable=False),
        sa.Column("price", money()),
        sa.Column("stop_price", money()),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("exchange_order_id", sa.String(128)),
        sa.Column("filled", money(), nullable=False),
        sa.Column("average_price", money()),
        sa.Column("fee", money(), nullable=False),
        sa.Column("reduce_only", sa.Boolean(), nullable=False),
        sa.Column("stop_loss", money()),
        sa.Column("take_profit", money()),
        sa.Column("trailing_stop_pct", money()),
        sa.Column(
            "parent_id",
            sa.BigInteger(),
            sa.ForeignKey("orders.id", name="fk_orders_parent_id_orders"),
        ),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_orders"),
        sa.UniqueConstraint("client_order_id", name="uq_orders_client_order_id"),
        sa.CheckConstraint("amount > 0", name="ck_orders_amount_positive"),
    )
    op.create_index("ix_orders_exchange", "orders", ["exchange"])
    op.create_index("ix_orders_symbol", "orders", ["symbol"])
    op.create_index("ix_orders_status", "orders", ["status"])
    op.create_table(
        "fills",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column(
            "order_id",
            sa.BigInteger(),
            sa.ForeignKey("orders.id", name="fk_fills_order_id_orders"),
            nullable=False,
        ),
        sa.Column("exchange", sa.String(64), nullable=False),
        sa.Column("trade_id", sa.String(128), nullable=False),
        sa.Column("symbol", sa.String(41), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("amount", money(), nullable=False),
        sa.Column("price", money(), nullable=False),
        sa.Column("fee", money(), nullable=False),
        sa.Column("fee_currency", sa.String(20), nullable=False),
        sa.Column("realized_pnl", money(), nullable=False),
        sa.Column("filled_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fills"),
        sa.UniqueConstraint("exchange", "trade_id", name="uq_fills_exchange_trade_id"),
    )
    op.create_index("ix_fills_order_id", "fills", ["order_id"])
    op.create_table(
        "positions",
        sa.Column("exchange", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(41), nullable=False),
        sa.Column("amount", money(), nullable=False),
        sa.Column("entry_price", money(), nullable=False),
        sa.Column("realized_pnl", money(), nullable=False),
        sa.Column("stop_loss", money()),
        sa.Column("take_profit", money()),
        sa.Column("trailing_stop_pct", money()),
        sa.Column("trail_extreme", money()),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("exchange", "symbol", name="pk_positions"),
    )


def downgrade() -> None:
    op.drop_table("positions")
    op.drop_table("fills")
    op.drop_table("orders")
