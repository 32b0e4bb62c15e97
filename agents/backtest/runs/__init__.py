"""Backtest runs over HTTP: `POST /backtest/run` queues one, a runner works it through
loading bars, signals, simulating and saving; results stay in the agent's tables."""
