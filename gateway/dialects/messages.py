"""Anthropic's Messages API (`POST /v1/messages`), as Anthropic, vLLM and llama.cpp answer it.

A stream opens with `message_start` (the id and the prompt's usage), then content blocks by index
(`content_block_start`, `content_block_delta` with `text_delta`, `thinking_delta` or `input_json_delta`,
`content_block_stop`), `message_delta` with the stop reason and the output usage, and `message_stop`;
`ping` may come at any point and `error` ends a stream that failed. A whole answer is the message object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.calls import Answer, as_dict, as_list
from gateway.dialects.base import (
    Dialect,
    Message,
    add_tool_call,
    as_int,
    chat_usage,
    final_arguments,
    name_tool,
    note_error,
    sse_event,
    tool_call,
    tool_call_message,
)

_TOOL_BLOCKS = ("tool_use", "server_tool_use")


class MessagesFold:
    """Folds Messages stream events and message objects into an `Answer`; keeps the usage seen so far."""

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: dict[str, Any] = {}  # message_start's usage, updated by each message_delta's

    def chunk(self, answer: Answer, event: dict[str, Any]) -> bool:
        kind = event.get("type")
        if kind == "content_block_delta":
            return _delta(answer, event)
        if kind == "content_block_start":
            index = as_int(event.get("index"))
            return index is None or _block(answer, index, event.get("content_block"), whole=False)
        if kind == "message_start":
            return self._message(answer, as_dict(event.get("message")))
        if kind == "message_delta":
            _stop(answer, as_dict(event.get("delta")))
            return self._usage(answer, event.get("usage"))
        if kind == "error":
            return note_error(answer, as_dict(event.get("error")).get("message"))
        return False

    def body(self, answer: Answer, body: dict[str, Any]) -> bool:
        odd = self._message(answer, body)
        for index, block in enumerate(as_list(body.get("content"))):
            odd = _block(answer, index, block, whole=True) or odd
        _stop(answer, body)
        return odd

    def _message(self, answer: Answer, message: dict[str, Any]) -> bool:
        upstream_id = message.get("id")
        answer.upstream_id = upstream_id if isinstance(upstream_id, str) else answer.upstream_id
        return self._usage(answer, message.get("usage"))

    def _usage(self, answer: Answer, usage: Any) -> bool:
        if usage is None:
            return False
        if not isinstance(usage, dict):
            return True
        # message_delta's counts are cumulative and may leave out what message_start said: laid over it.
        self.usage.update((k, v) for k, v in usage.items() if v is not None)
        answer.usage = _chat_usage(self.usage)
        return False


def _block(answer: Answer, index: int, block: Any, *, whole: bool) -> bool:
    """A content block as it starts (or `whole`, in a body): text, thinking, a tool call."""
    if not isinstance(block, dict):
        return True
    kind = block.get("type")
    if kind == "text":
        return answer.add_text(block.get("text") or "")
    if kind == "thinking":
        return answer.add_reasoning(block.get("thinking") or "")
    if kind in _TOOL_BLOCKS:
        parts = tool_call(answer, index)
        if parts is None:
            return False
        given = block.get("input")
        # A stream's block starts with `input: {}` and its deltas follow; a body's `{}` is the whole input.
        arguments = orjson.dumps(given).decode() if whole and isinstance(given, dict) else given
        odd = name_tool(parts, block.get("name"))
        return final_arguments(answer, parts, arguments) or odd
    return False


def _delta(answer: Answer, event: dict[str, Any]) -> bool:
    delta = event.get("delta")
    if not isinstance(delta, dict):
        return True
    kind = delta.get("type")
    if kind == "text_delta":
        return answer.add_text(delta.get("text"))
    if kind == "thinking_delta":
        return answer.add_reasoning(delta.get("thinking"))
    if kind == "input_json_delta":
        index = as_int(event.get("index"))
        parts = None if index is None else tool_call(answer, index)
        return index is None or (parts is not None and answer.add_arguments(parts, delta.get("partial_json")))
    return False  # signature_delta, citations_delta: nothing the records keep


def _stop(answer: Answer, source: dict[str, Any]) -> None:
    reason = source.get("stop_reason")
    answer.finish_reason = reason if isinstance(reason, str) and reason else answer.finish_reason


def _chat_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's `input_tokens` leave out cached ones: the prompt is all three counts together."""
    read = as_int(usage.get("cache_read_input_tokens"))
    written = as_int(usage.get("cache_creation_input_tokens")) or 0
    prompt = (as_int(usage.get("input_tokens")) or 0) + (read or 0) + written
    return chat_usage(usage, prompt, as_int(usage.get("output_tokens")) or 0, read)


def conversation(body: Mapping[str, Any]) -> list[Message]:
    """`system` and `messages` (content blocks split into text, tool calls and tool results) as chat's."""
    messages: list[Message] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": system})
    for message in as_list(body.get("messages")):
        if isinstance(message, dict) and isinstance(message.get("role"), str):
            _add_message(messages, message)
    return messages


def _add_message(messages: list[Message], message: dict[str, Any]) -> None:
    role, content = message["role"], message.get("content")
    if not isinstance(content, list):
        messages.append({"role": role, "content": content})
        return
    blocks = [b for b in content if isinstance(b, dict)]
    said = [b for b in blocks if b.get("type") not in ("tool_use", "tool_result", "thinking")]
    if said or not any(b.get("type") in ("tool_use", "tool_result") for b in blocks):
        messages.append({"role": role, "content": said})
    # A user's text comes before its tool results here: the trailing results are then the turn's results.
    for block in blocks:
        if block.get("type") == "tool_use":
            add_tool_call(messages, tool_call_message(block.get("id"), block.get("name"), block.get("input")))
        elif block.get("type") == "tool_result":
            result = {
                "role": "tool",
                "tool_call_id": block.get("tool_use_id"),
                "content": block.get("content"),
            }
            messages.append(result)


def session(body: Mapping[str, Any]) -> str | None:
    """Claude Code's session: inside `metadata.user_id`, a JSON object today, `…_session_<id>` before."""
    user_id = as_dict(body.get("metadata")).get("user_id")
    if not isinstance(user_id, str):
        return None
    if user_id.startswith("{"):
        with contextlib.suppress(orjson.JSONDecodeError):
            found = as_dict(orjson.loads(user_id)).get("session_id")
            return found if isinstance(found, str) and found else None
    _, marked, rest = user_id.rpartition("_session_")
    return rest if marked and rest else None


def error_event(body: Mapping[str, Any]) -> bytes:
    """The gateway's error as a Messages `error` event: `{"type": "error", "error": {type, message, ...}}`."""
    return sse_event("error", {"type": "error", "error": as_dict(body.get("error"))})


MESSAGES = Dialect(
    "messages",
    MessagesFold,
    conversation,
    error_event,
    session,
    client_headers=("anthropic-version", "anthropic-beta"),
)
