"""What every dialect besides chat completions is made of, and the helpers their folds share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.calls import NAME_KEPT, Answer, Fold, ToolCallParts

Message = dict[str, Any]
HEADER_VALUE_CAP = 1024  # characters of a client header a dialect forwards


@dataclass(frozen=True)
class Dialect:
    """One API the gateway passes through: how its requests are read, how its answers fold."""

    name: str
    fold: Callable[[], Fold]  # a fresh fold for each call: folds keep state between events
    conversation: Callable[[Mapping[str, Any]], list[Message]]  # the request as chat-shaped messages
    error_event: Callable[[Mapping[str, Any]], bytes]  # the gateway's own error, mid-stream, in this dialect
    session: Callable[[Mapping[str, Any]], str | None]  # the session an agent names in its body, if any
    client_headers: tuple[str, ...] = ()  # client headers that go upstream with the call (never a key)

    def forwarded(self, headers: Mapping[str, str]) -> dict[str, str] | None:
        """The client's headers that go upstream with its call: printable ASCII, none too long."""
        passed = {name: v for name in self.client_headers if (v := headers.get(name)) and _forwardable(v)}
        return passed or None


def _forwardable(value: str) -> bool:
    return len(value) <= HEADER_VALUE_CAP and value.isascii() and value.isprintable()


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def sse_event(name: str, data: Mapping[str, Any]) -> bytes:
    """One SSE event with an `event:` line, as both dialects frame every event."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def note_error(answer: Answer, message: Any) -> bool:
    """An error the upstream reported inside a stream (or a failed answer), for the record."""
    answer.error = message if isinstance(message, str) and message else "the provider reported an error"
    return False


def name_tool(parts: ToolCallParts, name: Any) -> bool:
    """Set a tool call's name once; True when it was not a string."""
    if not isinstance(name, str):
        return name is not None
    if name and not parts.name:
        parts.name = name[:NAME_KEPT]
    return False


def tool_call(answer: Answer, key: int) -> ToolCallParts | None:
    """The tool call kept under `key`, begun when it is new."""
    return answer.tool_calls.get(key) or answer.new_tool_call(key)


def final_arguments(answer: Answer, parts: ToolCallParts | None, arguments: Any) -> bool:
    """Whole arguments from a `done` event or a body: used when no delta brought any."""
    if parts is None or parts.arguments or arguments in (None, "", {}):
        return False
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments).decode()
    return answer.add_arguments(parts, arguments)


def chat_usage(usage: Mapping[str, Any], prompt: int, completion: int, cached: int | None) -> dict[str, Any]:
    """A dialect's usage object with chat's names added, so queries and prices read every dialect alike."""
    out = {**usage, "prompt_tokens": prompt, "completion_tokens": completion}
    out.setdefault("total_tokens", prompt + completion)
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def tool_call_message(call_id: Any, name: Any, arguments: Any) -> Message:
    """One tool call as a chat assistant message carries it."""
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments, default=str).decode()
    function = {"name": name, "arguments": arguments}
    return {"id": call_id, "type": "function", "function": function}


def add_tool_call(messages: list[Message], call: Message) -> None:
    """Attach a tool call to the assistant message just before it, or to a new one."""
    last = messages[-1] if messages else None
    if last is None or last.get("role") != "assistant":
        last = {"role": "assistant", "content": None}
        messages.append(last)
    last["tool_calls"] = [*last.get("tool_calls", ()), call]
