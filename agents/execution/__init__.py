"""The execution agent: Orders, fills, positions and balances; the only service that talks to an exchange."""
