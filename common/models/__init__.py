"""SQLAlchemy models, one module per aggregate; all share `Base.metadata`."""

from common.models.base import Base
from common.models.compliance import AuditChainHead, AuditEvent, CompliancePolicy, PolicyDecision
from common.models.supervisor import SupervisorEvent

__all__ = [
    "AuditChainHead",
    "AuditEvent",
    "Base",
    "CompliancePolicy",
    "PolicyDecision",
    "SupervisorEvent",
]
