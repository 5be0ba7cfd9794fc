"""Keeping secrets out of everything that leaves the gateway: client error bodies, logs, records, streams.

The gateway's own secrets are known, and found in every spelling they can take; credentials it does not know
are recognized by their shape (`gateway.keylike`). `Scrubber` replaces both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import AnyStr, Generic

from gateway.keylike import KEY_LIKE, LABEL_TEXT, REDACTED, TRIGGERS_TEXT, keys_replaced, may_hold_key

# A known secret reaches a body or a record in many spellings: as itself, URL-encoded, JSON-escaped once,
# or twice (an upstream error body kept as a string field of a record). Each secret gets one regex taking
# any of these spellings for each of its characters, so mixes are caught too. The regex has no fixed
# prefix, so it only runs near an "anchor": the secret's longest run of ASCII letters and digits, which
# every spelling keeps as is.
_MIN_SECRET = 4
_MIN_ANCHOR = 4
_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")
_JSON_SHORT = {'"': '"', "\\": "\\", "/": "/", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}
# Characters a JSON string carries only escaped: bare, a `"` may be the quote that closes the string.
_ESCAPED_ONLY = frozenset('"\\')
# A JSON escape still open where a match starts: an odd run of backslashes, maybe `u` and a few hex digits.
_OPEN_ESCAPE = r"(?<!\\)(?:\\\\)*(\\(?:u[0-9a-fA-F]{0,3})?)\Z"
_OPEN_ESCAPE_TEXT = re.compile(_OPEN_ESCAPE)
_OPEN_ESCAPE_BYTES = re.compile(_OPEN_ESCAPE.encode())
_LOOK_BACK = 64  # how much text before a match is searched for an open escape
_SEARCHED_ALONE = 3  # anchors searched around one by one before the rest of a value is searched at once

Position = str  # the characters allowed at one place of a spelling: one, or a hex digit in either case
Option = tuple[str, int]  # a regex and the most bytes it can match


def _is_alnum(ch: str) -> bool:
    """An ASCII letter or digit: kept as is by every spelling (escaping them would hide the anchor anyway)."""
    return ch.isascii() and ch.isalnum()


def _hex(code: int, width: int) -> list[Position]:
    """Hex digits of `code`, each in either case."""
    return [d + d.upper() if d.isalpha() else d for d in f"{code:0{width}x}"]


def _json_forms(ch: str) -> list[list[Position]]:
    """The ways a JSON encoder writes `ch` inside a string, escapes first."""
    forms: list[list[Position]] = []
    if ch in _JSON_SHORT:
        forms.append(["\\", _JSON_SHORT[ch]])
    if not _is_alnum(ch):
        utf16 = ch.encode("utf-16-be")  # two \u escapes (a surrogate pair) beyond the basic plane
        units = [int.from_bytes(utf16[i : i + 2], "big") for i in range(0, len(utf16), 2)]
        forms.append([p for unit in units for p in ("\\", "u", *_hex(unit, 4))])
    if ch not in _ESCAPED_ONLY and ch >= " ":
        forms.append([ch])
    return forms


def _position(p: Position) -> str:
    return re.escape(p) if len(p) == 1 else f"[{p}]"


def _one_of(options: list[Option]) -> Option:
    """A regex for any of `options`, tried in order (longer escapes first, so none is cut in half)."""
    unique = list(dict.fromkeys(options))
    regex = unique[0][0] if len(unique) == 1 else "(?:" + "|".join(r for r, _ in unique) + ")"
    return regex, max(width for _, width in unique)


def _written(form: list[Position]) -> Option:
    """A spelling as written."""
    return "".join(_position(p) for p in form), sum(len(p[0].encode()) for p in form)


def _escaped_again(form: list[Position]) -> Option:
    """A JSON escape as it reads once its string is JSON-escaped in turn (`\\"` becomes `\\\\\\"`)."""
    parts = [
        _written([p]) if _is_alnum(p[0]) else _one_of([_written(f) for f in _json_forms(p)]) for p in form
    ]
    return "".join(r for r, _ in parts), sum(width for _, width in parts)


def _spellings(ch: str, bare: bool) -> Option:
    """One character of a secret in any spelling; `bare` allows it unescaped even where JSON could not."""
    if _is_alnum(ch):
        return re.escape(ch), 1
    forms = _json_forms(ch)
    options = [_escaped_again(f) for f in forms if len(f) > 1]
    options += [_written(f) for f in forms]
    utf8 = ch.encode()
    options.append(("".join("%" + "".join(_position(p) for p in _hex(b, 2)) for b in utf8), 3 * len(utf8)))
    if ch == " ":
        options.append((r"\+", 1))
    if bare:
        options.append((re.escape(ch), len(utf8)))
    return _one_of(options)


def _anchor(secret: str) -> tuple[int, int]:
    """Where the secret's longest run of ASCII letters and digits is, or (0, 0) if it has none long enough."""
    runs = [m.span() for m in _ALNUM_RUN.finditer(secret)]
    start, end = max(runs, key=lambda span: span[1] - span[0], default=(0, 0))
    return (start, end) if end - start >= _MIN_ANCHOR else (0, 0)


