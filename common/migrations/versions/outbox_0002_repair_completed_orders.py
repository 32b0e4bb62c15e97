"""outbox: repair queued status events that compliance refuses

An order reaching status `filled` was audited as `order.filled`, the kind of a single
fill, which compliance checks as a FillEvent and refuses without its fields. The relay
delivers in order, so the first such event stopped every later one. Execution now writes
`order.completed` for it; this renames the ones still queued (a status event carries
`filled` and `exchange_order_id`, never a `fill_id`), so the queue moves again.

Revision ID: outbox_0002
Revises: outbox_0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "outbox_0002"
down_revision: str | None = "outbox_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE event_outbox SET payload = jsonb_set(payload, '{kind}', '\"order.completed\"')"
        " WHERE payload->>'kind' = 'order.filled' AND NOT (payload->'data' ? 'fill_id')"
    )


def downgrade() -> None:
    pass  # the renamed events may have been delivered; nothing to put back
