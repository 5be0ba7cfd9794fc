"""OpenAI's Responses API (`POST /v1/responses`), as OpenAI, OpenRouter, vLLM and llama.cpp answer it.

A stream is a series of typed events (`event: response.output_text.delta` and a JSON `data:` with the same
`type`); the answer is rebuilt from the text, reasoning and function-call argument deltas, and the final
`response.completed` (or `.incomplete`, `.failed`) carries the status and the usage. A whole answer is the
same response object, its `output` a list of items: messages, reasoning, function calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

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

_CALL_ITEMS = ("function_call", "custom_tool_call")  # a custom tool's `input` plays the arguments' part
_FINAL = ("response.completed", "response.incomplete", "response.failed", "response.cancelled")


class ResponsesFold:
    """Folds Responses stream events and response objects into an `Answer`."""

    __slots__ = ()

    def chunk(self, answer: Answer, event: dict[str, Any]) -> bool:
        kind = event.get("type")
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        return handler(answer, event) if handler is not None else False

    def body(self, answer: Answer, body: dict[str, Any]) -> bool:
        odd = _output(answer, body)
        return _finish(answer, body) or odd


def _text(answer: Answer, event: dict[str, Any]) -> bool:
    return answer.add_text(event.get("delta"))


def _reasoning(answer: Answer, event: dict[str, Any]) -> bool:
    return answer.add_reasoning(event.get("delta"))


def _added(answer: Answer, event: dict[str, Any]) -> bool:
    index = as_int(event.get("output_index"))
    return index is None or _item(answer, index, as_dict(event.get("item")), whole=False)


def _item_done(answer: Answer, event: dict[str, Any]) -> bool:
    """A finished item: a function call's whole arguments, in case no delta brought them."""
    index, item = as_int(event.get("output_index")), as_dict(event.get("item"))
    if index is None or item.get("type") not in _CALL_ITEMS:
        return index is None
    parts = tool_call(answer, index)
    if parts is None:
        return False
    name_tool(parts, item.get("name"))
    return final_arguments(answer, parts, item.get("arguments", item.get("input")))


def _arguments(answer: Answer, event: dict[str, Any]) -> bool:
    index = as_int(event.get("output_index"))
    if index is None:
        return True
    parts = tool_call(answer, index)
    return parts is not None and answer.add_arguments(parts, event.get("delta"))


def _arguments_done(answer: Answer, event: dict[str, Any]) -> bool:
    index = as_int(event.get("output_index"))
    if index is None:
        return True
    parts = tool_call(answer, index)
    if parts is not None:
        name_tool(parts, event.get("name"))
    return final_arguments(answer, parts, event.get("arguments", event.get("input")))


def _started(answer: Answer, event: dict[str, Any]) -> bool:
    upstream_id = as_dict(event.get("response")).get("id")
    answer.upstream_id = answer.upstream_id or (upstream_id if isinstance(upstream_id, str) else None)
    return False


def _final(answer: Answer, event: dict[str, Any]) -> bool:
    response = event.get("response")
    if not isinstance(response, dict):
        return True
    if not (answer.content or answer.reasoning or answer.tool_calls):  # a server that sent no deltas
        _output(answer, response)
    return _finish(answer, response)


def _output(answer: Answer, response: dict[str, Any]) -> bool:
    """Every output item of a whole response."""
    odd = False
    for index, item in enumerate(as_list(response.get("output"))):
        odd = _item(answer, index, item, whole=True) or odd
    return odd


def _error(answer: Answer, event: dict[str, Any]) -> bool:
    return note_error(answer, event.get("message") or as_dict(event.get("error")).get("message"))


