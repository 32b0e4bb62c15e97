"""SQLAlchemy models, one module per aggregate; all share `Base.metadata`."""

from common.models.base import Base
from common.models.risk import (
    RiskAuditOutbox,
    RiskCheck,
    RiskEquityPeak,
    RiskEquitySnapshot,
    RiskLimits,
    RiskTradingState,
    RiskTradingStateChange,
)
from common.models.supervisor import SupervisorEvent

__all__ = [
    "Base",
    "RiskAuditOutbox",
    "RiskCheck",
    "RiskEquityPeak",
    "RiskEquitySnapshot",
    "RiskLimits",
    "RiskTradingState",
    "RiskTradingStateChange",
    "SupervisorEvent",
]
