"""outbox: a time before which an event is not sent again

An event compliance refuses as invalid is set aside for a while instead of being sent
again at once, so it cannot hold back the events queued behind it.

Revision ID: outbox_0003
Revises: outbox_0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "outbox_0003"
down_revision: str | None = "outbox_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "event_outbox",
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_column("event_outbox", "next_attempt_at")
