"""Exchange adapters: the only code in VolexSwarm that talks to an exchange.

`ExchangeAdapter` is the interface; `SimExchange` the offline simulated exchange.
Every error is one of `errors.ExchangeError`'s family.
"""

from agents.execution.exchange.base import (
    Balance,
    Bar,
    ExchangeAdapter,
    ExchangeOrder,
    Market,
    OrderBook,
    OrderStatus,
    Ticker,
    Trade,
)
from agents.execution.exchange.errors import (
    AuthenticationError,
    BadRequest,
    BadSymbol,
    DuplicateOrder,
    ExchangeError,
    ExchangeTimeout,
    InsufficientFunds,
    InvalidOrder,
    NetworkError,
    OrderNotFound,
    RateLimited,
    retry_read,
)
from agents.execution.exchange.sim import SimExchange
from agents.execution.exchange.sim_markets import DEFAULT_MARKETS, Fees, MarketSpec

__all__ = [
    "DEFAULT_MARKETS",
    "AuthenticationError",
    "BadRequest",
    "BadSymbol",
    "Balance",
    "Bar",
    "DuplicateOrder",
    "ExchangeAdapter",
    "ExchangeError",
    "ExchangeOrder",
    "ExchangeTimeout",
    "Fees",
    "InsufficientFunds",
    "InvalidOrder",
    "Market",
    "MarketSpec",
    "NetworkError",
    "OrderBook",
    "OrderNotFound",
    "OrderStatus",
    "RateLimited",
    "SimExchange",
    "Ticker",
    "Trade",
    "retry_read",
]
