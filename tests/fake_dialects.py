"""The fake upstream's answers in the two other dialects vLLM serves, built from a `Reply`.

OpenAI's Responses API: typed events each with an `event:` line, each output item added, its deltas and done,
ending in `response.completed` (or `response.incomplete`) with usage. Anthropic's Messages API:
`message_start`, pings, content blocks by deltas, `message_delta` with usage, `message_stop`; an `error`
event mid-stream when the reply says so. Pure functions of the request body and the reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from fake_upstream import Reply

DialectEvents = Callable[[dict[str, Any], "Reply", str, str], list[bytes]]
DialectBody = Callable[[dict[str, Any], "Reply", str, str], dict[str, Any]]


def pieces(text: str, count: int) -> list[str]:
    """`text` in `count` pieces of about equal size; with no count, a word (and its space) a piece."""
    if not text:
        return []
    if count <= 0:
        words = text.split(" ")
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
    size = max(1, -(-len(text) // count))
    return [text[i : i + size] for i in range(0, len(text), size)]


def sse(kind: str, data: dict[str, Any]) -> bytes:
    """One event as vLLM and Anthropic frame it: an `event:` line, then the data with the same `type`."""
    return f"event: {kind}\n".encode() + b"data: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def prompt_words(body: dict[str, Any]) -> int:
    """Words in every string of the conversation: a stand-in for a token count."""
    parts = [body.get(k) for k in ("messages", "input", "system", "instructions")]
    return sum(len(text.split()) for text in _strings(parts))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _output_items(reply: Reply, answer_id: str) -> list[dict[str, Any]]:
    """A Responses answer's items: reasoning, the message, the function calls."""
    items: list[dict[str, Any]] = []
    if reply.reasoning:
        text = {"type": "reasoning_text", "text": reply.reasoning}
        items.append({"id": f"rs_{answer_id}", "type": "reasoning", "summary": [], "content": [text]})
    if reply.content:
        part = {"type": "output_text", "text": reply.content, "annotations": []}
        items.append({"id": f"msg_{answer_id}", "type": "message", "role": "assistant", "content": [part]})
    for i, call in enumerate(reply.tool_calls):
        items.append(
            {
                "id": f"fc_{answer_id}_{i}",
                "type": "function_call",
                "call_id": f"call_{i}",
                "name": call["name"],
                "arguments": call["arguments"],
            }
        )
    return [{**item, "status": "completed"} for item in items]


def response_object(body: dict[str, Any], reply: Reply, answer_id: str, model: str) -> dict[str, Any]:
    """A whole Responses answer: `incomplete` when `finish_reason` is max_output_tokens."""
    prompt, completion = prompt_words(body), len(reply.content.split()) + len(reply.reasoning.split())
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": len(reply.reasoning.split())},
        "total_tokens": prompt + completion,
    }
    incomplete = reply.finish_reason == "max_output_tokens"
    return {
        "id": f"resp_{answer_id}",
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": reply.finish_reason} if incomplete else None,
        "output": _output_items(reply, answer_id),
        "usage": usage,
    }


def responses_events(body: dict[str, Any], reply: Reply, answer_id: str, model: str) -> list[bytes]:
    """A Responses stream as vLLM writes it: each item added, its deltas, done; then response.completed."""
    whole = response_object(body, reply, answer_id, model)
    started = {**whole, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
    ]
    for index, item in enumerate(whole["output"]):
        events += _item_events(index, item, reply)
    if reply.stream_error:
        events.append(("error", {"code": "server_error", "message": reply.stream_error, "param": None}))
    else:
        final = "response.incomplete" if whole["status"] == "incomplete" else "response.completed"
        events.append((final, {"response": whole}))
    return [sse(kind, {**data, "sequence_number": n}) for n, (kind, data) in enumerate(events)]


