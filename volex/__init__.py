"""The operator's side: the `volex` command, the embedded servers, the supervisor.

Not a service and not part of the shared kit: it starts and watches the fleet.
"""
