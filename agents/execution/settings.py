from decimal import Decimal

from pydantic import Field

from common.settings import Settings


class ExecutionSettings(Settings):
    """Execution's own settings (env prefix VOLEX_), on top of the fleet's."""

    live_trading: bool = Field(
        default=False, description="VOLEX_LIVE_TRADING=1 to trade real money"
    )
    exchange_api_hosts: dict[str, str] = Field(
        default_factory=dict,
        description='JSON {"binance": "http://host:port"}: send an exchange\'s API calls '
        "to another host (a proxy, or a local fake in tests)",
    )
    sim_seed: int = Field(default=42, description="the simulated exchange's price-path seed")
    sim_quote_balance: Decimal = Field(default=Decimal("10000"), gt=0)
    paper_quote_currency: str = Field(
        default="USDT",
        description="what a new paper account on a real exchange starts with "
        "(sim_quote_balance of it)",
    )
    sim_latency_ms: int = Field(default=0, ge=0, le=10_000)
    sync_interval: float = Field(default=0.5, gt=0, description="seconds between order syncs")
    snapshot_interval: float = Field(
        default=10.0, gt=0, description="seconds between portfolio snapshots sent to risk"
    )
    unknown_grace: float = Field(
        default=10.0, gt=0, description="seconds before an order missing on the exchange is final"
    )
