"""signal: an index for the newest signals first, whatever the market

`GET /signals` without a symbol reads the newest rows of all markets; the time-series
index leads with (symbol, exchange), so that query sorted the whole table (11 ms at
25,000 rows, growing with the history). A hypertable already has TimescaleDB's own
index on the time column, so this one is only for a plain table.

Revision ID: signal_0003
Revises: signal_0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "signal_0003"
down_revision: str | None = "signal_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HYPERTABLE = sa.text(
    "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables"
    " WHERE hypertable_name = 'signals')"
)


def _is_hypertable() -> bool:
    bind = op.get_bind()
    if not bind.execute(
        sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    ).first():
        return False
    return bool(bind.execute(HYPERTABLE).scalar())


def upgrade() -> None:
    if not _is_hypertable():
        op.create_index(
            "ix_signals_generated_at_id",
            "signals",
            [sa.text("generated_at DESC"), sa.text("id DESC")],
        )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_signals_generated_at_id")
