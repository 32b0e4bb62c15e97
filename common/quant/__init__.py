"""Quantitative kit shared by the backtest and signal agents.

`bars` (OHLCV arrays and timeframes), `strategies` (one definition of each named
strategy, used for backtests and live signals alike), `engine` (the backtest
engine), `features` (model features). Floats are fine here: this is analysis,
not the ledger.
"""
