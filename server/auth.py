"""API keys: who is calling, and may they. Keys are compared in constant time and never logged."""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence

from .constants import MAX_PRIORITY, NO_AUTH_NAME
from .errors import Forbidden, Unauthorized
from .model import Principal, Role
from .settings import KeyConfig, digest


class Keyring:
    def __init__(self, keys: Sequence[KeyConfig], *, no_auth: bool = False) -> None:
        self._keys = tuple(keys)
        self._no_auth = no_auth

    @staticmethod
    def presented(headers: Mapping[str, str]) -> str | None:
        key = headers.get("x-api-key")
        if key:
            return key
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None

    def identify(self, headers: Mapping[str, str]) -> Principal | None:
        """The caller's principal, or None for a missing or unknown key."""
        key = self.presented(headers)
        if key is None:
            return Principal(NO_AUTH_NAME, "admin", MAX_PRIORITY) if self._no_auth else None
        presented = digest(key)
        found: KeyConfig | None = None
        # Every configured key is compared, so the time taken does not tell which one matched.
        for candidate in self._keys:
            if hmac.compare_digest(presented, candidate.sha256):
                found = candidate
        if found is None:
            return None
        return Principal(found.name, found.role, found.max_priority)

    def require(self, headers: Mapping[str, str], role: Role) -> Principal:
        principal = self.identify(headers)
        if principal is None:
            raise Unauthorized("send a valid key in X-API-KEY (or Authorization: Bearer)")
        if not principal.allows(role):
            raise Forbidden(f"the key {principal.name!r} has the role {principal.role}; this needs {role}")
        return principal
