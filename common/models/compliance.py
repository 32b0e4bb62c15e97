from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Index,
    Integer,
    Sequence,
    SmallInteger,
    String,
    Text,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import Base
from common.money import ledger_numeric

# The audit id is drawn before the row is written, because the id is part of what is hashed.
AUDIT_ID_SEQUENCE = Sequence("audit_events_id_seq")
GENESIS_HASH = "0" * 64


class AuditEvent(Base):
    """One fact in compliance's append-only, hash-chained audit log.

    `hash` is sha256 over `prev_hash` and a canonical JSON of the row's content
    (`agents.compliance.chain`), so editing or deleting any row breaks the chain
    from that row on. A trigger refuses UPDATE, DELETE and TRUNCATE; `json` (not
    `jsonb`) keeps `data` exactly as hashed.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger, AUDIT_ID_SEQUENCE, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))
    on_behalf_of: Mapped[str | None] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(String(128))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)

    __table_args__ = (
        Index("ix_audit_events_kind_id", "kind", "id"),
        Index("ix_audit_events_actor_id", "actor", "id"),
        Index("ix_audit_events_subject_id", "subject", "id"),
    )


class AuditChainHead(Base):
    """The newest link of the audit chain (one row), so deleting the newest rows shows too."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    last_id: Mapped[int | None] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (CheckConstraint("id = 1", name="singleton"),)


class CompliancePolicy(Base):
    """The policy set checked before every order (one row; history is in the audit log)."""

    __tablename__ = "compliance_policies"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    restricted_symbols: Mapped[list[str]] = mapped_column(JSON)
    allowed_exchanges: Mapped[list[str]] = mapped_column(JSON)
    trading_windows: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    max_orders_per_day: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_by: Mapped[str] = mapped_column(String(64))

    __table_args__ = (CheckConstraint("id = 1", name="singleton"),)


class PolicyDecision(Base):
    """Every policy check and its outcome (approved orders are counted per day in
    `policy_day_orders` / `policy_day_counts`)."""

    __tablename__ = "policy_decisions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    client_order_id: Mapped[str] = mapped_column(String(64))
    exchange: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(41))
    side: Mapped[str] = mapped_column(String(4))
    type: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(ledger_numeric())
    price: Mapped[Decimal | None] = mapped_column(ledger_numeric())
    approved: Mapped[bool] = mapped_column(Boolean)
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    requested_by: Mapped[str] = mapped_column(Text)
    caller: Mapped[str] = mapped_column(String(64))
    audit_id: Mapped[int | None] = mapped_column(BigInteger)


class PolicyDayOrder(Base):
    """Each order approved on a (UTC) day, once: what `max_orders_per_day` counts. Written
    under the policy lock with the decision that approved it."""

    __tablename__ = "policy_day_orders"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    client_order_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class PolicyDayCount(Base):
    """How many rows `policy_day_orders` has per day, kept with them: a policy check reads
    one row instead of counting the day's approvals."""

    __tablename__ = "policy_day_counts"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    approved: Mapped[int] = mapped_column(Integer)


class AuditReceipt(Base):
    """An event id a sender gave with an event, and the audit row it became: a resent
    event (the sender never heard back) is answered with that row, not appended again."""

    __tablename__ = "audit_receipts"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)  # the caller
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    audit_id: Mapped[int] = mapped_column(BigInteger)
