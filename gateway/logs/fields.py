"""How a record writes a field: timestamps, and the text of what a client sent, capped."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import orjson

# model, session_id, client, requested_model, tool names and ids, finish_reason, upstream_id
NAME_CHARS: Final = 256
ORIGIN_CHARS: Final = 512
ERROR_CHARS: Final = 2000
HEADER_CHARS: Final = 256  # each upstream header's name and value
MAX_HEADERS: Final = 20
REFUSED_CHARS: Final = 64  # a call refused for its key: anyone can send one, so its strings are kept short
DUMP_OPTIONS: Final = orjson.OPT_NON_STR_KEYS


def rounded(value: float) -> int:
    """`round(value)`: the nearest integer, half to even. Compiled, the builtin costs several times this."""
    whole = int(value)
    rest = value - whole  # exact: a float less its integer part
    if rest > 0.5 or (rest == 0.5 and whole & 1):
        return whole + 1
    if rest < -0.5 or (rest == -0.5 and whole & 1):
        return whole - 1
    return whole


def hundredths(seconds: float) -> float:
    """Seconds as milliseconds to the hundredth, as `Call.latency_ms` writes them."""
    return rounded(seconds * 100_000) / 100


def iso(ts: float) -> str:
    """UTC ISO-8601 with microseconds, the records' timestamp format: `datetime.isoformat()`, cheaply."""
    second = int(ts)
    micro = rounded((ts - second) * 1e6)  # rounded half to even, as `datetime.fromtimestamp` rounds
    if not 0 < micro < 1_000_000:  # a whole second, or rounded into the next one (or, before 1970, the last)
        second, micro = second + micro // 1_000_000, micro % 1_000_000
        if not micro:
            return _second(second) + "+00:00"  # as `isoformat()` writes a time without microseconds
    # Two table lookups: formatting `{micro:06d}` costs more than the rest of the timestamp together.
    return f"{_second(second)}.{_DIGITS[micro // 1000]}{_DIGITS[micro % 1000]}+00:00"


_DIGITS: Final = tuple(f"{n:03d}" for n in range(1000))
_SECONDS: Final[dict[int, str]] = {}  # the last few whole seconds' texts: the calls of one second share one


def _second(second: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS` of a whole second."""
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) >= 4:
            _SECONDS.clear()
        text = _SECONDS[second] = datetime.fromtimestamp(second, UTC).isoformat()[:-6]
    return text


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts (and plain strings) of an array."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = (p if isinstance(p, str) else p.get("text") if isinstance(p, dict) else None for p in content)
        return "\n".join(p for p in parts if isinstance(p, str))
    return orjson.dumps(content, default=str, option=DUMP_OPTIONS).decode()


def cap(text: str | None, limit: int) -> str | None:
    """`text` cut to `limit` characters, ending with a marker that says how many more there were."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"… [{len(text) - limit} more chars]"


def clip(value: Any, limit: int) -> str | None:
    """A client-chosen value as capped text: None stays None, anything else becomes text first."""
    if value is None:
        return None
    return cap(value if isinstance(value, str) else text_of(value), limit)