def _item_events(index: int, item: dict[str, Any], reply: Reply) -> list[tuple[str, dict[str, Any]]]:
    at = {"output_index": index, "item_id": item["id"]}
    calling = item["type"] == "function_call"
    empty = {**item, "status": "in_progress", **({"arguments": ""} if calling else {"content": []})}
    events = [("response.output_item.added", {"output_index": index, "item": empty})]
    if calling:
        parts = pieces(item["arguments"], 3)
        events += [("response.function_call_arguments.delta", {**at, "delta": p}) for p in parts]
        events.append(("response.function_call_arguments.done", {**at, "arguments": item["arguments"]}))
    else:
        whole = item["content"][0]
        text, prefix = whole["text"], whole["type"]  # output_text or reasoning_text
        part = {**at, "content_index": 0}
        events.append(("response.content_part.added", {**part, "part": {**whole, "text": ""}}))
        events += [(f"response.{prefix}.delta", {**part, "delta": p}) for p in pieces(text, reply.chunks)]
        events.append((f"response.{prefix}.done", {**part, "text": text}))
        events.append(("response.content_part.done", {**part, "part": whole}))
    return [*events, ("response.output_item.done", {"output_index": index, "item": item})]


def _blocks(reply: Reply) -> list[dict[str, Any]]:
    """A Messages answer's content blocks: thinking, text, tool uses."""
    blocks: list[dict[str, Any]] = []
    if reply.reasoning:
        blocks.append({"type": "thinking", "thinking": reply.reasoning, "signature": "fake-signature"})
    if reply.content:
        blocks.append({"type": "text", "text": reply.content})
    for i, call in enumerate(reply.tool_calls):
        blocks.append(
            {
                "type": "tool_use",
                "id": f"toolu_{i}",
                "name": call["name"],
                "input": orjson.loads(call["arguments"]),
            }
        )
    return blocks


def message_object(body: dict[str, Any], reply: Reply, answer_id: str, model: str) -> dict[str, Any]:
    """A whole Messages answer, its usage split as Anthropic splits it (cached prompt tokens apart)."""
    completion = len(reply.content.split()) + len(reply.reasoning.split())
    stop = reply.finish_reason or ("tool_use" if reply.tool_calls else "end_turn")
    usage = {
        "input_tokens": prompt_words(body),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": completion,
    }
    return {
        "id": f"msg_{answer_id}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _blocks(reply),
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }


def messages_events(body: dict[str, Any], reply: Reply, answer_id: str, model: str) -> list[bytes]:
    """A Messages stream as Anthropic writes it: the message, a ping, each block by deltas, the stop."""
    whole = message_object(body, reply, answer_id, model)
    usage = whole["usage"]
    start = {**whole, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events = [sse("message_start", {"message": start})]
    if reply.pings:
        events.append(sse("ping", {}))
    for index, block in enumerate(whole["content"]):
        events += _block_events(index, block, reply)
    if reply.stream_error:
        error = {"type": "overloaded_error", "message": reply.stream_error}
        return [*events, sse("error", {"error": error})]
    delta = {"stop_reason": whole["stop_reason"], "stop_sequence": None}
    events.append(sse("message_delta", {"delta": delta, "usage": {"output_tokens": usage["output_tokens"]}}))
    return [*events, sse("message_stop", {})]


def _block_events(index: int, block: dict[str, Any], reply: Reply) -> list[bytes]:
    kind = block["type"]
    if kind == "tool_use":
        empty, field_, delta_type = {**block, "input": {}}, "partial_json", "input_json_delta"
        parts = pieces(orjson.dumps(block["input"]).decode(), 3)
    else:
        field_ = "text" if kind == "text" else "thinking"
        empty, delta_type = {**block, field_: ""}, f"{field_}_delta"
        parts = pieces(block[field_], reply.chunks)
    events = [sse("content_block_start", {"index": index, "content_block": empty})]
    for n, piece in enumerate(parts):
        events.append(
            sse("content_block_delta", {"index": index, "delta": {"type": delta_type, field_: piece}})
        )
        if reply.pings and n == 0 and kind == "text":
            events.append(sse("ping", {}))
    if kind == "thinking":
        signature = {"type": "signature_delta", "signature": block["signature"]}
        events.append(sse("content_block_delta", {"index": index, "delta": signature}))
    return [*events, sse("content_block_stop", {"index": index})]
