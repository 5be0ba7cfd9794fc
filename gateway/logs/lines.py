"""A batch of records as lines of JSON, and what of them the scrubber searches.

orjson writes nearly every record at once. A record it refuses (text with lone surrogates from undecodable
client bytes, nesting past its limit, an integer past 64 bits) is mended field by field instead: the fields
mended are named in its `record_errors`, and the record is then searched whole.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.logs.fields import DUMP_OPTIONS
from gateway.logs.records import RecordBuilder

MAX_DEPTH = 200  # nesting kept when a record is mended; orjson refuses anything past 254 levels
TOO_DEEP = "[unserializable: nested too deep]"


class Batch:
    """The records of one write, in order, and how each is searched for secrets."""

    __slots__ = ("records", "requests", "responses", "whole")

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []  # the records searched by what clients and upstreams chose
        self.responses: list[dict[str, Any]] = []
        self.whole: list[int] = []  # where the records searched whole are

    def add(self, record: dict[str, Any], kind: list[dict[str, Any]] | None) -> None:
        """`record`, next; `kind` is the list of its kind (`requests`, `responses`), None: searched whole."""
        if kind is None:
            self.whole.append(len(self.records))
        else:
            kind.append(record)
        self.records.append(record)

    def lines(self) -> list[bytes]:
        """The records as lines of JSON; one that no JSON writer takes as it is, mended and searched whole."""
        try:  # default, option: given by position, as orjson takes them quickest
            return [orjson.dumps(record, str, orjson.OPT_APPEND_NEWLINE) for record in self.records]
        except Exception:
            return [self._line(at, record) for at, record in enumerate(self.records)]

    def _line(self, at: int, record: dict[str, Any]) -> bytes:
        try:
            return _serialized(record, orjson.OPT_APPEND_NEWLINE)
        except Exception:
            pass
        if at not in self.whole:  # searched whole, no longer by its chosen values
            self.whole.append(at)
            self.whole.sort()
            self.requests = [r for r in self.requests if r is not record]
            self.responses = [r for r in self.responses if r is not record]
        return dumps(record) + b"\n"

    def searched(
        self, lines: list[bytes], builder: RecordBuilder, clean: set[str | None]
    ) -> tuple[bytes, set[str | None]]:
        """What the scrubber searches in these `lines`, and the texts in it.

        The chosen values, serialized as in the lines: each text once, and none of those in `clean` (a value's
        JSON holds a trace of a secret or not whatever else is searched with it); then the lines kept whole.
        """
        texts, structures = builder.chosen_in(self.requests, self.responses)
        fresh = set(texts).difference(clean)
        values = _serialized((list(fresh), structures))
        if self.whole:
            values += b"".join([lines[at] for at in self.whole])
        return values, fresh


def _serialized(value: Any, option: int = 0) -> bytes:
    """`value` as JSON, as written with OPT_NON_STR_KEYS. That option halves orjson's speed and only keys
    that are not text need it (a record built from JSON has none): it is used when writing without fails."""
    try:
        return orjson.dumps(value, default=str, option=option)
    except TypeError:
        return orjson.dumps(value, default=str, option=option | DUMP_OPTIONS)


def dumps(record: dict[str, Any]) -> bytes:
    """The record as JSON; a value orjson refuses is repaired or replaced, and named in `record_errors`."""
    try:
        return orjson.dumps(record, default=str, option=DUMP_OPTIONS)
    except Exception:
        pass  # the slow path below is for the rare record carrying bytes no JSON writer accepts
    kept: dict[str, Any] = {}
    errors = [str(e) for e in record.get("record_errors") or ()]
    for name, value in record.items():
        if name == "record_errors":
            continue
        try:
            orjson.dumps(value, default=str, option=DUMP_OPTIONS)
            kept[name] = value
        except Exception:
            kept[name] = _repaired(value)
            errors += [] if name in errors else [name]
    kept["record_errors"] = errors
    return orjson.dumps(kept, default=str, option=DUMP_OPTIONS)


def _repaired(value: Any) -> Any:
    """`value` with invalid text mended and nesting cut at MAX_DEPTH; a marker when even that fails."""
    try:
        fixed = _mend(value, 0)
        orjson.dumps(fixed, default=str, option=DUMP_OPTIONS)
    except Exception as exc:
        return f"[unserializable: {type(exc).__name__}]"
    return fixed


def _mend(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return _valid_text(value)
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        return TOO_DEEP
    if isinstance(value, dict):
        return {(_valid_text(k) if isinstance(k, str) else k): _mend(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mend(v, depth + 1) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)  # past 64 bits: orjson writes no such integer
    return value


def _valid_text(text: str) -> str:
    """`text` as valid Unicode: lone surrogates (undecodable bytes kept by surrogateescape) become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "replace")
    return text