def _item(answer: Answer, index: int, item: Any, *, whole: bool) -> bool:
    """One output item; `whole` (a body's item) folds its text too, which a stream sends as deltas."""
    if not isinstance(item, dict):
        return True
    kind = item.get("type")
    if kind in _CALL_ITEMS:
        parts = tool_call(answer, index)
        if parts is None:
            return False
        odd = name_tool(parts, item.get("name"))
        return final_arguments(answer, parts, item.get("arguments", item.get("input"))) or odd
    if not whole:
        return False
    odd = False
    if kind == "message":
        for part in as_list(item.get("content")):
            part = as_dict(part)
            odd = answer.add_text(part.get("text") or part.get("refusal") or "") or odd
    elif kind == "reasoning":
        texts = as_list(item.get("content")) or as_list(item.get("summary"))
        for part in texts:
            odd = answer.add_reasoning(as_dict(part).get("text") or "") or odd
    return odd


def _finish(answer: Answer, response: dict[str, Any]) -> bool:
    """The final response object: id, status (or why it is incomplete), usage, an error."""
    upstream_id, status = response.get("id"), response.get("status")
    answer.upstream_id = upstream_id if isinstance(upstream_id, str) else answer.upstream_id
    reason = as_dict(response.get("incomplete_details")).get("reason")
    finish = reason if isinstance(reason, str) and reason else status
    answer.finish_reason = finish if isinstance(finish, str) else answer.finish_reason
    if response.get("error"):
        note_error(answer, as_dict(response.get("error")).get("message"))
    usage = response.get("usage")
    if usage is None:
        return False
    if not isinstance(usage, dict):
        return True
    answer.usage = _usage(usage)
    return False


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = as_int(usage.get("input_tokens")) or 0, as_int(usage.get("output_tokens")) or 0
    cached = as_int(as_dict(usage.get("input_tokens_details")).get("cached_tokens"))
    out = chat_usage(usage, prompt, completion, cached)
    reasoning = as_int(as_dict(usage.get("output_tokens_details")).get("reasoning_tokens"))
    if reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


_HANDLERS: dict[str, Callable[[Answer, dict[str, Any]], bool]] = {
    "response.output_text.delta": _text,
    "response.refusal.delta": _text,
    "response.reasoning_text.delta": _reasoning,
    "response.reasoning_summary_text.delta": _reasoning,
    "response.output_item.added": _added,
    "response.output_item.done": _item_done,
    "response.function_call_arguments.delta": _arguments,
    "response.custom_tool_call_input.delta": _arguments,
    "response.function_call_arguments.done": _arguments_done,
    "response.custom_tool_call_input.done": _arguments_done,
    "response.created": _started,
    "response.in_progress": _started,
    **dict.fromkeys(_FINAL, _final),
    "error": _error,
}


def conversation(body: Mapping[str, Any]) -> list[Message]:
    """`instructions` and `input` (a string, or items) as the chat messages a request record reads."""
    messages: list[Message] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    for item in as_list(given):
        if isinstance(item, dict):
            _add_input_item(messages, item)
    return messages


def _add_input_item(messages: list[Message], item: dict[str, Any]) -> None:
    kind = item.get("type")
    if kind in (None, "message") and isinstance(item.get("role"), str):
        messages.append({"role": item["role"], "content": item.get("content")})
    elif kind in _CALL_ITEMS:
        arguments = item.get("arguments", item.get("input"))
        add_tool_call(messages, tool_call_message(item.get("call_id"), item.get("name"), arguments))
    elif kind in ("function_call_output", "custom_tool_call_output"):
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output")})


def error_event(body: Mapping[str, Any]) -> bytes:
    """The gateway's error as a Responses `error` event, with the OpenAI error object beside its fields."""
    error = as_dict(body.get("error"))
    data = {"type": "error", **{k: error.get(k) for k in ("code", "message", "param")}, "error": error}
    return sse_event("error", data)


def session(body: Mapping[str, Any]) -> str | None:
    """Codex's session: `client_metadata.session_id`."""
    found = as_dict(body.get("client_metadata")).get("session_id")
    return found if isinstance(found, str) and found else None


RESPONSES = Dialect("responses", ResponsesFold, conversation, error_event, session)
