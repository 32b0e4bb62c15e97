"""risk: audit events go through the kit's outbox (`event_outbox`)

Risk had an outbox of its own (`risk_audit_outbox`, rows kept after delivery); the
other agents use `event_outbox` and the kit's relay (`common/outbox.py`). Events risk
had not delivered yet move to `event_outbox` (oldest first, with their event id, their
`occurred_at`, their attempts and when they may go next); the delivered ones are in
compliance's audit log already. Then the old table goes.

Revision ID: risk_0002
Revises: risk_0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "risk_0002"
down_revision: str | None = "risk_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = "outbox_0003"


def upgrade() -> None:
    op.execute(
        """
        INSERT INTO event_outbox (service, payload, created_at, attempts, last_error,
                                  next_attempt_at)
        SELECT 'risk',
               jsonb_build_object(
                   'kind', kind, 'actor', actor, 'subject', subject,
                   'data', data || jsonb_build_object(
                       'occurred_at', to_char(created_at AT TIME ZONE 'UTC',
                                              'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')),
                   'event_id', event_id),
               created_at, attempts, last_error, next_attempt_at
        FROM risk_audit_outbox
        WHERE delivered_at IS NULL
        ORDER BY id
        """
    )
    op.drop_table("risk_audit_outbox")


def downgrade() -> None:
    """Back to risk's own table, with risk's events still queued in `event_outbox`."""
    op.create_table(
        "risk_audit_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(128)),
        sa.Column("data", JSONB(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_risk_audit_outbox"),
        sa.UniqueConstraint("event_id", name="uq_risk_audit_outbox_event_id"),
    )
    op.create_index("ix_risk_audit_outbox_delivered_at", "risk_audit_outbox", ["delivered_at"])
    op.create_index(
        "ix_risk_audit_outbox_pending",
        "risk_audit_outbox",
        ["id"],
        postgresql_where=sa.text("delivered_at IS NULL"),
    )
    op.execute(
        """
        INSERT INTO risk_audit_outbox (event_id, created_at, kind, actor, subject, data,
                                       attempts, last_error, next_attempt_at)
        SELECT coalesce(payload->>'event_id', gen_random_uuid()::text), created_at,
               payload->>'kind', payload->>'actor', payload->>'subject',
               coalesce(payload->'data', '{}'::jsonb), attempts, last_error, next_attempt_at
        FROM event_outbox WHERE service = 'risk' ORDER BY id
        """
    )
    op.execute("DELETE FROM event_outbox WHERE service = 'risk'")
