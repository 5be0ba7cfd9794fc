"""Server-sent events: splitting an upstream byte stream into whole events without re-encoding them."""

from __future__ import annotations

import re

import orjson

# An event ends at a blank line; servers use \n, \r\n or \r line endings.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
DONE = b"[DONE]"


class EventSplitter:
    """Feeds on raw chunks and returns the complete events in them, bytes exactly as received."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Whole events completed by `data`; an incomplete last event waits for the next chunk."""
        buf = self._tail + data if self._tail else data
        if b"\r" not in buf:  # the usual \n endings: one C-level split, ~5x faster than the regex scan
            *events, self._tail = buf.split(b"\n\n")
            return [event + b"\n\n" for event in events]
        events = []
        start = 0
        for match in _EVENT_END.finditer(buf):
            events.append(buf[start : match.end()])
            start = match.end()
        self._tail = buf[start:]
        return events

    def flush(self) -> bytes:
        """Whatever is left when the stream ends (a server that forgot the final blank line)."""
        tail, self._tail = self._tail, b""
        return tail


def event_data(event: bytes) -> bytes | None:
    """The `data:` payload of one event (lines joined by \\n), or None for comments and data-less events."""
    if event.startswith(b"data:") and event.count(b"data:") == 1:
        return event[5:].strip()  # the common case, one data line
    lines = [line for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[5:].removeprefix(b" ") for line in lines).strip()


def error_event(body: dict[str, object]) -> bytes:
    """One SSE event carrying an OpenAI-shaped error, as OpenAI sends it mid-stream."""
    return b"data: " + orjson.dumps(body) + b"\n\n"
