"""The risk agent: Risk limits, pre-trade checks and the trading state (kill switch)."""
