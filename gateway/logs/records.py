"""Building the JSONL records of a call: pure functions from a `Call` to dicts.

Field names follow the earlier open-llm-proxy so that existing DuckDB queries keep working;
LOGGING.md documents each one. Whatever a client sends, both records of its call are built: a field
derived from an odd shape that cannot be read is left null and named in `record_errors`, and every string
the client chose is capped (the caps in `fields`, listed in LOGGING.md).

Building runs for every call, so it reads no more of a call than its fields need (see `conversation`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import contains, itemgetter
from typing import Any, Final

from gateway.calls import Call
from gateway.config import LoggingSettings
from gateway.limits.usage import usage_cost
from gateway.logs.conversation import first_user, messages_of, tool_names, trailing_tools, user_text
from gateway.logs.fields import (
    ERROR_CHARS,
    HEADER_CHARS,
    MAX_HEADERS,
    NAME_CHARS,
    ORIGIN_CHARS,
    REFUSED_CHARS,
    cap,
    clip,
    hundredths,
    iso,
    text_of,
)
from gateway.logs.prompts import PromptLedger
from gateway.prices import PriceTable
from providers.base import Endpoint

_NO_BODY: Final[dict[str, Any]] = {}  # the body of a call that has none, only ever read
_SHA256: Final = repeat("content_sha256")
_CHAT: Final = Endpoint.CHAT  # an enum's member is slow to look up
_COMPLETIONS: Final = Endpoint.COMPLETIONS

# The fields a client or an upstream chose the values of: the only ones the scrubber searches for traces of a
# secret (see `RecordBuilder.chosen`). Every other field holds what the gateway made itself: times, ids,
# counts, flags, labels, and the names the config gave (`provider`, `key_name`, `limited_by`). In full
# capture a request's `messages` are one more structure (system prompts replaced by their digests); a system
# prompt's record, and any other kind of record, is searched whole. They come in two kinds: texts (a string
# or null each, which the recorder may know to be searched already) and structures.
# Read with `itemgetter`, many records at a time: every record the builder makes has every field.
_REQUEST_TEXTS: Final = itemgetter(
    "session_id",
    "model",
    "origin",
    "client",
    "user_question",
    "user_message_this_turn",
)
# and its preview when it may hold more than its content (see `RecordBuilder`)
_RESPONSE_TEXT_FIELDS: Final = (
    "session_id",
    "model",
    "origin",
    "finish_reason",
    "upstream_id",
    "content",
    "reasoning_content",
    "error",
)
_RESPONSE_STRUCTURES: Final = itemgetter("tool_calls", "tokens", "upstream_headers", "tool_calls_repaired")
_UNCOUNTED: Final = itemgetter("tool_calls", "upstream_headers", "tool_calls_repaired")  # all but `tokens`
# The usage fields of OpenAI's APIs, OpenRouter's and Anthropic's. A usage object (`tokens`) holding only
# these names, each with a number, true, false or null, or with an object of such fields (its details), holds
# nothing a secret or a key-like string could be spelled in (unless a secret is digits only: see
# `RecordBuilder.numbers_searched`), and is not searched: in most responses it is the bulk of what would be.
_USAGE_NAMES: Final = frozenset(
    {
        *("prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"),
        *("completion_tokens_details", "cached_tokens", "audio_tokens", "reasoning_tokens"),
        *("accepted_prediction_tokens", "rejected_prediction_tokens", "cache_write_tokens", "cost"),
        *("is_byok", "cost_details", "upstream_inference_cost", "upstream_inference_prompt_cost"),
        *("upstream_inference_completions_cost", "input_tokens", "output_tokens", "input_tokens_details"),
        *("output_tokens_details", "cache_creation_input_tokens", "cache_read_input_tokens"),
        *("cache_creation", "ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens", "server_tool_use"),
        *("web_search_requests", "web_fetch_requests", "num_sources"),
    }
)

# A response record starts as a copy of this template, every field in its place with the value a call that has
# none of it gets (the builder fills in the rest, and leaves what the usual call has as it is): cheaper for
# CPython than a dict display of more than 16 entries (built as two dicts), or than a dict grown a key at a
# time.
_RESPONSE: Final[dict[str, Any]] = {
    "timestamp": None,
    "type": "response",
    "request_id": None,
    "session_id": None,
    "provider": None,
    "model": None,
    "origin": None,
    "key_name": None,
    "endpoint": None,
    "stream": False,
    "limited_by": None,
    "status": None,
    "latency_ms": None,
    "ttft_ms": None,
    "finish_reason": None,
    "upstream_id": None,
    "has_content": False,
    "has_tool_calls": False,
    "content_preview": None,
    "content": None,
    "tool_calls": None,
    "has_reasoning_content": False,
    "reasoning_content": None,
    "tokens": None,
    "cost": None,
    "cost_source": None,
    "truncated": False,
    "unreadable_chunks": 0,
    "error": None,
    "upstream_headers": None,
    "client_disconnected": False,
    "tool_calls_repaired": None,
}


def refused(call: Call) -> bool:
    """The call was turned away for its key, before it was routed."""
    return turned_away(call.status, call.provider)


def turned_away(status: int, provider: str | None) -> bool:
    """`refused`, from the call's status and provider (the builders have read them already)."""
    return status == 401 and provider is None


