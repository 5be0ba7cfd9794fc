"""What one proxied call knows about itself: the state both of its log records are built from.

`Call` is filled in as the request moves through the handler; `Answer` rebuilds the model's answer from a
JSON body or from stream chunks (content, reasoning, tool calls from their deltas, finish reason, usage).
Chat completions are folded by `Answer` itself; another dialect hands it a `Fold` (see `gateway.dialects`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.repair import ToolCallRepair
from providers.base import Endpoint

if TYPE_CHECKING:
    from gateway.limits.limiter import Ticket


@dataclass(slots=True)
class ToolCallParts:
    name: str = ""
    arguments: list[str] = field(default_factory=list)


MAX_TOOL_CALLS = 128  # distinct tool-call indices kept for one answer; an upstream chooses them
NAME_KEPT = 256  # characters of a tool's name kept


class Fold(Protocol):
    """How one dialect's stream events and whole bodies fold into an `Answer`; True: a part was unreadable."""

    def chunk(self, answer: Answer, event: dict[str, Any]) -> bool: ...

    def body(self, answer: Answer, body: dict[str, Any]) -> bool: ...


def as_dict(value: Any) -> dict[str, Any]:
    """`value` when it is an object, else an empty one: upstream JSON is read without trusting its types."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """`value` when it is an array, else an empty one."""
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass(slots=True)
class Answer:
    """The model's answer as rebuilt from a completion body or from its stream chunks.

    It is the record's copy, never the client's: whatever shape an upstream sends, folding it in cannot
    raise (parts of the wrong type are skipped and counted in `bad_chunks`), and at most `keep` characters
    of text are kept, so an endless answer streams on to its client while its record stops growing.
    """

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, ToolCallParts] = field(default_factory=dict)
    finish_reason: str | None = None
    upstream_id: str | None = None
    usage: dict[str, Any] | None = None
    bad_chunks: int = 0
    keep: int = 1 << 20
    kept: int = 0
    truncated: bool = False
    fold: Fold | None = None  # None: chat completions, folded by the methods below
    error: str | None = None  # an error the upstream reported inside a successful answer

    def add_chunk(self, payload: bytes) -> dict[str, Any] | None:
        """Fold one stream event's data into the answer; return the parsed chunk (None when unreadable)."""
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.bad_chunks += 1
            return None
        if not isinstance(chunk, dict):
            self.bad_chunks += 1
            return None
        odd = self._fold_chunk(chunk) if self.fold is None else self.fold.chunk(self, chunk)
        self.bad_chunks += odd
        return chunk

    def _fold_chunk(self, chunk: dict[str, Any]) -> bool:
        """Fold a parsed chunk; True when some part of it had a shape that could not be read."""
        odd = False
        if not self.upstream_id:
            upstream_id = chunk.get("id")
            self.upstream_id = upstream_id if isinstance(upstream_id, str) else None
        if usage := chunk.get("usage"):
            odd = not isinstance(usage, dict)
            self.usage = self.usage if odd else usage
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return choices is not None or odd
        for choice in choices:
            if not isinstance(choice, dict):
                odd = True
            elif choice.get("index", 0) == 0:
                delta = choice.get("delta")
                # Most chunks carry one piece of text and nothing else: kept at once, without reading on.
                if not (type(delta) is dict and len(delta) == 1 and self._kept_quickly(delta.get("content"))):
                    odd = self._add_delta(delta, choice.get("text")) or odd
                reason = choice.get("finish_reason")
                if reason and isinstance(reason, str):
                    self.finish_reason = reason
        return odd

    def _kept_quickly(self, content: Any) -> bool:
        """Keep `content` when it is text with room for it (and say so); anything else is left to `_keep`."""
        if type(content) is not str or not content or len(content) > self.keep - self.kept:
            return False
        self.content.append(content)
        self.kept += len(content)
        return True

    def _add_delta(self, delta: Any, text: Any) -> bool:
        """Fold a delta (or message); True when a part of it had the wrong type."""
        if not isinstance(delta, dict):
            odd, delta = delta is not None, {}
        else:
            odd = False
        if (content := delta.get("content") or text) and not self._kept_quickly(content):
            odd = self._keep(self.content, content) or odd
        if reasoning := delta.get("reasoning_content") or delta.get("reasoning"):
            odd = self._keep(self.reasoning, reasoning) or odd
        calls = delta.get("tool_calls")
        if calls is None:
            return odd
        if not isinstance(calls, list):
            return True
        for call in calls:
            odd = self._add_tool_call(call) or odd
        return odd

    def _add_tool_call(self, call: Any) -> bool:
        if not isinstance(call, dict):
            return True
        index = call.get("index", len(self.tool_calls))
        if not isinstance(index, int) or isinstance(index, bool):
            return True
        parts = self.tool_calls.get(index) or self.new_tool_call(index)
        if parts is None:
            return False
        function = as_dict(call.get("function"))
        name = _str(function.get("name"))
        if name and len(parts.name) < NAME_KEPT:
            parts.name = (parts.name + name)[:NAME_KEPT]
        if args := function.get("arguments"):
            return self._keep(parts.arguments, args)
        return False

    def new_tool_call(self, key: int) -> ToolCallParts | None:
        """A tool call's parts, kept under `key` (its order); None once MAX_TOOL_CALLS are kept."""
        if len(self.tool_calls) >= MAX_TOOL_CALLS:
            self.truncated = True
            return None
        parts = self.tool_calls[key] = ToolCallParts()
        return parts

    def add_text(self, text: Any) -> bool:
        """Append answer text (a fold's helper); True when it was not a string."""
        return self._keep(self.content, text)

    def add_reasoning(self, text: Any) -> bool:
        """Append reasoning text; True when it was not a string."""
        return self._keep(self.reasoning, text)

    def add_arguments(self, parts: ToolCallParts, text: Any) -> bool:
        """Append a piece of a tool call's arguments; True when it was not a string."""
        return self._keep(parts.arguments, text)

    def _keep(self, parts: list[str], text: Any) -> bool:
        """Append text while under the keep limit; True when `text` was not a string."""
        if not isinstance(text, str):
            return True
        room = self.keep - self.kept
        if len(text) > room:
            self.truncated = True
            text = text[: max(room, 0)]
        if text:
            parts.append(text)
            self.kept += len(text)
        return False

    def add_body(self, raw: bytes) -> None:
        """Fold a whole (non-streamed) completion body into the answer."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.bad_chunks += 1
            return
        if not isinstance(body, dict):
            self.bad_chunks += 1
            return
        if self.fold is not None:
            self.bad_chunks += self.fold.body(self, body)
            return
        upstream_id, usage = body.get("id"), body.get("usage")
        self.upstream_id = upstream_id if isinstance(upstream_id, str) else None
        self.usage = usage if isinstance(usage, dict) else None
        choices = as_list(body.get("choices"))
        first = as_dict(choices[0]) if choices else {}
        reason = first.get("finish_reason")
        self.finish_reason = reason if isinstance(reason, str) else None
        odd = self._add_delta(first.get("message"), first.get("text"))
        if odd or ("choices" in body and not (choices and isinstance(choices[0], dict))):
            self.bad_chunks += 1

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)

    def record_fields(self) -> AnswerFields:
        """What the response record reads of the answer, in one tuple (see `Call.request_fields`)."""
        return (
            self.content,
            self.reasoning,
            self.tool_calls,
            self.finish_reason,
            self.upstream_id,
            self.usage,
            self.error,
            self.truncated,
            self.bad_chunks,
        )

    def tool_call_list(self) -> list[dict[str, str]]:
        return [
            {"name": p.name, "arguments": "".join(p.arguments)} for _, p in sorted(self.tool_calls.items())
        ]


@dataclass(slots=True)
class Call:
    """One proxied call, from arrival to the last byte."""

    request_id: str
    endpoint: Endpoint
    started: float = field(default_factory=time.perf_counter)
    wall_start: float = field(default_factory=time.time)
    origin: str | None = None
    client: str | None = None
    session_id: str | None = None
    key_name: str | None = None
    provider: str | None = None
    model: str | None = None
    requested_model: str | None = None
    stream: bool = False
    body: dict[str, Any] | None = None
    status: int = 0
    error: str | None = None
    first_byte: float | None = None
    client_disconnected: bool = False
    upstream_headers: dict[str, str] | None = None
    forwarded_headers: dict[str, str] | None = None  # client headers a dialect sends upstream as they came
    request_logged: bool = False
    deadline: float = float("inf")  # a time.perf_counter() value no part of the call may pass
    ended: float | None = None  # when the call was over, so a record built later still times it right
    answer: Answer = field(default_factory=Answer)
    tool_repair: ToolCallRepair | None = None  # set when the answer is checked for tool calls leaked as text
    ticket: Ticket | None = None  # what the call's limits reserved for it, until it is settled
    limited_by: str | None = None  # the limit that refused the call (`keys.teaching.tokens_per_day`)

    @property
    def latency_ms(self) -> float:
        end = time.perf_counter() if self.ended is None else self.ended
        # To the hundredth of a ms: round() to a whole number is several times quicker than round(x, 2),
        # which goes through decimal digits, and each call is timed twice (its record, its metrics). The
        # response record's compiled builder works it out alike (`gateway.logs.fields.hundredths`).
        return round((end - self.started) * 100_000) / 100

    @property
    def wall_end(self) -> float:
        """The wall-clock time the call was over (now, while it is not)."""
        return time.time() if self.ended is None else self.wall_start + (self.ended - self.started)

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_byte is None else round((self.first_byte - self.started) * 100_000) / 100

    # What each of the call's records reads of it, in one tuple. The record builders are compiled
    # (`gateway.native`), and compiled code reads an attribute of this (uncompiled) class through the generic
    # lookup, several times the cost of the interpreter's, which reads them here.

    def request_fields(self) -> RequestFields:
        return (
            self.request_id,
            self.endpoint,
            self.endpoint.label,
            self.wall_start,
            self.status,
            self.provider,
            self.key_name,
            self.session_id,
            self.client,
            self.origin,
            self.requested_model,
            self.stream,
            self.limited_by,
            self.body,
            self.tool_repair is not None,
        )

    def response_fields(self) -> ResponseFields:
        return (
            self.request_id,
            self.endpoint.label,
            self.status,
            self.provider,
            self.key_name,
            self.session_id,
            self.origin,
            self.model,
            self.requested_model,
            self.stream,
            self.limited_by,
            self.started,
            self.ended,
            self.first_byte,
            self.error,
            self.upstream_headers,
            self.client_disconnected,
            self.tool_repair,
        )


AnswerFields = tuple[
    list[str],  # content
    list[str],  # reasoning
    dict[int, ToolCallParts],  # tool_calls
    str | None,  # finish_reason
    str | None,  # upstream_id
    dict[str, Any] | None,  # usage
    str | None,  # error
    bool,  # truncated
    int,  # bad_chunks
]
RequestFields = tuple[
    str,  # request_id
    Endpoint,
    str,  # the endpoint's label
    float,  # wall_start
    int,  # status
    str | None,  # provider
    str | None,  # key_name
    str | None,  # session_id
    str | None,  # client
    str | None,  # origin
    str | None,  # requested_model
    bool,  # stream
    str | None,  # limited_by
    dict[str, Any] | None,  # body
    bool,  # whether the answer's tool calls are checked (`tool_repair`)
]
ResponseFields = tuple[
    str,  # request_id
    str,  # the endpoint's label
    int,  # status
    str | None,  # provider
    str | None,  # key_name
    str | None,  # session_id
    str | None,  # origin
    str | None,  # model
    str | None,  # requested_model
    bool,  # stream
    str | None,  # limited_by
    float,  # started
    float | None,  # ended
    float | None,  # first_byte
    str | None,  # error
    dict[str, str] | None,  # upstream_headers
    bool,  # client_disconnected
    ToolCallRepair | None,
]
