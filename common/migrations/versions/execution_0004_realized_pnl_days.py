"""execution: realized PnL per UTC day, kept by the database as fills change

Every order's approval needs today's realized PnL (risk's daily loss limit). It was a
sum over the day's fills, read from an index (execution_0002): 1.1 ms at 10,000 fills
today, 8.5 ms at 100,000 and 39 ms at 500,000, on every approval batch. Now one row per
day holds the running total, and the approval reads that row.

The total is kept by statement-level triggers on `fills`, so no way of writing a fill
(the recording statement, a repair by hand) can leave it behind: an insert adds each new
fill's `realized_pnl` to its UTC day, a delete takes it away, an update does both (a
fill moved to another day leaves the first). TRUNCATE empties the totals too. Existing
fills are summed in.

Revision ID: execution_0004
Revises: execution_0003
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "execution_0004"
down_revision: str | None = "execution_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One function per direction: a transition table exists only for the triggers that
# declare it. Rows of a statement are grouped by day first (ON CONFLICT may not touch a
# row twice in one statement).
_ADD = """
    INSERT INTO realized_pnl_days AS d (day, realized)
    SELECT (filled_at AT TIME ZONE 'UTC')::date, {sign}sum(realized_pnl) FROM {rows} GROUP BY 1
    ON CONFLICT (day) DO UPDATE SET realized = d.realized + EXCLUDED.realized
"""


def _function(name: str, body: str) -> str:
    return (
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n{body};\nRETURN NULL;\nEND\n$$"
    )


def upgrade() -> None:
    op.create_table(
        "realized_pnl_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("realized", sa.Numeric(38, 18), nullable=False),
        sa.PrimaryKeyConstraint("day", name="pk_realized_pnl_days"),
    )
    added = _ADD.format(rows="new_fills", sign="")
    removed = _ADD.format(rows="old_fills", sign="-")
    op.execute(_function("realized_pnl_days_add", added))
    op.execute(_function("realized_pnl_days_remove", removed))
    op.execute(_function("realized_pnl_days_change", f"{removed};\n{added}"))
    op.execute(_function("realized_pnl_days_clear", "DELETE FROM realized_pnl_days"))
    op.execute(
        "CREATE TRIGGER fills_realized_add AFTER INSERT ON fills"
        " REFERENCING NEW TABLE AS new_fills"
        " FOR EACH STATEMENT EXECUTE FUNCTION realized_pnl_days_add()"
    )
    op.execute(
        "CREATE TRIGGER fills_realized_remove AFTER DELETE ON fills"
        " REFERENCING OLD TABLE AS old_fills"
        " FOR EACH STATEMENT EXECUTE FUNCTION realized_pnl_days_remove()"
    )
    op.execute(
        "CREATE TRIGGER fills_realized_change AFTER UPDATE ON fills"
        " REFERENCING OLD TABLE AS old_fills NEW TABLE AS new_fills"
        " FOR EACH STATEMENT EXECUTE FUNCTION realized_pnl_days_change()"
    )
    op.execute(
        "CREATE TRIGGER fills_realized_clear AFTER TRUNCATE ON fills"
        " FOR EACH STATEMENT EXECUTE FUNCTION realized_pnl_days_clear()"
    )
    op.execute(
        "INSERT INTO realized_pnl_days (day, realized)"
        " SELECT (filled_at AT TIME ZONE 'UTC')::date, sum(realized_pnl) FROM fills GROUP BY 1"
    )


def downgrade() -> None:
    for trigger in ("add", "remove", "change", "clear"):
        op.execute(f"DROP TRIGGER fills_realized_{trigger} ON fills")
        op.execute(f"DROP FUNCTION realized_pnl_days_{trigger}()")
    op.drop_table("realized_pnl_days")