def _pattern(secret: str) -> tuple[str, str, int, int]:
    """The regex for every spelling of `secret`, its anchor, and how far a match reaches around it."""
    start, end = _anchor(secret)
    # A bare `"` or `\` at either end is left out rather than risk eating the quote that closes a JSON string;
    # the anchor keeps the match from ever being empty.
    lead = len(secret) - len(secret.lstrip('"\\')) if end else 0
    trail = len(secret) - len(secret.rstrip('"\\')) if end else 0
    parts: list[str] = []
    before = after = 0
    for i, ch in enumerate(secret):
        if start <= i < end:
            parts.append(re.escape(ch))
            continue
        edge = i < lead or i >= len(secret) - trail
        regex, width = _spellings(ch, bare=not edge)
        parts.append(f"(?:{regex})?" if edge else regex)
        before, after = (before + width, after) if i < start else (before, after + width)
    return "".join(parts), secret[start:end], before, after + len(secret[start:end].encode())


@dataclass(frozen=True)
class _Finder(Generic[AnyStr]):
    """One known secret, found in str or in bytes."""

    anchor: AnyStr  # empty when the secret has none: then the pattern always runs
    pattern: re.Pattern[AnyStr]
    before: int
    after: int  # from the start of the anchor
    open_escape: re.Pattern[AnyStr]
    redacted: AnyStr
    literal_start: bool  # the pattern starts with two plain characters: a search of a whole value is quick


def _literal_start(secret: str) -> bool:
    """Whether every spelling of `secret` starts with the same two characters (letters and digits)."""
    return len(secret) >= 2 and _is_alnum(secret[0]) and _is_alnum(secret[1])


def _redact(value: AnyStr, finder: _Finder[AnyStr]) -> AnyStr:
    """`value` with every spelling of the secret replaced; `value` itself when there is none."""
    pieces: list[AnyStr] = []
    done = 0
    for found in _matches(value, finder):
        start = found.start()
        # A match that starts inside an escape (`\n` before a secret starting with `n`) takes the escape with
        # it: a lone backslash left before the replacement would break the JSON around it.
        if opened := finder.open_escape.search(value, max(done, start - _LOOK_BACK), start):
            start = opened.start(1)
        pieces += (value[done:start], finder.redacted)
        done = found.end()
    if not pieces:
        return value
    pieces.append(value[done:])
    return value[:0].join(pieces)


def _matches(value: AnyStr, finder: _Finder[AnyStr]) -> Iterator[re.Match[AnyStr]]:
    """The spellings of the secret in `value`, in order: each one searched for after the one before."""
    done = pos = seen = 0
    while True:
        if not finder.anchor:
            found = finder.pattern.search(value, done)
        elif (at := value.find(finder.anchor, pos)) < 0:
            return
        else:
            begin, seen = max(done, at - finder.before), seen + 1
            # An anchor may be a word (`sk-bench-upstream`) that text holding no secret is full of, and each
            # costs a search: past a few, one search of all the rest says whether any spelling is left.
            if (
                seen == _SEARCHED_ALONE
                and finder.literal_start
                and finder.pattern.search(value, begin) is None
            ):
                return
            # Only a window around the anchor can hold a match: cheap however long the value is.
            found = finder.pattern.search(value, begin, at + finder.after)
            if found is None:
                pos = at + 1
                continue
        if found is None:
            return
        yield found
        done = pos = found.end()


