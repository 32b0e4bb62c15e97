"""The execution agent: orders, fills, positions, balances; the only service that trades."""
