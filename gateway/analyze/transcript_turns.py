"""Turning one session's records, turn by turn, into transcript entries."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]
WIDTH = 100
SYSTEM_SHOWN = 600  # a system prompt is often long and the same every turn: show its start


@dataclass(frozen=True)
class Entry:
    """One line of the conversation: who said what, when."""

    ts: Any
    kind: str  # system, user, assistant, reasoning, tool_call, tool_result, call, error, note
    text: str
    name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The entry as plain data."""
        ts = self.ts.isoformat() if hasattr(self.ts, "isoformat") else self.ts
        return {"ts": ts, "kind": self.kind, "name": self.name, "text": self.text, **self.meta}

    def render(self) -> str:
        """`[HH:MM:SS] who: text`, continuation lines indented."""
        clock = str(self.ts)[11:19] if self.ts is not None else "--:--:--"
        who = {
            "tool_call": f"assistant → {self.name}",
            "tool_result": f"tool {self.name} →",
            "call": "  ·",
        }.get(self.kind, self.kind)
        head = f"[{clock}] {who}"
        text = self.text
        if self.kind == "system" and len(text) > SYSTEM_SHOWN:
            text = text[:SYSTEM_SHOWN] + f"… ({len(text) - SYSTEM_SHOWN:,} more chars; --json shows all)"
        lines = text.splitlines() or [""]
        wrapped = [part for line in lines for part in (textwrap.wrap(line, WIDTH) or [""])]
        indent = " " * 11
        return "\n".join([f"{head} {wrapped[0]}".rstrip(), *(indent + part for part in wrapped[1:])])


class TurnWalker:
    """Remembers what earlier turns showed, so each turn adds only what is new."""

    def __init__(self, prompts: dict[str, str]) -> None:
        self.prompts = prompts
        self.shown = 0  # messages of the conversation already shown (full capture)
        self.answered = False  # the previous turn's answer was shown from its response record
        self.last_user: str | None = None
        self.tool_names: dict[str, str] = {}
        self.modes: set[str] = set()

    def capture(self) -> str:
        """`full`, `summary`, `mixed`, or `none` when no request was seen."""
        if not self.modes:
            return "none"
        return self.modes.pop() if len(self.modes) == 1 else "mixed"

    def request(self, record: Record, messages: list[Any] | None) -> list[Entry]:
        """The new part of the conversation this request carried."""
        if messages is None:
            self.modes.add("summary")
            return self._summary(record)
        self.modes.add("full")
        return self._full(record, messages)

    def _summary(self, record: Record) -> list[Entry]:
        ts, entries = record["ts"], []
        first, last = record["user_question"], record["user_message_this_turn"]
        if self.last_user is None and first and first != last:
            entries += [Entry(ts, "user", first), Entry(ts, "note", "(earlier messages were not kept)")]
        if last and last != self.last_user:
            entries.append(Entry(ts, "user", last))
        self.last_user = last or self.last_user
        for result in record["tool_results_this_turn"] or []:
            entries.append(Entry(ts, "tool_result", result["content"] or "", result["name"] or "?"))
        return entries

    def _full(self, record: Record, messages: list[Any]) -> list[Entry]:
        ts, entries = record["ts"], []
        start = self.shown
        if start and len(messages) <= start:
            entries.append(
                Entry(ts, "note", "(the conversation starts over: a new thread, or edited history)")
            )
            start = 0
        elif start and self.answered and _role(messages[start]) == "assistant":
            start += 1  # the previous answer, already shown from its response record
        self._remember_tool_names(messages)
        for message in messages[start:]:
            entries += self._message(ts, message)
        self.shown = len(messages)
        self.answered = False
        return entries

    def _remember_tool_names(self, messages: list[Any]) -> None:
        """Tool results name only their call's id; the assistant message that made the call names the tool."""
        for message in messages:
            for call in (message.get("tool_calls") or []) if isinstance(message, dict) else []:
                if isinstance(call, dict):
                    self.tool_names[str(call.get("id"))] = str((call.get("function") or {}).get("name"))

    def _message(self, ts: Any, message: Any) -> list[Entry]:
        if not isinstance(message, dict):
            return [Entry(ts, "note", f"(unreadable message: {message!r:.80})")]
        role = _role(message)
        if "content_sha256" in message:
            digest = str(message["content_sha256"])
            text = self.prompts.get(
                digest, f"(system prompt {digest[:12]}…, its text was not among the records read)"
            )
            return [Entry(ts, "system", text)]
        text = _text(message.get("content"))
        if role == "tool":
            name = self.tool_names.get(str(message.get("tool_call_id")), message.get("name") or "?")
            return [Entry(ts, "tool_result", text, str(name))]
        entries = [Entry(ts, role, text)] if text or role != "assistant" else []
        for call in message.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            function = call.get("function") or {}
            entries.append(
                Entry(ts, "tool_call", str(function.get("arguments") or ""), str(function.get("name")))
            )
        return entries

    def response(self, record: Record) -> list[Entry]:
        """The answer: reasoning, content, tool calls, or the error; then a line of call facts."""
        ts, entries = record["ts"], []
        if record["reasoning_content"]:
            entries.append(Entry(ts, "reasoning", record["reasoning_content"]))
        content = record["content"] or record["content_preview"]
        if content:
            entries.append(Entry(ts, "assistant", content))
        for call in record["tool_calls"] or []:
            entries.append(Entry(ts, "tool_call", call["arguments"] or "", call["name"] or "?"))
        if record["error"] or (record["status"] or 0) >= 400:
            gone = " (the client went away)" if record["client_disconnected"] else ""
            entries.append(Entry(ts, "error", f"{record['status']}: {record['error'] or ''}{gone}"))
        entries.append(
            Entry(ts, "call", _facts(record), meta={"model": record["model"], "status": record["status"]})
        )
        self.answered = True
        return entries


def _facts(record: Record) -> str:
    parts = [str(record["model"]), f"status {record['status']}"]
    if record["latency_ms"] is not None:
        parts.append(f"{record['latency_ms']:,.0f} ms")
    if record["total_tokens"] is not None:
        parts.append(f"{record['total_tokens']:,} tokens")
    return ", ".join(parts)


def _role(message: Any) -> str:
    return str(message.get("role")) if isinstance(message, dict) else "?"


TEXT_PARTS = ("text", "input_text", "output_text")  # chat's and Messages' parts, and the Responses API's


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") in TEXT_PARTS
        )
    return ""
