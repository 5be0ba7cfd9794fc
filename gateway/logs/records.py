"""Building the JSONL records of a call: pure functions from a `Call` to dicts.

Field names follow the earlier open-llm-proxy so that existing DuckDB queries keep working;
LOGGING.md documents each one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.calls import Call
from gateway.config import LoggingSettings
from gateway.prices import PriceTable


def iso(ts: float) -> str:
    """UTC ISO-8601 with microseconds, the records' timestamp format."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a content array."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return "" if content is None else orjson.dumps(content).decode()


def cap(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"… [{len(text) - limit} more chars]"


@dataclass
class RecordBuilder:
    """Turns calls into records under one capture setting; remembers which system prompts it stored."""

    settings: LoggingSettings
    prices: PriceTable = field(default_factory=PriceTable)
    _seen_prompts: set[str] = field(default_factory=set)

    @property
    def full(self) -> bool:
        return self.settings.capture == "full"

    def request(self, call: Call) -> list[dict[str, Any]]:
        """The request record, preceded in `full` capture by any system prompt not stored before."""
        body = call.body or {}
        raw_messages = body.get("messages")
        messages = [m for m in raw_messages if isinstance(m, dict)] if isinstance(raw_messages, list) else []
        users = [m for m in messages if m.get("role") == "user"]
        limit = self.settings.content_max_chars
        record: dict[str, Any] = {
            "timestamp": iso(call.wall_start),
            "type": "request",
            "request_id": call.request_id,
            "session_id": call.session_id,
            "client": call.client,
            "key_name": call.key_name,
            "provider": call.provider,
            "model": call.requested_model,
            "origin": call.origin,
            "endpoint": call.endpoint.label,
            "stream": call.stream,
            "message_count": len(messages),
            "tools_count": len(body["tools"]) if isinstance(body.get("tools"), list) else 0,
            "enable_thinking": body.get("enable_thinking")
            if isinstance(body.get("enable_thinking"), bool)
            else None,
            "user_question": cap(text_of(users[0].get("content")), limit) if users else None,
            "user_message_this_turn": cap(text_of(users[-1].get("content")), limit) if users else None,
            "tool_results_this_turn": self._tool_results(messages),
        }
        if call.endpoint.label == "completions":
            record["user_question"] = record["user_message_this_turn"] = cap(
                text_of(body.get("prompt")), limit
            )
        if not self.full:
            return [record]
        prompts, record["messages"] = self._full_messages(messages, call.wall_start)
        hashes = (m["content_sha256"] for m in record["messages"] if "content_sha256" in m)
        record["system_prompt_sha256"] = next(hashes, None)
        return [*prompts, record]

    def _tool_results(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The trailing tool messages (this turn's results), named from the calls that asked for them."""
        names: dict[str, str] = {}
        results: list[dict[str, Any]] = []
        for message in messages:
            if message.get("role") != "tool":
                results = []
            if message.get("role") == "assistant":
                for tc in message.get("tool_calls") or ():
                    if isinstance(tc, dict):
                        names[str(tc.get("id"))] = str((tc.get("function") or {}).get("name", ""))
            elif message.get("role") == "tool":
                call_id = message.get("tool_call_id")
                content = cap(text_of(message.get("content")), self._result_cap)
                results.append(
                    {
                        "tool_call_id": call_id,
                        "name": names.get(str(call_id)) or message.get("name"),
                        "content": content,
                    }
                )
        return results

    @property
    def _result_cap(self) -> int:
        return self.settings.content_max_chars if self.full else self.settings.preview_chars

    def _full_messages(
        self, messages: list[dict[str, Any]], ts: float
    ) -> tuple[list[dict[str, Any]], list[Any]]:
        """Messages with system prompts replaced by their hash; new prompts become records of their own."""
        prompts: list[dict[str, Any]] = []
        out: list[Any] = []
        for message in messages:
            if message.get("role") in ("system", "developer"):
                text = text_of(message.get("content"))
                digest = hashlib.sha256(text.encode()).hexdigest()
                if digest not in self._seen_prompts:
                    self._seen_prompts.add(digest)
                    prompts.append(
                        {"timestamp": iso(ts), "type": "system_prompt", "sha256": digest, "content": text}
                    )
                out.append({"role": message["role"], "content_sha256": digest})
            else:
                out.append(_capped_message(message, self.settings.content_max_chars))
        return prompts, out

    def response(self, call: Call, now: float) -> dict[str, Any]:
        """The response record: status, timings, the answer rebuilt, usage and cost."""
        answer = call.answer
        content, reasoning = answer.text, answer.reasoning_text
        tool_calls = answer.tool_call_list()
        cost, source = self._cost(call.model, answer.usage)
        limit = self.settings.content_max_chars
        record = {
            "timestamp": iso(now),
            "type": "response",
            "request_id": call.request_id,
            "session_id": call.session_id,
            "provider": call.provider,
            "model": call.model,
            "origin": call.origin,
            "key_name": call.key_name,
            "endpoint": call.endpoint.label,
            "stream": call.stream,
            "status": call.status,
            "latency_ms": call.latency_ms,
            "ttft_ms": call.ttft_ms if call.stream else None,
            "finish_reason": answer.finish_reason,
            "upstream_id": answer.upstream_id,
            "has_content": bool(content),
            "has_tool_calls": bool(tool_calls),
            "content_preview": cap(content, self.settings.preview_chars) if content else None,
            "content": cap(content, limit) if content else None,
            "tool_calls": tool_calls,
            "has_reasoning_content": bool(reasoning),
            "reasoning_content": cap(reasoning, limit) if reasoning else None,
            "tokens": answer.usage,
            "cost": cost,
            "cost_source": source,
            "error": call.error,
            "upstream_headers": call.upstream_headers,
            "client_disconnected": call.client_disconnected,
        }
        if call.requested_model and call.requested_model != call.model:
            record["requested_model"] = call.requested_model
        return record

    def _cost(self, model: str | None, usage: Mapping[str, Any] | None) -> tuple[float | None, str | None]:
        if not usage:
            return None, None
        reported = usage.get("cost")
        if isinstance(reported, int | float) and not isinstance(reported, bool):
            return float(reported), "provider"
        price = self.prices.lookup(model)
        if price is None:
            return None, None
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        cost = price.cost(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, cached)
        return round(cost, 8), "price_table"


def _capped_message(message: dict[str, Any], limit: int) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str) and len(content) > limit:
        return {**message, "content": cap(content, limit)}
    return message
