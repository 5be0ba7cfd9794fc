"""The analyzer over records the real gateway wrote: to its spool folder, and to moto's S3 via its uploader.

A known mix of traffic (sessions with tool calls, streams, a provider-reported cost, a rate limit, an upstream
error, a rejected key, a client that goes away, and a call cut short by `kill -9`) goes through the real
`python -m gateway serve`; every section of the report is then checked against the records themselves.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_process import PROXY_KEY, GatewayProcess, UpstreamThread, fake_config
from moto_s3 import S3
from test_analyze_checks import check_report
from test_analyze_expected import read_folder

from gateway.analyze.cli import main

SYSTEM = {"role": "system", "content": "You look things up before answering."}
QUESTION = {"role": "user", "content": "What is the capital of Oregon?"}
LOOKUP = {"name": "lookup", "arguments": '{"q": "capital of Oregon"}'}
ASKED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "c1", "type": "function", "function": LOOKUP}],
}
FAILED_RESULT = {"role": "tool", "tool_call_id": "c1", "content": "Error: lookup service unavailable"}


def call(
    url: str,
    *,
    session: str | None = None,
    origin: str | None = None,
    stream: bool = False,
    key: str = PROXY_KEY,
    messages: list[Any] | None = None,
    **fake: Any,
) -> int:
    """One chat call through the gateway; returns the status the client saw."""
    body: dict[str, Any] = {
        "model": "fake-model",
        "messages": messages or [QUESTION],
        "stream": stream,
        "fake": fake,
    }
    if session:
        body["user"] = session
    headers = {"Authorization": f"Bearer {key}", "X-Client": "analyze-test/1.0"}
    if origin:
        headers["Origin"] = origin
    with httpx.Client(timeout=30) as client:
        response = client.post(url + "/v1/chat/completions", json=body, headers=headers)
        return response.status_code


def walk_away(url: str) -> None:
    """A streaming call whose client leaves after the first chunk."""
    body = {
        "model": "fake-model",
        "messages": [QUESTION],
        "stream": True,
        "user": "leaver",
        "fake": {"content": " ".join(["word"] * 40), "chunk_delay": 0.2},
    }
    headers = {"Authorization": f"Bearer {PROXY_KEY}", "Origin": "https://maps.example"}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        next(response.iter_bytes())


def traffic(url: str) -> None:
    """The known mix, one call at a time so that the order in the records is the order here."""
    assert call(url, session="agent-1", messages=[SYSTEM, QUESTION], content="", tool_calls=[LOOKUP]) == 200
    assert (
        call(
            url,
            session="agent-1",
            stream=True,
            messages=[SYSTEM, QUESTION, ASKED, FAILED_RESULT],
            content="Salem, as far as I know.",
            reasoning="The lookup failed.",
            cost=0.0012,
        )
        == 200
    )
    assert (
        call(
            url,
            session="chat-2",
            origin="https://maps.example",
            stream=True,
            content="Five.",
            messages=[{"role": "user", "content": "What is 2+3?"}],
            chunk_delay=0.05,
        )
        == 200
    )
    assert (
        call(
            url,
            session="chat-3",
            origin="https://maps.example",
            messages=[{"role": "user", "content": "  what is 2+3 "}],
        )
        == 200
    )
    assert (
        call(
            url,
            origin="https://maps.example",
            status=429,
            headers={"retry-after": "1", "x-ratelimit-remaining-requests": "0"},
        )
        == 429
    )
    assert call(url, status=500, error='{"error": {"message": "boom", "type": "server_error"}}') >= 500
    assert call(url, key="not-the-key") == 401
    walk_away(url)


def crash_mid_call(gw: GatewayProcess, spool: Path) -> None:
    """Start a slow call, wait until its request record is on disk, then `kill -9` the gateway."""
    worker = threading.Thread(target=lambda: _ignore(call, gw.url, session="crash-1", delay=30), daemon=True)
    worker.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(b'"crash-1"' in p.read_bytes() for p in spool.rglob("*.jsonl*")):
            break
        time.sleep(0.05)
    time.sleep(0.3)  # let the client that walked away be recorded too
    gw.kill()


def _ignore(fn: Any, *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the gateway is killed under this call on purpose
        fn(*args, **kwargs)


@pytest.fixture(scope="module", params=["spool", "s3"])
def logged(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """(source to analyze, a local copy in the spool layout, environment for the analyzer)."""
    tmp = tmp_path_factory.mktemp(f"gateway-{request.param}")
    spool = tmp / "spool"
    upstream = UpstreamThread()
    s3 = S3().start() if request.param == "s3" else None
    env = {"LOG_SPOOL_DIR": str(spool), **(s3.env() if s3 else {})}
    config = fake_config(upstream.url, logging={"capture": "full", "flush_interval_s": 0.5})
    first = GatewayProcess(tmp, config, env).start()
    traffic(first.url)
    crash_mid_call(first, spool)
    second = GatewayProcess(tmp, config, env).start()  # recovers the dead run's chunks (and uploads them)
    assert second.stop() == 0
    if s3 is None:
        yield str(spool), spool, {}
    else:
        local = tmp / "mirror"
        for key, body in s3.objects().items():
            (local / key).parent.mkdir(parents=True, exist_ok=True)
            (local / key).write_bytes(body)
        yield f"s3://{s3.bucket}", local, {k: v for k, v in s3.env().items() if k != "LOG_BUCKET"}
        s3.stop()
    upstream.close()


def analyze(source: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    assert main([source, "--no-progress", *args], stdout=out) == 0
    return out.getvalue()


def test_every_section_matches_the_records_the_gateway_wrote(logged, monkeypatch) -> None:
    source, local, env = logged
    report = json.loads(analyze(source, env, monkeypatch, "--json", "--limit", "1000"))
    raw = read_folder(local)
    assert report["read"]["objects"] == raw.files > 0
    check_report(report, raw)
    sections = report["sections"]
    assert report["calls"] == 9
    errors = sections["errors"]["facts"]
    assert (errors["rate_limited"], errors["rejected"], errors["unanswered"]) == (1, 1, 1)
    assert errors["client_disconnects"] == 1 and errors["server_errors"] >= 1
    tools = sections["tools"]
    assert {r["tool"]: (r["calls"], r["results"], r["failed"]) for r in tools["tables"]["per_tool"]} == {
        "lookup": (1, 1, 1)
    }
    assert sections["cost"]["facts"]["cost_reported"] == pytest.approx(0.0012)
    asked = {
        r["question"].strip().lower().rstrip("?"): r["asked"] for r in sections["questions"]["tables"]["top"]
    }
    # agent-1 asks once over its two turns; four calls without a session, and two sessions, ask the rest
    assert asked == {"what is the capital of oregon": 6, "what is 2+3": 2}
    assert sections["latency"]["facts"]["ttft_p50"] is not None
    sessions = {r["session_id"]: r for r in sections["sessions"]["tables"]["longest"]}
    assert sessions["agent-1"]["turns"] == 2 and sessions["crash-1"]["final_status"] == "no response"


def test_transcript_of_a_real_session(logged, monkeypatch) -> None:
    source, _, env = logged
    data = json.loads(analyze(source, env, monkeypatch, "--session", "agent-1", "--json"))
    kinds = [(e["kind"], e.get("name")) for e in data["entries"]]
    assert kinds == [
        ("system", None),
        ("user", None),
        ("tool_call", "lookup"),
        ("call", None),
        ("tool_result", "lookup"),
        ("reasoning", None),
        ("assistant", None),
        ("call", None),
    ]
    texts = [e["text"] for e in data["entries"]]
    assert texts[0] == SYSTEM["content"] and texts[1] == QUESTION["content"]
    assert texts[4] == FAILED_RESULT["content"] and texts[6] == "Salem, as far as I know."
    assert data["capture"] == "full"


def test_date_filter_over_the_real_layout(logged, monkeypatch) -> None:
    source, _, env = logged
    report = json.loads(
        analyze(source, env, monkeypatch, "--json", "--since", "2000-01-01", "--until", "2000-01-02")
    )
    assert report["read"]["objects"] == 0 and report["empty"].startswith("No log files found")
    apps = json.loads(analyze(source, env, monkeypatch, "--json", "--origin", "https://maps.*"))
    assert apps["calls"] == 4  # two chats, the rate-limited call and the client that walked away
    assert [r["origin"] for r in apps["sections"]["models"]["tables"]["origins"]] == ["https://maps.example"]
