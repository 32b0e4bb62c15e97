"""The monitor agent: Health history of the fleet, metrics, alerts."""
