"""One session as a readable transcript: user, assistant, tool calls and their results, in order.

`full` capture keeps each request's whole `messages`, so every turn's new messages can be shown (system
prompts resolved from their `system_prompt` records); `summary` capture keeps only the first and last user
message of a turn, capped tool results and the answer, and the transcript says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson

from gateway.analyze.batches import ReadStats
from gateway.analyze.store import RecordTable
from gateway.analyze.transcript_turns import Entry, TurnWalker

FIELDS = {
    "timestamp": "VARCHAR",
    "type": "VARCHAR",
    "request_id": "VARCHAR",
    "session_id": "VARCHAR",
    "provider": "VARCHAR",
    "model": "VARCHAR",
    "user_question": "VARCHAR",
    "user_message_this_turn": "VARCHAR",
    "tool_results_this_turn": "STRUCT(tool_call_id VARCHAR, name VARCHAR, content VARCHAR)[]",
    "messages": "JSON",
    "sha256": "VARCHAR",
    "content": "VARCHAR",
    "content_preview": "VARCHAR",
    "tool_calls": "STRUCT(name VARCHAR, arguments VARCHAR)[]",
    "reasoning_content": "VARCHAR",
    "status": "BIGINT",
    "latency_ms": "DOUBLE",
    "tokens": "STRUCT(total_tokens BIGINT)",
    "error": "VARCHAR",
    "client_disconnected": "BOOLEAN",
}
PROJECTION = """
    try_cast("timestamp" AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS ts, type, request_id, model, provider,
    user_question, user_message_this_turn, tool_results_this_turn, CAST(messages AS VARCHAR) AS messages,
    sha256, content, content_preview, tool_calls, reasoning_content, status, latency_ms,
    tokens.total_tokens AS total_tokens, error, client_disconnected
"""
CUT_MARK = re.compile(r"… \[\d+ more chars\]$")
SUMMARY_NOTE = (
    "recorded in summary capture: only the first and last user message of each turn, tool results cut "
    "to a preview, and no system prompt or earlier history; `logging.capture: full` keeps whole conversations"
)


def session_table(con: duckdb.DuckDBPyConnection, session_id: str) -> RecordTable:
    """A table that keeps only this session's records, and the system prompts they may point at."""
    return RecordTable(
        con,
        "session_records",
        FIELDS,
        PROJECTION,
        where="session_id = $session OR type = 'system_prompt'",
        params={"session": session_id},
    )


@dataclass
class Transcript:
    """A session, ready to print."""

    session_id: str
    entries: list[Entry] = field(default_factory=list)
    capture: str = "none"
    turns: int = 0
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The transcript as plain data."""
        return {
            "session_id": self.session_id,
            "capture": self.capture,
            "turns": self.turns,
            "notes": self.notes,
            "entries": [e.as_json() for e in self.entries],
        }


def load(con: duckdb.DuckDBPyConnection, session_id: str) -> Transcript:
    """Rebuild the session from its request and response records."""
    rows = con.execute("SELECT * FROM session_records ORDER BY ts, type").fetchall()
    columns = [d[0] for d in con.description or []]
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    prompts = {r["sha256"]: r["content"] for r in records if r["type"] == "system_prompt" and r["sha256"]}
    requests = [r for r in records if r["type"] == "request"]
    responses = {r["request_id"]: r for r in records if r["type"] == "response"}
    transcript = Transcript(session_id, turns=len(requests))
    walker = TurnWalker(prompts)
    for request in requests:
        messages = orjson.loads(request["messages"]) if request["messages"] else None
        transcript.entries += walker.request(request, messages)
        if (response := responses.pop(request["request_id"], None)) is not None:
            transcript.entries += walker.response(response)
        else:
            transcript.entries.append(
                Entry(request["ts"], "error", "no response was recorded for this request")
            )
    for orphan in responses.values():
        transcript.entries += walker.response(orphan)
    transcript.capture = walker.capture()
    if transcript.capture in ("summary", "mixed"):
        transcript.notes.append(SUMMARY_NOTE)
    if any(CUT_MARK.search(e.text) for e in transcript.entries):
        transcript.notes.append(
            "texts ending in '… [N more chars]' were cut by the gateway when it logged them"
        )
    return transcript


def render(transcript: Transcript, stats: ReadStats) -> str:
    """The transcript as text."""
    if not transcript.entries:
        return (
            f"No records for session {transcript.session_id} in {stats.objects:,} objects "
            f"({stats.records:,} matching records).\n"
        )
    first, last = transcript.entries[0].ts, transcript.entries[-1].ts
    models = sorted({str(e.meta["model"]) for e in transcript.entries if e.meta.get("model")})
    lines = [
        f"Session {transcript.session_id}: {transcript.turns} turns, {_time(first)} to {_time(last)}, "
        f"model {', '.join(models) or '(none)'}, capture {transcript.capture}"
    ]
    lines += [f"note: {note}" for note in transcript.notes]
    lines.append("")
    for entry in transcript.entries:
        lines.append(entry.render())
    return "\n".join(lines) + "\n"


def _time(ts: object) -> str:
    return str(ts)[:19].replace("T", " ") if ts is not None else "?"