class Scrubber:
    """Replaces known secrets, in every spelling, and key-like strings."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True))
        patterns = [(*_pattern(s), _literal_start(s)) for s in self.secrets]
        self._in_text = tuple(
            _Finder(anchor, re.compile(regex), before, after, _OPEN_ESCAPE_TEXT, REDACTED, literal)
            for regex, anchor, before, after, literal in patterns
        )
        self._in_bytes = tuple(
            _Finder(
                anchor.encode(),
                re.compile(regex.encode()),
                before,
                after,
                _OPEN_ESCAPE_BYTES,
                REDACTED.encode(),
                literal,
            )
            for regex, anchor, before, after, literal in patterns
        )
        self._anchors = tuple(finder.anchor for finder in self._in_bytes)
        # Whether a number may spell a secret: one is digits (and signs, points, exponents) only.
        self.numeric = any(set(secret) <= set("0123456789+-.eE") for secret in self.secrets)

    def text(self, value: str) -> str:
        """`value` with every known secret and key-like string replaced."""
        for finder in self._in_text:
            if finder.anchor in value:
                value = _redact(value, finder)
        # Every match of KEY_LIKE holds a trigger. The regex has no fixed first characters and tries each
        # position: several times dearer than a look for the triggers (each upstream header passed costs one).
        if value.isascii() and TRIGGERS_TEXT.search(value.lower()) is None:
            return value
        return KEY_LIKE.sub(LABEL_TEXT, value)

    def line(self, value: bytes) -> bytes:
        """A serialized record with secrets and key-like strings replaced (one pass over the whole line)."""
        return keys_replaced(self.stream(value))

    def lines(self, batch: bytes, chosen: bytes) -> bytes:
        """Serialized records, one a line, with secrets and key-like strings replaced.

        Only `chosen` is searched for a trace of either: the values of the records that clients and upstreams
        chose, serialized alike (the fields the gateway made itself cannot hold one). A known secret whose
        anchor `chosen` holds is replaced throughout `batch`; when `chosen` may hold a key-like string, each
        line of `batch` is searched for one on its own.
        """
        return self.batch(batch, chosen)[0]

    def batch(self, batch: bytes, chosen: bytes) -> tuple[bytes, bool]:
        """`lines(batch, chosen)`, and whether `chosen` held no secret and no key-like string.

        `chosen` is small and `batch` is not: `batch` is searched only for what a search of `chosen` found. An
        anchor or a trigger is a few bytes that text holding no secret may be full of (an upstream key named
        `sk-bench-upstream`, an answer about "the upstream"): found without a spelling of the secret or a
        key-like string around it, there is nothing to replace, and the texts are clean all the same.
        """
        clean = True
        if self._holds_anchor(chosen):
            for finder in self._in_bytes:
                # `in`: always true for a secret without an anchor; `is not`: _redact returns what it was
                # given when it found no spelling of the secret. `chosen` is redacted as `batch` is, so that
                # the search for key-like strings sees what a replacement brought together.
                if finder.anchor in chosen and (redacted := _redact(chosen, finder)) is not chosen:
                    chosen, batch, clean = redacted, _redact(batch, finder), False
        if may_hold_key(chosen) and keys_replaced(chosen) is not chosen:
            return b"\n".join(keys_replaced(line) for line in batch.split(b"\n")), False
        return batch, clean

    def raw(self, value: bytes) -> bytes:
        """Known secrets replaced in raw bytes (cheap: used on every upstream error body)."""
        return self.stream(value)

    def stream(self, event: bytes) -> bytes:
        """One SSE event with known secrets replaced; the very same object when it holds none.

        The common case costs one substring test per secret, and callers can tell "unchanged" by `is`.
        """
        if not self._holds_anchor(event):
            return event
        for finder in self._in_bytes:
            if finder.anchor in event:  # always true for a secret without an anchor
                event = _redact(event, finder)
        return event

    def _holds_anchor(self, data: bytes) -> bool:
        """Whether `data` holds the anchor of a known secret: only then is there one to look for."""
        # find() with map() keeps the loop in C, and costs less than `in` (which takes any buffer).
        return max(map(data.find, self._anchors), default=-1) >= 0
