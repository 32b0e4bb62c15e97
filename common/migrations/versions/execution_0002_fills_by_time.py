"""execution: fills by time, for today's realized PnL on every order

Every order's pre-trade check needs today's realized PnL (risk's daily loss limit), a
sum over today's fills. Without an index that was a scan of every fill ever recorded
(2.3 ms at 6,000 fills, growing); with `realized_pnl` included the sum is read from
the index alone, over today's fills only.

Revision ID: execution_0002
Revises: execution_0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "execution_0002"
down_revision: str | None = "execution_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_fills_filled_at", "fills", ["filled_at"], postgresql_include=["realized_pnl"]
    )


def downgrade() -> None:
    op.drop_index("ix_fills_filled_at", table_name="fills")
