"""What `volex status` and `volex up` report: each service's health, from its own /health."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from common.settings import SERVICES, Settings


@dataclass
class ServiceStatus:
    name: str
    url: str
    healthy: bool
    summary: str
    dependencies: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    restarts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _probe(name: str, url: str, timeout: float) -> tuple[bool, str, dict[str, Any]]:
    try:
        response = httpx.get(f"{url}/health", timeout=timeout)
    except httpx.HTTPError as exc:
        return False, f"unreachable ({exc.__class__.__name__})", {}
    try:
        body = response.json()
    except ValueError:
        return False, f"bad /health answer ({response.status_code})", {}
    dependencies = body.get("dependencies", {})
    failing = [dep for dep, info in dependencies.items() if not info.get("ok")]
    if response.status_code == 200:
        return True, "healthy", dependencies
    return False, "down: " + (", ".join(failing) or str(response.status_code)), dependencies


def collect(settings: Settings, timeout: float = 2.0) -> list[ServiceStatus]:
    """Ask every service for its health, all at once."""
    try:
        state = json.loads((settings.home_dir / "run" / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        state = {}
    components = state.get("components", {})
    urls = {name: settings.url_of(name) for name in SERVICES}
    with ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:
        probes = dict(
            zip(
                SERVICES,
                pool.map(lambda name: _probe(name, urls[name], timeout), SERVICES),
                strict=True,
            )
        )
    result = []
    for name in SERVICES:
        healthy, summary, dependencies = probes[name]
        comp = components.get(name, {})
        result.append(
            ServiceStatus(
                name=name,
                url=urls[name],
                healthy=healthy,
                summary=summary,
                dependencies=dependencies,
                pid=comp.get("pid"),
                restarts=comp.get("restarts", 0),
            )
        )
    return result
