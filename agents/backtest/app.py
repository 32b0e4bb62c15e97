"""The backtest service process: `volex serve backtest` runs this app under uvicorn."""

from common.service import create_service

app = create_service("backtest", description="Market data (OHLCV) and backtests.")
