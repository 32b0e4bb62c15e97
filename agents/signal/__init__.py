"""The signal agent: Indicators, strategy signals, ML models and the autonomous decide loop."""
