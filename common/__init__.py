"""The shared kit every VolexSwarm process is built from. Never imports a service."""

__version__ = "0.1.0"
