"""Building the JSONL records of a call: pure functions from a `Call` to dicts.

Field names follow the earlier open-llm-proxy so that existing DuckDB queries keep working;
LOGGING.md documents each one. Whatever a client sends, both records of its call are built: a field
derived from an odd shape that cannot be read is left null and named in `record_errors`, and every string
the client chose is capped (the caps below, listed in LOGGING.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import orjson

from gateway.calls import Call
from gateway.config import LoggingSettings
from gateway.dialects import dialect_of
from gateway.limits.usage import usage_cost
from gateway.logs.prompts import PromptLedger
from gateway.prices import PriceTable

NAME_CHARS = 256  # model, session_id, client, requested_model, tool names and ids, finish_reason, upstream_id
ORIGIN_CHARS = 512
ERROR_CHARS = 2000
HEADER_CHARS = 256  # each upstream header's name and value
MAX_HEADERS = 20
REFUSED_CHARS = 64  # a call refused for its key: anyone can send one, so its strings are kept short
DUMP_OPTIONS = orjson.OPT_NON_STR_KEYS
T = TypeVar("T")


def iso(ts: float) -> str:
    """UTC ISO-8601 with microseconds, the records' timestamp format."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts (and plain strings) of an array."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = (p if isinstance(p, str) else p.get("text") if isinstance(p, dict) else None for p in content)
        return "\n".join(p for p in parts if isinstance(p, str))
    return orjson.dumps(content, default=str, option=DUMP_OPTIONS).decode()


