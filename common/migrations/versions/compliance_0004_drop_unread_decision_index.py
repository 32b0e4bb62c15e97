"""compliance: drop an index nothing reads

`ix_policy_decisions_approved_at` served the old `max_orders_per_day` count, which
`compliance_0002` replaced with a running count per day. Nothing queries decisions by
(approved, at) any more, and every policy check paid for the index entry.

Revision ID: compliance_0004
Revises: compliance_0003
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "compliance_0004"
down_revision: str | None = "compliance_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_policy_decisions_approved_at", table_name="policy_decisions")


def downgrade() -> None:
    op.create_index("ix_policy_decisions_approved_at", "policy_decisions", ["approved", "at"])
