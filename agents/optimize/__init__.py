"""The optimize agent: Parameter search over backtests and walk-forward validation."""