def cap(text: str | None, limit: int) -> str | None:
    """`text` cut to `limit` characters, ending with a marker that says how many more there were."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"… [{len(text) - limit} more chars]"


def clip(value: Any, limit: int) -> str | None:
    """A client-chosen value as capped text: None stays None, anything else becomes text first."""
    return None if value is None else cap(value if isinstance(value, str) else text_of(value), limit)


def refused(call: Call) -> bool:
    """The call was turned away for its key, before it was routed."""
    return call.status == 401 and call.provider is None


def _name_cap(call: Call) -> int:
    return REFUSED_CHARS if refused(call) else NAME_CHARS


def head(call: Call, kind: str, ts: float, model: str | None) -> dict[str, Any]:
    """The fields both records of a call start with."""
    names = _name_cap(call)
    return {
        "timestamp": iso(ts),
        "type": kind,
        "request_id": call.request_id,
        "session_id": clip(call.session_id, names),
        "provider": call.provider,
        "model": clip(model, names),
        "origin": clip(call.origin, names if refused(call) else ORIGIN_CHARS),
        "key_name": call.key_name,
        "endpoint": call.endpoint.label,
        "stream": call.stream,
        "limited_by": call.limited_by,
    }


def _try(errors: list[str], name: str, build: Callable[[], T], default: Any) -> T:
    """`build()`, or `default` with `name` noted in `errors`: one odd field costs only that field."""
    try:
        return build()
    except Exception:
        errors.append(name)
        return default


@dataclass
class RecordBuilder:
    """Turns calls into records under one capture setting; its ledger says which system prompts to store."""

    settings: LoggingSettings
    prices: PriceTable = field(default_factory=PriceTable)
    prompt_ledger: PromptLedger = field(default_factory=PromptLedger)

    @property
    def full(self) -> bool:
        return self.settings.capture == "full"

    def request(self, call: Call) -> list[dict[str, Any]]:
        """The request record, preceded in `full` capture by any system prompt not stored before."""
        body = call.body if isinstance(call.body, dict) else {}
        errors: list[str] = []
        raw_messages = _try(errors, "messages", partial(_conversation, call, body), None)
        tools, thinking = body.get("tools"), body.get("enable_thinking")
        messages = [m for m in raw_messages if isinstance(m, dict)] if isinstance(raw_messages, list) else []
        short = refused(call)
        record: dict[str, Any] = {
            **head(call, "request", call.wall_start, call.requested_model),
            "client": clip(call.client, _name_cap(call)),
            "message_count": len(messages),
            "tools_count": len(tools) if isinstance(tools, list) else 0,
            "tool_calls_repaired": call.tool_repair is not None,  # whether the answer will be checked
            "enable_thinking": thinking if isinstance(thinking, bool) else None,
            "user_question": None,
            "user_message_this_turn": None,
            "tool_results_this_turn": [],
        }
        prompts: list[dict[str, Any]] = []
        self._add_questions(record, errors, call, messages)
        if self.full and short:
            record["messages"] = record["system_prompt_sha256"] = None
        elif self.full:
            prompts = self._add_messages(record, errors, messages, call.wall_start)
        if errors:
            record["record_errors"] = errors
        return [*prompts, record]

    def _add_questions(
        self, record: dict[str, Any], errors: list[str], call: Call, messages: list[Any]
    ) -> None:
        short = refused(call)  # a caller without a key may not fill the logs: little of what it sent is kept
        limit = REFUSED_CHARS if short else self.settings.content_max_chars
        users = [m for m in messages if m.get("role") == "user"]
        first, last = (users[0], users[-1]) if users else (None, None)
        if record["endpoint"] == "completions":
            first = last = {"content": call.body.get("prompt") if isinstance(call.body, dict) else None}
        for name, message in (("user_question", first), ("user_message_this_turn", last)):
            if message is not None:
                record[name] = _try(errors, name, partial(_content_text, message, limit), None)
        if not short:
            results = _try(errors, "tool_results_this_turn", lambda: self._tool_results(messages), [])
            record["tool_results_this_turn"] = results

    def _tool_results(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The trailing tool messages (this turn's results), named from the calls that asked for them."""
        names: dict[str, str] = {}
        results: list[dict[str, Any]] = []
        for message in messages:
            role = message.get("role")
            if role != "tool":
                results = []
            if role == "assistant":
                names.update(_asked_tools(message.get("tool_calls")))
            elif role == "tool":
                call_id = message.get("tool_call_id")
                results.append(
                    {
                        "tool_call_id": clip(call_id, NAME_CHARS),
                        "name": clip(names.get(str(call_id)) or message.get("name"), NAME_CHARS),
                        "content": cap(text_of(message.get("content")), self._result_cap),
                    }
                )
        return results

    @property
    def _result_cap(self) -> int:
        return self.settings.content_max_chars if self.full else self.settings.preview_chars

    def _add_messages(
        self, record: dict[str, Any], errors: list[str], messages: list[dict[str, Any]], ts: float
    ) -> list[dict[str, Any]]:
        """`full` capture: the messages, system prompts replaced by their hash; new prompts as records."""
        prompts: list[dict[str, Any]] = []
        out: list[Any] = []
        for message in messages:
            if message.get("role") in ("system", "developer"):
                # a prompt no text can be made of stays as sent, for the serializer to mend
                out.append(_try(errors, "messages", partial(self._prompt_ref, message, ts, prompts), message))
            else:
                out.append(_capped_message(message, self.settings.content_max_chars))
        record["messages"] = out
        record["system_prompt_sha256"] = next(
            (m["content_sha256"] for m in out if "content_sha256" in m), None
        )
        return prompts

    def _prompt_ref(
        self, message: dict[str, Any], ts: float, prompts: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """`{role, content_sha256}` for a system prompt; a prompt the ledger hands us goes into `prompts`."""
        text = text_of(message.get("content"))
        # surrogatepass: a lone surrogate from the client still hashes, always to the same digest
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        if self.prompt_ledger.claim(digest, ts):
            prompts.append({"timestamp": iso(ts), "type": "system_prompt", "sha256": digest, "content": text})
        return {"role": message["role"], "content_sha256": digest}

    def response(self, call: Call, now: float) -> dict[str, Any]:
        """The response record: status, timings, the answer rebuilt, usage and cost."""
        errors: list[str] = []
        record = {
            **head(call, "response", now, call.model),
            "status": call.status,
            "latency_ms": call.latency_ms,
            "ttft_ms": call.ttft_ms if call.stream else None,
            **self._answer(call, errors),
            "error": clip(call.error or call.answer.error, ERROR_CHARS),
            "upstream_headers": _try(
                errors, "upstream_headers", lambda: _capped_headers(call.upstream_headers), None
            ),
            "client_disconnected": call.client_disconnected,
            "tool_calls_repaired": _try(errors, "tool_calls_repaired", lambda: _repaired(call), None),
        }
        if call.requested_model and call.requested_model != call.model:
            record["requested_model"] = clip(call.requested_model, _name_cap(call))
        if errors:
            record["record_errors"] = errors
        return record

    def _answer(self, call: Call, errors: list[str]) -> dict[str, Any]:
        """The answer's fields of a response record, each read on its own."""
        answer = call.answer
        limit, preview = self.settings.content_max_chars, self.settings.preview_chars
        content = _try(errors, "content", lambda: answer.text, "")
        reasoning = _try(errors, "reasoning_content", lambda: answer.reasoning_text, "")
        tool_calls = _try(errors, "tool_calls", lambda: _capped_tools(answer.tool_call_list(), limit), [])
        cost, source = _try(errors, "cost", lambda: self._cost(call.model, answer.usage), (None, None))
        return {
            "finish_reason": _try(
                errors, "finish_reason", lambda: clip(answer.finish_reason, NAME_CHARS), None
            ),
            "upstream_id": _try(errors, "upstream_id", lambda: clip(answer.upstream_id, NAME_CHARS), None),
            "has_content": bool(content),
            "has_tool_calls": bool(tool_calls),
            "content_preview": cap(content, preview) if content else None,
            "content": cap(content, limit) if content else None,
            "tool_calls": tool_calls,
            "has_reasoning_content": bool(reasoning),
            "reasoning_content": cap(reasoning, limit) if reasoning else None,
            "tokens": answer.usage,
            "cost": cost,
            "cost_source": source,
            # Read with defaults: these attributes of the answer are newer than this module's first users.
            "truncated": getattr(answer, "truncated", False) is True,
            "unreadable_chunks": _count(getattr(answer, "bad_chunks", 0)),
        }

    def _cost(self, model: str | None, usage: Mapping[str, Any] | None) -> tuple[float | None, str | None]:
        return usage_cost(self.prices, model, usage)


def _conversation(call: Call, body: dict[str, Any]) -> Any:
    """The request's messages: chat's own, or another dialect's conversation read as chat messages."""
    dialect = dialect_of(call.endpoint)
    return body.get("messages") if dialect is None else dialect.conversation(body)


def _asked_tools(tool_calls: Any) -> dict[str, str]:
    """Tool-call id -> function name, from an assistant message's `tool_calls` of whatever shape."""
    names: dict[str, str] = {}
    for tc in tool_calls if isinstance(tool_calls, list) else ():
        function = tc.get("function") if isinstance(tc, dict) else None
        if isinstance(function, dict):
            names[str(tc.get("id"))] = clip(function.get("name"), NAME_CHARS) or ""
    return names


def _content_text(message: dict[str, Any], limit: int) -> str | None:
    return cap(text_of(message.get("content")), limit)


def _capped_message(message: dict[str, Any], limit: int) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str) and len(content) > limit:
        return {**message, "content": cap(content, limit)}
    return message


def _capped_tools(tool_calls: list[dict[str, str]], limit: int) -> list[dict[str, Any]]:
    return [
        {"name": clip(tc.get("name"), NAME_CHARS), "arguments": clip(tc.get("arguments"), limit)}
        for tc in tool_calls
    ]


def _capped_headers(headers: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not headers:
        return None
    kept = list(headers.items())[:MAX_HEADERS]
    return {str(clip(name, HEADER_CHARS)): clip(value, HEADER_CHARS) for name, value in kept}


def _repaired(call: Call) -> dict[str, Any] | None:
    """What the repair of tool calls leaked as text did, or None when the call had none."""
    repair = call.tool_repair
    return None if repair is None else repair.report()


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