def head(call: Call, kind: str, ts: float, model: str | None, short: bool | None = None) -> dict[str, Any]:
    """The fields both records of a call start with; `short` says whether it was `refused` (asked if None).

    What the minimal record of a failure starts with: `RecordBuilder` writes the same fields out itself.
    """
    if short is None:
        short = refused(call)
    names = REFUSED_CHARS if short else NAME_CHARS
    return {
        "timestamp": iso(ts),
        "type": kind,
        "request_id": call.request_id,
        "session_id": clip(call.session_id, names),
        "provider": call.provider,
        "model": clip(model, names),
        "origin": clip(call.origin, names if short else ORIGIN_CHARS),
        "key_name": call.key_name,
        "endpoint": call.endpoint.label,
        "stream": call.stream,
        "limited_by": call.limited_by,
    }


@dataclass
class RecordBuilder:
    """Turns calls into records under one capture setting; its ledger says which system prompts to store."""

    settings: LoggingSettings
    prices: PriceTable = field(default_factory=PriceTable)
    prompt_ledger: PromptLedger = field(default_factory=PromptLedger)
    # Usage objects of numbers are searched too: a known secret is digits only (`Scrubber.numeric`).
    numbers_searched: bool = False

    def __post_init__(self) -> None:
        # Read for every record: plain attributes rather than looked up through the settings each time.
        self.full = self.settings.capture == "full"
        self._limit = self.settings.content_max_chars
        self._preview = self.settings.preview_chars
        # The preview is the start of `content` (its marker the gateway's), unless it may be longer.
        self._preview_searched = self._preview > self._limit
        self._response_texts = (
            itemgetter(*_RESPONSE_TEXT_FIELDS, "content_preview")
            if self._preview_searched
            else itemgetter(*_RESPONSE_TEXT_FIELDS)
        )
        self._result_cap = self._limit if self.full else self._preview

    def chosen(self, record: dict[str, Any]) -> tuple[Any, ...] | None:
        """The values in `record` a client or an upstream chose; None: the whole record is to be searched."""
        kind = record.get("type")
        try:
            if kind == "response":
                texts, structures = self.chosen_in((), (record,))
                return (*texts, *structures[0])  # a response's structures come in one tuple
            if kind == "request":
                texts, structures = self.chosen_in((record,), ())
                # in full capture a request's structures come in one tuple (its tool results, its messages)
                return (*texts, *structures[0]) if self.full else (*texts, *structures)
        except KeyError:  # not a record the builder made (the minimal one of a failure)
            pass
        return None

    def chosen_in(
        self, requests: Sequence[dict[str, Any]], responses: Sequence[dict[str, Any]]
    ) -> tuple[list[str | None], list[Any]]:
        """What `chosen` picks in many records at once: texts, structures."""
        texts: list[str | None] = []
        structures: list[Any] = []
        full = self.full
        for record in requests:
            texts += _REQUEST_TEXTS(record)
            results = record["tool_results_this_turn"]
            structures.append((results, record["messages"]) if full else results)
        response_texts = self._response_texts
        numbers_searched = self.numbers_searched
        for record in responses:
            texts += response_texts(record)
            texts.append(record.get("requested_model"))  # present only when a fallback answered
            usage = record["tokens"]
            if usage is None or (not numbers_searched and _numbers_only(usage, True)):
                structures.append(_UNCOUNTED(record))
            else:
                structures.append(_RESPONSE_STRUCTURES(record))
        if responses and not self._preview_searched:
            texts.append(None)  # a response's unsearched preview: a null in its place
        return texts, structures

    def request(self, call: Call) -> list[dict[str, Any]]:
        """The request record, preceded in `full` capture by any system prompt not stored before."""
        (
            request_id, endpoint, label, wall_start, status, provider, key_name, session, client, origin,
            requested_model, stream, limited_by, body, repaired,
        ) = call.request_fields()  # fmt: skip
        body = body if isinstance(body, dict) else _NO_BODY
        errors: list[str] = []
        if endpoint is _CHAT:  # the usual call, read at once: a dict's `get` cannot fail
            messages = body.get("messages")
            if not isinstance(messages, list):
                messages = ()
        else:
            messages = messages_of(call, body, errors)
        short = turned_away(status, provider)  # a caller without a key may not fill the logs: little is kept
        names = REFUSED_CHARS if short else NAME_CHARS
        limit = REFUSED_CHARS if short else self._limit
        # The text of the first and of the last user message (a completion's prompt is both).
        first: dict[str, Any] | None
        last: Any
        if endpoint is _COMPLETIONS:
            first = last = {"content": body.get("prompt")}
        else:
            first = first_user(messages)
            last = messages[-1] if messages else None  # the usual turn ends with the user's message
            if last is not first and not (type(last) is dict and last.get("role") == "user"):
                last = first_user(reversed(messages))
        question = this_turn = user_text(first, limit, errors, "user_question")
        if last is not first or question is None:
            this_turn = user_text(last, limit, errors, "user_message_this_turn")
        if short or (last is not None and messages and messages[-1] is last):
            results = []  # no tool results after the user's message
        else:
            results = self._tool_results(messages, errors)
        tools, thinking = body.get("tools"), body.get("enable_thinking")
        # A dict display of more than 16 entries costs CPython a second dict: the last fields are stored.
        record: dict[str, Any] = {
            "timestamp": iso(wall_start),
            "type": "request",
            "request_id": request_id,
            "session_id": None if session is None else clip(session, names),
            "provider": provider,
            "model": clip(requested_model, names),
            "origin": None if origin is None else clip(origin, names if short else ORIGIN_CHARS),
            "key_name": key_name,
            "endpoint": label,
            "stream": stream,
            "limited_by": limited_by,
            "client": None if client is None else clip(client, names),
            "message_count": _dicts(messages),
            "tools_count": len(tools) if isinstance(tools, list) else 0,
            "tool_calls_repaired": repaired,  # whether the answer will be checked
            "enable_thinking": thinking if isinstance(thinking, bool) else None,
        }
        record["user_question"] = question
        record["user_message_this_turn"] = this_turn
        record["tool_results_this_turn"] = results
        prompts = None
        if self.full and short:
            record["messages"] = record["system_prompt_sha256"] = None
        elif self.full:
            prompts = self._add_messages(record, errors, messages, wall_start)
        if errors:
            record["record_errors"] = errors
        return [*prompts, record] if prompts else [record]

    def _tool_results(self, messages: Sequence[Any], errors: list[str]) -> list[dict[str, Any]]:
        """The trailing tool messages (this turn's results), named from the calls that asked for them."""
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") != "tool":
            return []  # the usual turn: it ends with the user's message
        try:
            run, before = trailing_tools(messages)
            if not run:
                return []
            names = tool_names(messages, before, {str(m.get("tool_call_id")) for m in run})
            return [self._tool_result(message, names) for message in run]
        except Exception:
            errors.append("tool_results_this_turn")
            return []

    def _tool_result(self, message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
        call_id = message.get("tool_call_id")
        return {
            "tool_call_id": clip(call_id, NAME_CHARS),
            "name": clip(names.get(str(call_id)) or message.get("name"), NAME_CHARS),
            "content": cap(text_of(message.get("content")), self._result_cap),
        }

    def _add_messages(
        self, record: dict[str, Any], errors: list[str], messages: Sequence[Any], ts: float
    ) -> list[dict[str, Any]]:
        """`full` capture: the messages, system prompts replaced by their hash; new prompts as records."""
        prompts: list[dict[str, Any]] = []
        out: list[Any] = []
        limit = self._limit
        for message in messages:  # an agent's conversation may be long: the usual message costs a look or two
            if not isinstance(message, dict):
                continue
            if message.get("role") in ("system", "developer"):
                try:
                    out.append(self._prompt_ref(message, ts, prompts))
                except Exception:  # a prompt no text can be made of stays as sent, for the serializer to mend
                    errors.append("messages")
                    out.append(message)
            elif isinstance(content := message.get("content"), str) and len(content) > limit:
                out.append({**message, "content": cap(content, limit)})
            else:
                out.append(message)
        record["messages"] = out
        # The first message holding a hash (read in C: a conversation may be long, and hold no system prompt).
        first = next(compress(out, map(contains, out, _SHA256)), None)
        record["system_prompt_sha256"] = None if first is None else first["content_sha256"]
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
        (
            request_id, label, status, provider, key_name, session, origin, model, requested_model,
            stream, limited_by, started, ended, first_byte, error, headers, disconnected, repair,
        ) = call.response_fields()  # fmt: skip
        answer = call.answer  # its parts are text by construction: folding skips (and counts) any other shape
        (
            content_parts, reasoning_parts, tool_parts, finish_reason, upstream_id, usage, answer_error,
            truncated, bad_chunks,
        ) = answer.record_fields()  # fmt: skip
        limit = self._limit
        short = turned_away(status, provider)
        names = REFUSED_CHARS if short else NAME_CHARS
        content, reasoning = "".join(content_parts), "".join(reasoning_parts)
        tool_calls = _capped_tools(answer.tool_call_list(), limit) if tool_parts else []
        error = error or answer_error
        record = _RESPONSE.copy()  # every field in its place: each is filled in below
        record["timestamp"] = iso(now)
        record["request_id"] = request_id
        if session is not None:
            record["session_id"] = clip(session, names)
        record["provider"] = provider
        record["model"] = clip(model, names)
        if origin is not None:
            record["origin"] = clip(origin, names if short else ORIGIN_CHARS)
        record["key_name"] = key_name
        record["endpoint"] = label
        if stream:
            record["stream"] = True
            # `Call.ttft_ms`, and `Call.latency_ms` below, worked out here: compiled, several times quicker
            record["ttft_ms"] = None if first_byte is None else hundredths(first_byte - started)
        if limited_by is not None:
            record["limited_by"] = limited_by
        record["status"] = status
        record["latency_ms"] = hundredths((time.perf_counter() if ended is None else ended) - started)
        record["finish_reason"] = clip(finish_reason, NAME_CHARS)
        record["upstream_id"] = clip(upstream_id, NAME_CHARS)
        if content:
            record["has_content"] = True
            record["content_preview"] = cap(content, self._preview)
            record["content"] = cap(content, limit)
        record["tool_calls"] = tool_calls
        if tool_calls:
            record["has_tool_calls"] = True
        if reasoning:
            record["has_reasoning_content"] = True
            record["reasoning_content"] = cap(reasoning, limit)
        record["tokens"] = usage
        errors = None
        if usage:
            try:  # the usage is the upstream's, read as sent
                record["cost"], record["cost_source"] = usage_cost(self.prices, model, usage)
            except Exception:
                errors = ["cost"]  # USD and its source stay null
        if truncated is True:
            record["truncated"] = True
        if bad_chunks:
            record["unreadable_chunks"] = bad_chunks
        if error is not None:
            record["error"] = clip(error, ERROR_CHARS)
        if headers:
            record["upstream_headers"] = _capped_headers(headers)
        if disconnected:
            record["client_disconnected"] = True
        if repair is not None:
            record["tool_calls_repaired"] = repair.report()
        if requested_model and requested_model != model:
            record["requested_model"] = clip(requested_model, names)
        if errors:
            record["record_errors"] = errors
        return record


def _dicts(messages: Sequence[Any]) -> int:
    """How many of `messages` are objects (a loop, compiled: cheaper than `sum(map(isinstance, ...))`)."""
    count = 0
    for message in messages:
        if isinstance(message, dict):
            count += 1
    return count


def _numbers_only(usage: Any, nested: bool) -> bool:
    """Whether `usage` holds only fields of _USAGE_NAMES with numbers (true, false, null) for values, or, when
    `nested`, objects of such fields."""
    if type(usage) is not dict:
        return False
    for name, value in usage.items():
        if name not in _USAGE_NAMES:
            return False
        if type(value) is dict:
            if not (nested and _numbers_only(value, False)):
                return False
        elif not (value is None or type(value) is int or type(value) is float or type(value) is bool):
            return False
    return True


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
