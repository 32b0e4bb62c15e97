"""The audit chain's arithmetic: canonical content and link hashes (pure, no I/O).

A row's hash is sha256 over its predecessor's hash, a newline, and the canonical
JSON of the row's content: keys sorted, no whitespace, ASCII only, `at` in UTC
with microseconds. The same bytes come back from the database (`data` is kept in
a `json` column, which stores the text as written), so a verifier can recompute
every hash from the rows alone.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from common.models.compliance import GENESIS_HASH

__all__ = ["GENESIS_HASH", "canonical_content", "canonical_json", "link_hash"]


def canonical_json(value: Any) -> str:
    """Deterministic JSON; raises ValueError on NaN or infinities."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def canonical_content(
    *,
    id: int,
    at: datetime,
    kind: str,
    actor: str,
    on_behalf_of: str | None,
    subject: str | None,
    data: dict[str, Any],
) -> str:
    return canonical_json(
        {
            "id": id,
            "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
            "kind": kind,
            "actor": actor,
            "on_behalf_of": on_behalf_of,
            "subject": subject,
            "data": data,
        }
    )


def link_hash(prev_hash: str, content: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{content}".encode()).hexdigest()
