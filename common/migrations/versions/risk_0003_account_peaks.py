"""risk: a drawdown peak per account

Execution trades several accounts (one per exchange) and says which one each check and
snapshot is about; each account's equity is measured against its own peak
(`risk_account_peaks`). The single peak (`risk_equity_peak`) stays for callers that name
no account.

Revision ID: risk_0003
Revises: risk_0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "risk_0003"
down_revision: str | None = "risk_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "risk_account_peaks",
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("peak_equity", sa.Numeric(38, 18), nullable=False),
        sa.Column("peak_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_equity", sa.Numeric(38, 18), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account", name="pk_risk_account_peaks"),
    )


def downgrade() -> None:
    op.drop_table("risk_account_peaks")
