"""Bearer-token authentication shared by every service.

Tokens are 256-bit random strings generated at bootstrap and kept in Vault. A
service holds only SHA-256 digests of the tokens it accepts (readable by every
service) plus its own token for outgoing calls (readable by it alone), so no
service can impersonate another. Digests are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common.errors import ServiceUnavailable, Unauthorized

TOKEN_DIGESTS_PATH = "volex/api-token-digests"  # noqa: S105 - a path, not a secret
OPERATOR = "operator"
TOKENS_ROTATED_CHANNEL = "tokens-rotated"  # `volex token --rotate` announces itself here


def api_token_path(identity: str) -> str:
    return f"volex/api-tokens/{identity}"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who is calling: the operator (a person, the CLI, the web UI on their behalf) or a service."""

    kind: Literal["operator", "service"]
    name: str


class Authenticator:
    """Maps presented tokens to callers using the digests loaded from Vault."""

    def __init__(self) -> None:
        self._digests: dict[str, str] = {}
        self.unavailable_reason: str | None = "token digests not loaded from Vault yet"

    def load(self, digests: dict[str, str]) -> None:
        self._digests = dict(digests)
        self.unavailable_reason = None

    @property
    def ready(self) -> bool:
        return bool(self._digests)

    def identify(self, token: str) -> Caller | None:
        presented = digest(token)
        found: str | None = None
        for identity, known in self._digests.items():
            # Compare against every digest so timing says nothing about which matched.
            if hmac.compare_digest(presented, known):
                found = identity
        if found is None:
            return None
        return Caller("operator" if found == OPERATOR else "service", found)


_bearer = HTTPBearer(auto_error=False, description="the operator token from `volex token`")


async def require_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized(
            "missing bearer token: send 'Authorization: Bearer <token>' "
            "(the operator token is printed by `volex token`)"
        )
    authenticator: Authenticator = request.app.state.kit.authenticator
    if not authenticator.ready:
        raise ServiceUnavailable(
            f"cannot check tokens right now: {authenticator.unavailable_reason}"
        )
    caller = authenticator.identify(credentials.credentials)
    if caller is None:
        raise Unauthorized("invalid bearer token: get the current one with `volex token`")
    request.state.caller = caller
    return caller


CallerDep = Annotated[Caller, Depends(require_caller)]
