"""JSON-lines logging with the service name, the request id and secrets redacted.

Every value the kit loads from Vault (and the embedded servers' passwords) is
registered here; the formatter replaces any occurrence of one with `[redacted]`
before a line is written, whoever logged it.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_MIN_SECRET_LENGTH = 6
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
REDACTED = "[redacted]"


def register_secret(value: object) -> None:
    """Remember a secret value so that no log line ever contains it."""
    if isinstance(value, str) and len(value) >= _MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)
    elif isinstance(value, dict):
        for item in value.values():
            register_secret(item)


def redact(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, request id, message, extras."""

    _RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in self._RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # Redact before encoding: JSON escaping (quotes, backslashes, non-ASCII) would
        # otherwise hide a secret from a search of the encoded line.
        return json.dumps(_redact_values(entry), default=str)


def _redact_values(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redact_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_values(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every logger (uvicorn's included) to stdout as JSON lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Request lines are logged by our middleware (path only, never headers or query).
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("httpx", "httpcore", "hvac", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
