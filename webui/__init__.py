"""The web UI service: a client of the agents, owning no data."""
