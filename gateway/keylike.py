"""Key-like strings: credentials recognized by their shape, where the gateway does not know the value.

Bearer tokens, vendor keys (`sk-…`, `AKIA…`) and the values under credential-looking JSON keys, in text and in
serialized records. Every match holds one of a few literal triggers near its start, so text is first searched
for those (cheap), and the regex, which has no fixed first bytes, is tried only just before each.
"""

from __future__ import annotations

import re
from itertools import repeat
from typing import Any

REDACTED = "[REDACTED]"
# JSON keys whose values are credentials, whatever they look like.
_CREDENTIAL_NAMES = (
    *("s3_secret", "s3_key", "secret_access_key", "aws_secret_access_key", "api_key", "apikey", "password"),
    *("passwd", "access_token", "refresh_token", "client_secret", "secret", "token"),
)
_CREDENTIAL_KEYS = "(?:" + "|".join(_CREDENTIAL_NAMES) + ")"
# Shapes of credentials worth hiding even when we do not know the value: bearer tokens, vendor keys.
KEY_LIKE = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{12,}"
    r"|\b(?:sk|pk|rk|or|olp)-[A-Za-z0-9_-]{16,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    # values under credential-looking keys, escapes included, up to the quote that closes them: in plain
    # JSON that is the first unescaped quote (`"ab\"cd"` is one value); inside JSON that is itself a string
    # (tool arguments) it is the first escaped quote not escaped again (`\"ab\\\"cd\"` is one value), and
    # never past an unescaped quote, which ends the string holding it (`\"Bearer \\"` ends at its last `"`)
    rf'|("{_CREDENTIAL_KEYS}"\s*:\s*")(?:[^"\\]|\\.){{4,}}'
    rf'|((?:\\?"){_CREDENTIAL_KEYS}(?:\\?")\s*:\s*(?:\\?"))(?:[^"\\]|\\[^"\\]|\\\\(?:\\.|[^"\\])){{4,}}'
    # DuckDB secrets: KEY_ID 'x', SECRET 'y'
    r"|((?:KEY_ID|SECRET)\s+')[^']{4,}"
)
# In a serialized record a DuckDB literal left open ends with its JSON string: what follows is not its.
_KEY_LIKE_BYTES = re.compile(KEY_LIKE.pattern.removesuffix("[^']{4,}").encode() + rb"""(?:[^'"\\]|\\.){4,}""")
# A literal (lower case) that every match of KEY_LIKE contains. The regex has no fixed prefix, so it is tried
# at every byte of a line; a search for these is many times cheaper and lets most records skip it entirely.
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
# The triggers are searched for in a few passes, each a regex starting with a literal: such a regex skips to
# it in a tight loop, where one with a choice of first bytes tests every byte against the set (many times
# slower). The triggers holding a hyphen share a pass, those holding a `k` another: it finds that byte, reads
# on to a trigger's end and looks back at its start. Each trigger left has a pass of its own.
_SHARED = (b"-", b"k")


def _shared_byte(trigger: bytes) -> bytes | None:
    return next((anchor for anchor in _SHARED if anchor in trigger), None)


def _pass(anchor: bytes) -> re.Pattern[bytes]:
    """A regex for the triggers searched by `anchor`."""
    alternatives = []
    for trigger in (t for t in _TRIGGERS if _shared_byte(t) == anchor):
        at = trigger.index(anchor)
        behind = b"(?<=" + re.escape(trigger) + b")" if at else b""
        alternatives.append(re.escape(trigger[at + 1 :]) + behind)
    return re.compile(re.escape(anchor) + b"(?:" + b"|".join(alternatives) + b")")


_PASSES = (
    *(_pass(anchor) for anchor in _SHARED),
    *(re.compile(re.escape(trigger)) for trigger in _TRIGGERS if _shared_byte(trigger) is None),
)
_SEARCH = re.Pattern.search
# The triggers in one pass over text (a header value, an error message): short, so what a search costs is its
# calling, and one call is cheaper than the passes. Only for ASCII text: case-insensitive matching on other
# text pairs letters that lowering does not (the Kelvin sign is a `k`).
TRIGGERS_TEXT = re.compile("|".join(re.escape(trigger.decode()) for trigger in _TRIGGERS))


def may_hold_key(data: bytes) -> bool:
    """Whether `data` holds a trigger, so that it may hold a key-like string: False means it holds none."""
    # map() keeps the loop in C: most batches are short, and what a search costs is then mostly its calling.
    return any(map(_SEARCH, _PASSES, repeat(data.lower())))


def _trigger_depth(name: str) -> int:
    """How far into `\\"name\\"` its first trigger begins: no match of KEY_LIKE has more before its own."""
    spelled = f'\\"{name}\\"'.encode()
    return min(at for trigger in _TRIGGERS if (at := spelled.find(trigger)) >= 0)


# The first bytes a match of KEY_LIKE can have (lower case), and how far before the place where a pass finds
# its trigger it can start: its trigger begins at most 10 bytes into it (`\\"refresh_token\\"`), and a pass
# finds a trigger at most 4 bytes into that (the `k` of `api_key`).
_FIRST_BYTES = re.compile(rb'[abkoprs"\\]')
_REACH = max(map(_trigger_depth, _CREDENTIAL_NAMES)) + max(
    trigger.index(anchor) for trigger in _TRIGGERS if (anchor := _shared_byte(trigger)) is not None
)


def keys_replaced(line: bytes) -> bytes:
    """`line` with key-like strings replaced: `_KEY_LIKE_BYTES.sub`, tried only where a match may start.

    The regex has no fixed first bytes: run along a whole line it costs some 75 ns a byte. Every match holds a
    trigger near its start, so the passes find the triggers and the regex is tried just before each.
    """
    low = line.lower()
    hits = sorted([found.start() for search in _PASSES for found in search.finditer(low)])
    if not hits:
        return line
    match = _KEY_LIKE_BYTES.match
    pieces: list[bytes] = []
    done = tried = 0  # the end of the last match; where the next start to try may be
    for hit in hits:
        for first in _FIRST_BYTES.finditer(low, max(hit - _REACH, tried, done), hit + 1):
            at = first.start()
            if at >= done and (found := match(line, at)) is not None:
                pieces += (line[done:at], _LABEL_BYTES(found))
                done = found.end()
        tried = max(tried, hit + 1)
    if not pieces:
        return line
    pieces.append(line[done:])
    return b"".join(pieces)


def keep_label(kind: type) -> Any:
    """A replacement that keeps what names the secret (`Bearer `, `"api_key": "`) and hides the value."""
    redacted = REDACTED if kind is str else REDACTED.encode()
    empty = kind()
    return lambda m: next((g for g in m.groups() if g), empty) + redacted


_LABEL_BYTES = keep_label(bytes)
LABEL_TEXT = keep_label(str)  # `KEY_LIKE.sub`'s replacement in text, made once
