"""Every DuckDB query in LOGGING.md, run against records the real gateway wrote (spool folder and bucket)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import duckdb_ext
import pytest
from gateway_process import GatewayProcess, UpstreamThread, fake_config
from moto_s3 import S3
from test_logs_s3 import chat

DOC = Path(__file__).resolve().parents[1] / "LOGGING.md"
TOOL_CALL = {"name": "add", "arguments": '{"a":2,"b":3}'}
SYSTEM = {"role": "system", "content": "You answer with tools."}
QUESTION = {"role": "user", "content": "What is 2+3?"}
ASKED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "c1", "type": "function", "function": TOOL_CALL}],
}


def sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, S3, dict[str, int]]]:
    """A small, known traffic mix through the real gateway, logged in full capture to spool and bucket."""
    tmp = tmp_path_factory.mktemp("logging-md")
    upstream, s3 = UpstreamThread(), S3().start()
    config = fake_config(upstream.url, logging={"capture": "full", "flush_interval_s": 0.5})
    gw = GatewayProcess(tmp, config, {"LOG_SPOOL_DIR": str(tmp / "sent"), **s3.env()}).start()
    statuses = {}
    for kwargs in (
        {
            "user": "session-1",
            "messages": [SYSTEM, QUESTION],
            "fake": {"content": "", "tool_calls": [TOOL_CALL]},
        },
        {
            "stream": True,
            "user": "session-1",
            "fake": {"content": "It is 5."},
            "messages": [SYSTEM, QUESTION, ASKED, {"role": "tool", "tool_call_id": "c1", "content": "5"}],
        },
        {"fake": {"status": 429, "headers": {"Retry-After": "0"}}},
        {"key": "wrong-key"},
    ):
        rid, status, _ = chat(gw.url, **kwargs)
        statuses[rid] = status
    assert gw.stop() == 0
    local = tmp / "local"
    for key, body in s3.objects().items():  # the bucket's layout, mirrored as a local spool folder
        (local / "logs" / key).parent.mkdir(parents=True, exist_ok=True)
        (local / "logs" / key).write_bytes(body)
    yield local, s3, statuses
    s3.stop()
    upstream.close()


def run_local_blocks(folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[Any, ...]]]:
    monkeypatch.chdir(folder)  # the recipes use the relative path logs/, as run beside the spool
    con = duckdb.connect()
    results = []
    for block in sql_blocks():
        if "s3://" in block:
            continue
        rows: list[tuple[Any, ...]] = []
        for statement in filter(str.strip, block.split(";")):
            rows = con.execute(statement).fetchall()
        results.append(rows)
    return results


def test_every_local_recipe_answers_from_real_records(written, monkeypatch) -> None:
    folder, _, statuses = written
    first_look, view, joined, per_day, unanswered, session, tools, prompts = run_local_blocks(
        folder, monkeypatch
    )
    assert dict(first_look) == {"request": 4, "response": 4, "system_prompt": 1}
    assert view == []
    assert len(joined) == 4 and sorted(row[4] for row in joined) == sorted(statuses.values())
    assert sum(row[2] for row in per_day) == 4 and sum(row[3] for row in per_day) == 2
    assert unanswered == []
    assert len(session) == 2
    first_turn, second_turn = session
    assert first_turn[1] == "What is 2+3?" and first_turn[4] == [TOOL_CALL]
    assert second_turn[2] == [{"tool_call_id": "c1", "name": "add", "content": "5"}]
    assert second_turn[3] == "It is 5." and second_turn[5] == "stop"
    assert tools == [("add", 1)]
    assert {row[1] for row in prompts} == {"You answer with tools."} and len(prompts) == 2


def test_bucket_recipe_reads_s3_through_httpfs(written) -> None:
    _, s3, _ = written
    [block] = [b for b in sql_blocks() if "s3://" in b]
    block = (
        block.replace("YOUR_KEY_ID", "testing")
        .replace("YOUR_SECRET", "testing")
        .replace("s3.example.org", s3.url.removeprefix("http://"))
        .replace("USE_SSL true", "USE_SSL false")
        .replace("my-namespace-logs", s3.bucket)
    )
    extensions = Path(next(iter(duckdb_ext.__path__))) / "extensions"
    con = duckdb.connect(
        config={"extension_directory": str(extensions), "autoinstall_known_extensions": False}
    )
    rows: list[tuple[Any, ...]] = []
    for statement in filter(str.strip, block.split(";")):
        rows = con.execute(statement).fetchall()
    assert {row[1]: row[2] for row in rows} == {"request": 4, "response": 4, "system_prompt": 1}
