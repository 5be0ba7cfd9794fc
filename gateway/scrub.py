"""Keeping secrets out of everything that leaves the gateway: client error bodies, logs, records."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"
# Shapes of credentials worth hiding even when we do not know the value: bearer tokens, vendor keys.
_KEY_LIKE = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{12,}"
    r"|\b(?:sk|pk|rk|or|olp)-[A-Za-z0-9_-]{16,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    # values under credential-looking keys, also inside JSON that is itself a string (tool arguments)
    r'|((?:\\?")(?:s3_secret|s3_key|secret_access_key|aws_secret_access_key|api_key|apikey|password|passwd'
    r'|access_token|refresh_token|client_secret|secret|token)(?:\\?")\s*:\s*(?:\\?"))[^"\\]{4,}'
    # DuckDB secrets: KEY_ID 'x', SECRET 'y'
    r"|((?:KEY_ID|SECRET)\s+')[^']{4,}"
)
_KEY_LIKE_BYTES = re.compile(_KEY_LIKE.pattern.encode())
# A literal (lower case) that every match of _KEY_LIKE contains. The regex has no fixed prefix, so it is tried
# at every byte of a line; these substring checks are ~10x cheaper and let most records skip it entirely.
_TRIGGERS = (
    b"bearer",
    b"sk-",
    b"pk-",
    b"rk-",
    b"or-",
    b"olp-",
    b"akia",
    b"secret",
    b"s3_key",
    b"api_key",
    b"apikey",
    b"passw",
    b'token"',
    b'token\\"',
    b"key_id",
)


def _keep_label(kind: type) -> Any:
    """A replacement that keeps what names the secret (`Bearer `, `"api_key": "`) and hides the value."""
    redacted = REDACTED if kind is str else REDACTED.encode()
    empty = kind()
    return lambda m: next((g for g in m.groups() if g), empty) + redacted


class Scrubber:
    """Replaces known secret values and key-like strings."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))
        self._bytes = tuple(s.encode() for s in self.secrets)

    def text(self, value: str) -> str:
        """`value` with every known secret and key-like string replaced."""
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return _KEY_LIKE.sub(_keep_label(str), value)

    def line(self, value: bytes) -> bytes:
        """A serialized record with secrets and key-like strings replaced (one pass over the whole line)."""
        value = self.raw(value)
        lowered = value.lower()
        if not any(trigger in lowered for trigger in _TRIGGERS):
            return value
        return _KEY_LIKE_BYTES.sub(_keep_label(bytes), value)

    def raw(self, value: bytes) -> bytes:
        """Known secrets replaced in raw bytes (cheap: used on every upstream error body)."""
        for secret in self._bytes:
            if secret in value:
                value = value.replace(secret, REDACTED.encode())
        return value
