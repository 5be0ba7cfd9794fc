"""What one proxied call knows about itself: the state both of its log records are built from.

`Call` is filled in as the request moves through the handler; `Answer` rebuilds the model's answer from a
JSON body or from stream chunks (content, reasoning, tool calls from their deltas, finish reason, usage).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from providers.base import Endpoint


@dataclass(slots=True)
class ToolCallParts:
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Answer:
    """The model's answer as rebuilt from a completion body or from its stream chunks."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, ToolCallParts] = field(default_factory=dict)
    finish_reason: str | None = None
    upstream_id: str | None = None
    usage: dict[str, Any] | None = None
    bad_chunks: int = 0

    def add_chunk(self, payload: bytes) -> dict[str, Any] | None:
        """Fold one stream event's data into the answer; return the parsed chunk."""
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.bad_chunks += 1
            return None
        if not isinstance(chunk, dict):
            return None
        self.upstream_id = self.upstream_id or chunk.get("id")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0:
                self._add_delta(choice.get("delta") or {}, choice.get("text"))
                self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return chunk

    def _add_delta(self, delta: dict[str, Any], text: str | None) -> None:
        if content := delta.get("content") or text:
            self.content.append(content)
        if reasoning := delta.get("reasoning_content") or delta.get("reasoning"):
            self.reasoning.append(reasoning)
        for call in delta.get("tool_calls") or ():
            parts = self.tool_calls.setdefault(call.get("index", len(self.tool_calls)), ToolCallParts())
            function = call.get("function") or {}
            parts.name += function.get("name") or ""
            if args := function.get("arguments"):
                parts.arguments.append(args)

    def add_body(self, raw: bytes) -> None:
        """Fold a whole (non-streamed) completion body into the answer."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.bad_chunks += 1
            return
        if not isinstance(body, dict):
            return
        self.upstream_id = body.get("id")
        self.usage = body.get("usage")
        choices = body.get("choices") or [{}]
        first = choices[0] if isinstance(choices[0], dict) else {}
        self.finish_reason = first.get("finish_reason")
        message = first.get("message") or {}
        self._add_delta(message, first.get("text"))
        for i, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            self.tool_calls[i] = ToolCallParts(function.get("name") or "", [function.get("arguments") or ""])

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)

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
    request_logged: bool = False
    answer: Answer = field(default_factory=Answer)

    @property
    def latency_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 2)

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_byte is None else round((self.first_byte - self.started) * 1000, 2)
