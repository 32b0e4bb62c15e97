"""compliance: audit log (hash-chained, append-only), policies, policy decisions

Revision ID: compliance_0001
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from common.money import ledger_numeric

revision: str = "compliance_0001"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("compliance",)
depends_on: str | Sequence[str] | None = None

GENESIS_HASH = "0" * 64

APPEND_ONLY = """
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence("audit_events_id_seq")))
    op.create_table(
        "audit_events",
        sa.Column(
            "id",
            sa.BigInteger(),
            server_default=sa.text("nextval('audit_events_id_seq')"),
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("on_behalf_of", sa.String(64)),
        sa.Column("subject", sa.String(128)),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
        sa.UniqueConstraint("hash", name="uq_audit_events_hash"),
    )
    op.execute("ALTER SEQUENCE audit_events_id_seq OWNED BY audit_events.id")
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_kind_id", "audit_events", ["kind", "id"])
    op.create_index("ix_audit_events_actor_id", "audit_events", ["actor", "id"])
    op.create_index("ix_audit_events_subject_id", "audit_events", ["subject", "id"])

    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("last_id", sa.BigInteger()),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_chain_head"),
        sa.CheckConstraint("id = 1", name="ck_audit_chain_head_singleton"),
    )
    op.execute(
        sa.text(
            "INSERT INTO audit_chain_head (id, last_id, last_hash) VALUES (1, NULL, :h)"
        ).bindparams(h=GENESIS_HASH)
    )

    op.execute(APPEND_ONLY)
    op.execute(
        "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events"
        " FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
    )
    # The head moves forward by UPDATE; it is never deleted.
    op.execute(
        "CREATE TRIGGER audit_chain_head_kept BEFORE DELETE ON audit_chain_head"
        " FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER audit_chain_head_no_truncate BEFORE TRUNCATE ON audit_chain_head"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
    )

    op.create_table(
        "compliance_policies",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("restricted_symbols", sa.JSON(), nullable=False),
        sa.Column("allowed_exchanges", sa.JSON(), nullable=False),
        sa.Column("trading_windows", sa.JSON(), nullable=False),
        sa.Column("max_orders_per_day", sa.Integer()),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("updated_by", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_compliance_policies"),
        sa.CheckConstraint("id = 1", name="ck_compliance_policies_singleton"),
    )
    # Paper trading on the simulated exchange is allowed out of the box; anything else is
    # the operator's explicit choice (PUT /policies).
    op.execute(
        "INSERT INTO compliance_policies (id, restricted_symbols, allowed_exchanges,"
        " trading_windows, max_orders_per_day, version, updated_by)"
        """ VALUES (1, '[]', '["sim"]', '[]', NULL, 1, 'migration')"""
    )

    op.create_table(
        "policy_decisions",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("exchange", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(41), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("amount", ledger_numeric(), nullable=False),
        sa.Column("price", ledger_numeric()),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("caller", sa.String(64), nullable=False),
        sa.Column("audit_id", sa.BigInteger()),
        sa.PrimaryKeyConstraint("id", name="pk_policy_decisions"),
    )
    op.create_index("ix_policy_decisions_approved_at", "policy_decisions", ["approved", "at"])


def downgrade() -> None:
    op.drop_table("policy_decisions")
    op.drop_table("compliance_policies")
    op.drop_table("audit_chain_head")
    op.drop_table("audit_events")
    op.execute("DROP FUNCTION audit_refuse_change()")
