"""Proxy keys: read from the environment, checked in constant time, known to logs only by name.

Keys: `PROXY_KEY` (name "default"), `PROXY_KEYS_EXTRA` (comma-separated; "extra-1", "extra-2", ...) and
named keys `PROXY_KEY_<NAME>` (name "<name>" in lower case). With none configured the gateway makes a
one-time key (name "generated") unless it was told explicitly to run open.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import AuthenticationFailed

NAMED_PREFIX = "PROXY_KEY_"


def _digest(key: str) -> bytes:
    # Header bytes that are not UTF-8 reach us as surrogate escapes; they must fail to match, not crash.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class KeyRing:
    """The accepted proxy keys (as digests) with their names; `open` accepts any caller."""

    digests: tuple[tuple[bytes, str], ...]
    open: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, allow_open: bool = False) -> KeyRing:
        """Collect every configured key; an empty ring is open only when asked to be."""
        pairs = [(v, n) for n, v in named_keys(env).items()]
        return cls(tuple((_digest(key), name) for key, name in pairs if key), open=allow_open and not pairs)

    def with_key(self, key: str, name: str) -> KeyRing:
        return KeyRing((*self.digests, (_digest(key), name)), open=False)

    @property
    def empty(self) -> bool:
        return not self.digests

    def authenticate(self, header: str | None) -> str | None:
        """The name of the key in an `Authorization: Bearer` header; AuthenticationFailed otherwise."""
        if self.open:
            return None
        if not header:
            raise AuthenticationFailed("Missing API key: send `Authorization: Bearer <proxy key>`.")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed("Malformed Authorization header: expected `Bearer <proxy key>`.")
        found = self._find(token.strip())
        if found is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return found

    def authenticate_either(self, header: str | None, api_key: str | None) -> str | None:
        """As `authenticate`, the key also accepted as `x-api-key`, where Anthropic's clients send it."""
        if self.open:
            return None
        if api_key and api_key.strip():
            found = self._find(api_key.strip())
            if found is not None:
                return found
            if not header:
                raise AuthenticationFailed("Incorrect API key provided.")
        elif not header:
            raise AuthenticationFailed(
                "Missing API key: send `x-api-key: <proxy key>` or `Authorization: Bearer <proxy key>`."
            )
        return self.authenticate(header)

    def _find(self, token: str) -> str | None:
        """The name of the key `token` is, or None."""
        candidate = _digest(token)
        found = None
        for digest, name in self.digests:  # no early exit: every key is compared every time
            if hmac.compare_digest(candidate, digest) and found is None:
                found = name
        return found


def named_keys(env: Mapping[str, str]) -> dict[str, str]:
    """Key name -> key, from every variable that configures one."""
    keys: dict[str, str] = {}
    if env.get("PROXY_KEY"):
        keys["default"] = env["PROXY_KEY"]
    extra = [k.strip() for k in env.get("PROXY_KEYS_EXTRA", "").split(",") if k.strip()]
    keys.update({f"extra-{i}": key for i, key in enumerate(extra, 1)})
    for var, value in env.items():
        if var.startswith(NAMED_PREFIX) and value:
            keys[var.removeprefix(NAMED_PREFIX).lower()] = value
    return keys


def one_time_key() -> str:
    """A fresh random proxy key, for runs with none configured."""
    return "olp-" + secrets.token_urlsafe(24)
