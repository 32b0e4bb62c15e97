"""SQLAlchemy models, one module per aggregate; all share `Base.metadata`."""

from common.models.autonomous import AutonomousDecision, AutonomousRun
from common.models.backtest import BacktestEquity, BacktestRun, BacktestTrade
from common.models.base import Base
from common.models.compliance import (
    AuditChainHead,
    AuditEvent,
    AuditReceipt,
    CompliancePolicy,
    PolicyDecision,
)
from common.models.execution import Fill, Order, Position, RealizedPnlDay
from common.models.market_data import Ohlcv, OhlcvFetchJob
from common.models.outbox import OutboxEvent
from common.models.risk import (
    RiskAccountPeak,
    RiskCheck,
    RiskEquityPeak,
    RiskEquitySnapshot,
    RiskLimits,
    RiskTradingState,
    RiskTradingStateChange,
)
from common.models.signal import SignalModel, SignalRecord
from common.models.supervisor import SupervisorEvent

__all__ = [
    "AuditChainHead",
    "AuditEvent",
    "AuditReceipt",
    "AutonomousDecision",
    "AutonomousRun",
    "BacktestEquity",
    "BacktestRun",
    "BacktestTrade",
    "Base",
    "CompliancePolicy",
    "Fill",
    "Ohlcv",
    "OhlcvFetchJob",
    "Order",
    "OutboxEvent",
    "PolicyDecision",
    "Position",
    "RealizedPnlDay",
    "RiskAccountPeak",
    "RiskCheck",
    "RiskEquityPeak",
    "RiskEquitySnapshot",
    "RiskLimits",
    "RiskTradingState",
    "RiskTradingStateChange",
    "SignalModel",
    "SignalRecord",
    "SupervisorEvent",
]
