"""execution: an index of the orders not yet final, per exchange

The reconciler (every half second), the bracket keeper and every approval batch ask for
an exchange's orders that are not final. With all orders on one exchange the planner
took the exchange index and filtered every order ever placed (1,300 rows read for none
found in a benchmark, and growing with history). This partial index holds only the
unfinished orders, so those reads cost the same with a hundred orders or a million.

Revision ID: execution_0003
Revises: execution_0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "execution_0003"
down_revision: str | None = "execution_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_orders_unfinished",
        "orders",
        ["exchange", "id"],
        postgresql_where=sa.text("status IN ('pending', 'unknown', 'open', 'partially_filled')"),
    )


def downgrade() -> None:
    op.drop_index("ix_orders_unfinished", table_name="orders")
