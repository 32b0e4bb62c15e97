"""The backtest agent: Market data (OHLCV) and backtests."""
