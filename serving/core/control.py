"""Who may change what the server serves (load and unload models), whatever the protocol.

Model control is off unless the server runs with --model-control-mode explicit, and then takes the
admin token when one is set. Every front end passes the call's `authorization` value as it came
(gRPC metadata and HTTP headers carry the same `Bearer <token>`).
"""

from __future__ import annotations

import hmac

from mimo.serving.core.errors import PermissionDenied, Unauthenticated


def bearer(token: str) -> bytes:
    """What `bearer_matches` compares a call's `authorization` value with: the token's bytes."""
    return token.encode()


def bearer_matches(authorization: str | bytes | None, expected: bytes) -> bool:
    """Whether an `authorization` value is `Bearer <expected>`: the scheme in any case (RFC 9110
    11.1), the token compared in constant time."""
    if authorization is None:
        return False
    given = authorization.encode("latin-1", "replace") if isinstance(authorization, str) else authorization
    scheme, _, token = given.strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), expected)


def authorization_of(pairs) -> str | bytes | None:
    """The `authorization` value among (key, value) pairs (gRPC metadata, lower-cased HTTP headers)."""
    for key, value in pairs or ():
        if key == "authorization":
            return value
    return None


class ModelControl:
    """Whether a load or unload may change what the server serves."""

    def __init__(self, mode: str, admin_token: str | None):
        self.explicit = mode == "explicit"
        self._expected = bearer(admin_token) if admin_token else None

    @property
    def needs_admin_token(self) -> bool:
        return self._expected is not None

    def check(self, authorization: str | bytes | None) -> None:
        """Raise PermissionDenied (model control off) or Unauthenticated (no or wrong admin token)."""
        if not self.explicit:
            raise PermissionDenied("model loading and unloading is off (--model-control-mode none, the default); "
                                   "start the server with --model-control-mode explicit to allow it")
        if self._expected and not bearer_matches(authorization, self._expected):
            raise Unauthenticated("loading and unloading models needs the admin token "
                                  "(send 'authorization: Bearer <admin token>')")
