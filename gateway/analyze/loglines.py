"""Telling records from other lines, in spool chunks and in what `kubectl logs` makes of the gateway's output.

A snapshot of `kubectl logs` mixes the records (the gateway's stdout) with its own log lines and tracebacks
(stderr), and may start every line with `[pod/<name>/<container>] ` (`--prefix`) and an RFC3339Nano
timestamp and a space (`--timestamps`). A line is a record when what follows those prefixes is a JSON object
whose `type` is one of `RECORD_TYPES` and which carries a `request_id` or a `sha256`. DuckDB applies the
same test (`RECORD_SQL`) to what it parses, so a spool chunk read as is and a pod log sifted here agree on
what a record is, and on how many lines were skipped.
"""

from __future__ import annotations

import re

import orjson

RECORD_TYPES = ("request", "response", "system_prompt")
RECORD_SQL = (
    f"type IN ({', '.join(repr(kind) for kind in RECORD_TYPES)}) "
    "AND (request_id IS NOT NULL OR sha256 IS NOT NULL)"
)

# kubectl writes the pod prefix before the timestamp; either order is taken, so hand-joined files work too.
_POD_PREFIX = rb"\[[^\]\n]*\] "
_TIMESTAMP = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d) "
_PREFIXES = re.compile(rb"(?:" + _POD_PREFIX + rb"|" + _TIMESTAMP + rb"){0,2}")


def is_plain_jsonl(data: bytes, lines: int) -> bool:
    """Whether each of the `lines` non-blank lines is a JSON object, as in a spool chunk: DuckDB takes those.

    An unterminated last line is left to the batcher. A line cut short after a `:`, `[` or `,` is not
    plain: DuckDB's reader would take the next line as the missing value and lose that record too.
    """
    # One pass: `lines` comes from the count the batcher makes anyway, and this runs on every chunk.
    if not data.startswith(b"{") or (data.endswith(b"\n") and not data.endswith(b"}\n")):
        return False
    return data.count(b"}\n{") == lines - 1


def payload(line: bytes) -> bytes:
    """The line without kubectl's pod prefix and timestamp, and without surrounding whitespace."""
    found = _PREFIXES.match(line)
    return (line[found.end() :] if found else line).strip()


def is_record(value: object) -> bool:
    """Whether a parsed line is a record (the test `RECORD_SQL` states for DuckDB)."""
    return (
        isinstance(value, dict)
        and value.get("type") in RECORD_TYPES
        and (value.get("request_id") is not None or value.get("sha256") is not None)
    )


def records_only(data: bytes) -> bytes:
    """The records in `data`, one per line with their prefixes removed; every other line dropped."""
    kept = [body for body in map(payload, data.split(b"\n")) if body.startswith(b"{") and _holds_record(body)]
    return b"".join(body + b"\n" for body in kept)


def _holds_record(body: bytes) -> bool:
    try:
        return is_record(orjson.loads(body))
    except orjson.JSONDecodeError:  # a log line that happens to start with `{`, or a record cut short
        return False
