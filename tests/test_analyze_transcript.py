"""`--session ID`: one session as a transcript, from full and from summary capture."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from synthetic import SynthConfig, generate
from test_analyze_expected import read_folder

from gateway.analyze.cli import main


def transcript(root: Path, session: str, *args: str) -> str:
    out = io.StringIO()
    assert main([str(root), "--session", session, "--no-progress", *args], stdout=out) == 0
    return out.getvalue()


@pytest.fixture(scope="module", params=["full", "summary"])
def logged(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, list[Any]]:
    """A day of records in one capture mode, and its busiest session's records in time order."""
    root = tmp_path_factory.mktemp(request.param) / "logs"
    generate(root, SynthConfig(records=1500, start=date(2026, 10, 1), days=1, capture=request.param, seed=5))
    records = read_folder(root).records
    busiest = Counter(r["session_id"] for r in records if r.get("session_id")).most_common(1)[0][0]
    mine = sorted((r for r in records if r.get("session_id") == busiest), key=lambda r: r["timestamp"])
    return root, request.param, mine


def test_transcript_follows_the_records_in_order(logged: tuple[Path, str, list[Any]]) -> None:
    root, capture, records = logged
    session = records[0]["session_id"]
    data = json.loads(transcript(root, session, "--json"))
    entries = data["entries"]
    responses = [r for r in records if r["type"] == "response"]
    requests = [r for r in records if r["type"] == "request"]
    assert data["capture"] == capture and data["turns"] == len(requests)
    assert [e["status"] for e in entries if e["kind"] == "call"] == [r["status"] for r in responses]
    called = [c["name"] for r in responses for c in r["tool_calls"]]
    assert [e["name"] for e in entries if e["kind"] == "tool_call"] == called
    results = [t for r in requests for t in r["tool_results_this_turn"]]
    assert [(e["name"], e["text"]) for e in entries if e["kind"] == "tool_result"] == [
        (t["name"], t["content"]) for t in results
    ]
    answers = [r["content"] for r in responses if r["content"]]
    assert [e["text"] for e in entries if e["kind"] == "assistant"] == answers
    users = [e["text"] for e in entries if e["kind"] == "user"]
    assert users[0] == requests[0]["user_message_this_turn"]
    assert all(r["user_message_this_turn"] in users for r in requests)
    if capture == "full":
        prompt = next(
            r
            for r in read_folder(root).records
            if r["type"] == "system_prompt" and r["sha256"] == requests[0]["messages"][0]["content_sha256"]
        )
        assert entries[0]["kind"] == "system" and entries[0]["text"] == prompt["content"]
        assert data["notes"] == []
    else:
        assert any("summary capture" in note for note in data["notes"])


def test_text_transcript_reads_top_to_bottom(logged: tuple[Path, str, list[Any]]) -> None:
    root, capture, records = logged
    text = transcript(root, records[0]["session_id"])
    assert text.startswith(f"Session {records[0]['session_id']}: ")
    assert f"capture {capture}" in text.splitlines()[0]
    first_user = records[0]["user_message_this_turn"] if records[0]["type"] == "request" else None
    if first_user:
        assert f"] user {first_user.strip()[:40]}" in " ".join(text.split())
    assert "assistant" in text and "status 200" in text


def test_unknown_session_says_so(logged: tuple[Path, str, list[Any]]) -> None:
    root, _, _ = logged
    assert transcript(root, "no-such-session").startswith("No records for session no-such-session")
