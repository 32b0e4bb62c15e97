"""compliance: an event sent twice is appended once

A sender that does not hear back from `POST /audit/events[/batch]` (a timeout, or a
crash before it marked the events sent) sends them again. Each event may carry the
sender's `event_id`; `audit_receipts` remembers, per caller, which audit row each id
became, so a resent event is answered with that row instead of a second one.

Revision ID: compliance_0003
Revises: compliance_0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "compliance_0003"
down_revision: str | None = "compliance_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_receipts",
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("audit_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", "event_id", name="pk_audit_receipts"),
    )


def downgrade() -> None:
    op.drop_table("audit_receipts")
