"""Server-sent events: splitting an upstream byte stream into whole events without re-encoding them.

Splitting is linear in the bytes received: an event that arrives in many chunks is appended to one buffer
and only its new bytes are searched for the blank line that ends it. One event may not grow past a limit,
so an upstream that never ends its event cannot make the gateway keep (or search) an unbounded tail.
"""

from __future__ import annotations

import re

import orjson

# An event ends at a blank line; servers use \n, \r\n or \r line endings.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LONGEST_END = 4  # bytes of an event end that may straddle two chunks
DONE = b"[DONE]"


class EventTooLarge(ValueError):
    """One event grew past the splitter's limit without ending."""


class EventSplitter:
    """Feeds on raw chunks and returns the complete events in them, bytes exactly as received."""

    __slots__ = ("_buf", "_scanned", "max_event_bytes")

    def __init__(self, max_event_bytes: int = 0) -> None:
        self._buf = bytearray()  # the unfinished event, searched already up to `_scanned`
        self._scanned = 0
        self.max_event_bytes = max_event_bytes  # 0: no limit

    def feed(self, data: bytes) -> list[bytes]:
        """Whole events completed by `data`; an incomplete last event waits for the next chunk."""
        if not self._buf and b"\r" not in data:  # the usual case: one C-level split, no copy of the tail
            *events, tail = data.split(b"\n\n")
            if tail:
                self._buf += tail
                self._scanned = len(tail)
                self._check()
            return [event + b"\n\n" for event in events]
        self._buf += data
        start = max(0, self._scanned - _LONGEST_END + 1)
        events = []
        end = 0
        for match in _EVENT_END.finditer(self._buf, start):
            events.append(bytes(self._buf[end : match.end()]))
            end = match.end()
        if end:
            del self._buf[:end]
        self._scanned = len(self._buf)
        self._check()
        return events

    def _check(self) -> None:
        if self.max_event_bytes and len(self._buf) > self.max_event_bytes:
            size = len(self._buf)
            self._buf.clear()
            self._scanned = 0
            raise EventTooLarge(f"an event grew past {self.max_event_bytes} bytes ({size} without an end)")

    def flush(self) -> bytes:
        """Whatever is left when the stream ends (a server that forgot the final blank line)."""
        tail = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return tail


def event_data(event: bytes) -> bytes | None:
    """The `data:` payload of one event (lines joined by \\n), or None for comments and data-less events.

    Other fields (`id:`, `event:`, `retry:`), comments and any line ending are read as the SSE spec says.
    """
    if event.startswith(b"data:"):
        body = event[5:].rstrip(b"\r\n")
        if b"\n" not in body and b"\r" not in body:
            return body.strip()  # the common case: one data line and nothing else
    lines = [line for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[5:].removeprefix(b" ") for line in lines).strip()


def error_event(body: dict[str, object]) -> bytes:
    """One SSE event carrying an OpenAI-shaped error, as OpenAI sends it mid-stream."""
    return b"data: " + orjson.dumps(body) + b"\n\n"
