"""SQLAlchemy models, one module per aggregate; all share `Base.metadata`."""

from common.models.base import Base
from common.models.supervisor import SupervisorEvent

__all__ = ["Base", "SupervisorEvent"]
