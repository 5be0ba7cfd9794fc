"""One call's repair: its SSE events or its whole body in, the same answer with leaked tool calls made real.

A stream's events pass as the exact upstream bytes until one may hold markup (its bytes have a `<`, or the
upstream's own `tool_calls`): only then is an event parsed, and only an event whose content changed is
written anew, keeping every other field of its chunk (`id`, `model`, `created`, ...). A repaired call
becomes one `tool_calls` delta (index, id, type, name, arguments in one piece), and the upstream's
`finish_reason: "stop"` becomes `"tool_calls"`.
"""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any

import orjson

from gateway.repair.dialects import Parsed
from gateway.repair.scanner import MAX_HELD, MarkupScanner
from gateway.repair.tools import ToolCatalog
from gateway.sse import DONE, event_data


class ToolCallRepair:
    """Repairs the answer to one request that offered tools; `report()` says what it did."""

    __slots__ = ("_envelope", "_next_index", "_off", "dialects", "scanner")

    def __init__(self, tools: ToolCatalog, max_held: int = MAX_HELD) -> None:
        self.scanner = MarkupScanner(tools, max_held)
        self.dialects: Counter[str] = Counter()  # dialect -> calls repaired
        self._next_index = 0  # the next tool-call index free in the stream
        self._envelope: dict[str, Any] = {}  # the last chunk's own fields, for a chunk of released text
        self._off = False  # a shape this repair does not read came: the rest passes as it comes

    @classmethod
    def for_request(cls, body: dict[str, Any] | None) -> ToolCallRepair | None:
        """A repair for a chat request's answer; None when it offered no tools (or asked for n > 1)."""
        tools = ToolCatalog.from_body(body)
        several = isinstance(body, dict) and body.get("n") not in (None, 1)
        return cls(tools) if tools is not None and not several else None

    @property
    def count(self) -> int:
        return sum(self.dialects.values())

    def report(self) -> dict[str, Any]:
        """What was repaired: calls, their dialects, and markup blocks left as text."""
        left = self.scanner.left_as_text
        return {"count": self.count, "dialects": sorted(self.dialects), "left_as_text": left}

    def feed(self, events: list[bytes]) -> list[bytes]:
        """The events to send for these upstream events, in order; held text waits for a later call."""
        out: list[bytes] = []
        for event in events:
            if self._off or not (self.dialects or self.scanner.holding or _worth_reading(event)):
                out.append(event)
            else:
                out.extend(self._event(event))
        return out

    def finish(self) -> list[bytes]:
        """The events that release what is still held when the stream ends."""
        held = self.scanner.finish()
        if not held:
            return []
        delta = {"index": 0, "delta": {"content": held}, "finish_reason": None}
        return [_encode({**self._envelope, "choices": [delta]})]

    def body(self, raw: bytes) -> bytes:
        """A whole completion body, repaired; the same bytes when there was nothing to repair."""
        found = _loads(raw) if _may_hold(raw) else None
        choices = found.get("choices") if found is not None else None
        changed = False
        for choice in choices if isinstance(choices, list) else ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                changed = self._repair_message(choice, message) or changed
        return orjson.dumps(found) if changed else raw

    def _repair_message(self, choice: dict[str, Any], message: dict[str, Any]) -> bool:
        scanned = self.scanner.feed(message["content"])
        text = scanned.text + self.scanner.finish()
        calls = self._calls(scanned.blocks)
        if not calls:
            return False
        message["content"] = text if text.strip() else None
        before = message.get("tool_calls")
        message["tool_calls"] = [*(before if isinstance(before, list) else ()), *calls]
        if choice.get("finish_reason") == "stop":
            choice["finish_reason"] = "tool_calls"
        return True

    def _calls(self, blocks: list[Parsed]) -> list[dict[str, Any]]:
        calls = []
        for parsed in blocks:
            self.dialects[parsed.dialect] += len(parsed.calls)
            for name, arguments in parsed.calls:
                function = {"name": name, "arguments": arguments}
                call_id = f"call_{secrets.token_hex(12)}"
                calls.append({"id": call_id, "type": "function", "function": function})
        return calls

    def _event(self, event: bytes) -> list[bytes]:
        """One event that may hold markup: as it is, rewritten, or dropped (all its text is held)."""
        payload = event_data(event)
        if payload is None:  # a comment: it changes nothing of the answer
            return [event]
        chunk = _loads(payload) if payload != DONE else None
        choice = _only_choice(chunk)
        if chunk is None or choice is None:
            # [DONE], usage, an error or an unreadable event: no more text comes, so what is held is text
            return [*self.finish(), event]
        delta = choice.get("delta")
        if choice.get("index", 0) != 0 or not isinstance(delta, dict):
            self._off = True  # a shape this repair does not know passes on as it came
            return [*self.finish(), event]
        self._envelope = {k: v for k, v in chunk.items() if k not in ("choices", "usage")}
        return self._rewrite(event, chunk, choice, delta)

    def _rewrite(
        self, event: bytes, chunk: dict[str, Any], choice: dict[str, Any], delta: dict[str, Any]
    ) -> list[bytes]:
        self._note_upstream_calls(delta.get("tool_calls"))
        content = delta.get("content")
        before = content if isinstance(content, str) else ""
        scanned = self.scanner.feed(before)
        text, calls = scanned.text, self._calls(scanned.blocks)
        reason = choice.get("finish_reason")
        if reason:  # the answer ends here: what is held is text after all
            text += self.scanner.finish()
            reason = "tool_calls" if reason == "stop" and self.dialects else reason
        if text == before and not calls and reason == choice.get("finish_reason"):
            return [event]
        new = {k: v for k, v in delta.items() if k != "content"}
        if text:
            new["content"] = text
        if calls:
            own = new.get("tool_calls")
            indexed = [{"index": self._take_index(), **c} for c in calls]
            new["tool_calls"] = [*(own if isinstance(own, list) else ()), *indexed]
        if not new and reason is None and not chunk.get("usage"):
            return []  # nothing left to say: all of its text is held
        return [_encode({**chunk, "choices": [{**choice, "delta": new, "finish_reason": reason}]})]

    def _take_index(self) -> int:
        self._next_index += 1
        return self._next_index - 1

    def _note_upstream_calls(self, calls: Any) -> None:
        """The upstream's own tool calls keep their indices; repaired ones come after them."""
        for call in calls if isinstance(calls, list) else ():
            index = call.get("index") if isinstance(call, dict) else None
            if isinstance(index, int) and not isinstance(index, bool):
                self._next_index = max(self._next_index, index + 1)


def _may_hold(data: bytes) -> bool:
    return b"<" in data or b"\\u003" in data  # `<` raw, or JSON-escaped as some servers write it (\u003c)


def _worth_reading(event: bytes) -> bool:
    """An event that may hold markup, or the upstream's own tool calls (repaired ones go after them)."""
    return b"<" in event or b"\\u003" in event or b"tool_calls" in event


def _only_choice(chunk: dict[str, Any] | None) -> dict[str, Any] | None:
    choices = chunk.get("choices") if chunk is not None else None
    if isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], dict):
        return choices[0]
    return None


def _loads(data: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _encode(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"
