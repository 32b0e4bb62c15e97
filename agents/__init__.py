"""The trading agents, one sub-package per deployable service."""
