"""Logging that cannot fail a call: real disks that fill up or vanish, a background task that meets its own
errors, and client bodies of any shape, each proven to leave both records of every call.

Faults are real where the OS can produce them on demand (a 64 KiB tmpfs that fills up, folders and chunk
files removed under a running gateway); only an I/O error (EIO), which no disk gives on request, is injected
through the spool's one write seam.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from conftest import PROVIDER_KEY, PROXY_KEY, gateway_config, serving, until
from fake_upstream import FakeUpstream
from gateway_process import PROXY_KEY as PROCESS_KEY
from gateway_process import GatewayProcess, UpstreamThread, fake_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto_s3 import S3
from test_logs_s3 import chat
from test_logs_units import TOOLS_BODY, make_call

from gateway.app import create_app
from gateway.auth import KeyRing
from gateway.calls import Call
from gateway.config import LoggingSettings, parse_config
from gateway.logs import records
from gateway.logs.lines import TOO_DEEP, dumps
from gateway.logs.recorder import LogRecorder
from gateway.logs.records import RecordBuilder
from gateway.logs.spool import RETRY_S, Spool
from gateway.logs.uploader import S3Target, Uploader
from gateway.metrics import Metrics
from gateway.scrub import Scrubber
from providers.base import Endpoint

DOC = Path(__file__).resolve().parents[1] / "LOGGING.md"


def new_recorder(root: Path, capture: str = "summary", **spool: Any) -> LogRecorder:
    """A recorder writing to stdout and a spool at `root` (no bucket)."""
    options: dict[str, Any] = {
        "max_age_s": 300.0,
        "chunk_max_bytes": 1 << 20,
        "max_bytes": 1 << 30,
        "host": "h",
    }
    options.update(spool)
    builder = RecordBuilder(LoggingSettings(capture=capture))
    return LogRecorder(builder, Spool(root, **options), Scrubber([]), Metrics())


def a_call(body: dict[str, Any] = TOOLS_BODY, **kw: Any) -> Call:
    """A finished call with its own request id."""
    return make_call(body, request_id=uuid.uuid4().hex, status=200, **kw)


def record_both(recorder: LogRecorder, call: Call) -> str:
    recorder.request(call)
    recorder.response(call)
    recorder.flush()  # in a loop, records wait for its next turn; these tests look at once
    return call.request_id


def spooled(root: Path) -> list[dict[str, Any]]:
    """Every record in the spool, open chunks included; a half-written line would fail to parse here."""
    return [
        orjson.loads(line)
        for path in sorted(root.glob("*/*.jsonl*"))
        for line in path.read_bytes().splitlines()
    ]


def printed(out: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.splitlines() if line.startswith(b"{")]


def pairs(found: list[dict[str, Any]]) -> dict[str, set[str]]:
    """request id -> the record types found for it."""
    kinds: dict[str, set[str]] = {}
    for record in found:
        kinds.setdefault(record["request_id"], set()).add(record["type"])
    return kinds


def metric(recorder: LogRecorder, name: str) -> float:
    return recorder.metrics.registry.get_sample_value(name) or 0.0


# A. Logging can never fail a call ----------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs: a disk that fills up. Needs the right to mount (root in a container)."""
    where = tmp_path / "tiny"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True
    )
    # The test command runs as root in a container, where this works: failing loudly beats a silent skip.
    assert mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace')}"
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` up, then free `leave` bytes again."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - leave)
    return filler


def test_a_full_disk_sends_records_to_stdout_and_the_spool_is_used_again(tiny_disk, capfdbinary) -> None:
    recorder = new_recorder(tiny_disk / "spool")
    filler = fill(tiny_disk, leave=4096)
    before = [record_both(recorder, a_call()) for _ in range(8)]  # about 12 KB: more than the disk has
    health = recorder.health()
    assert health["spool_error"] == "ENOSPC: No space left on device" and health["degraded"] is True
    assert health["records_not_spooled"] > 0 and metric(recorder, "gateway_log_spool_errors_total") >= 1
    filler.unlink()
    time.sleep(RETRY_S + 0.1)
    after = [record_both(recorder, a_call()) for _ in range(3)]
    health = recorder.health()
    assert health["spool_error"] is None and health["degraded"] is False
    recorder.spool.close_current()
    in_spool = pairs(spooled(tiny_disk / "spool"))  # every line whole: a cut write was cut back
    assert all(in_spool[rid] == {"request", "response"} for rid in after)
    in_stdout = pairs(printed(capfdbinary.readouterr().out))
    assert all(in_stdout[rid] == {"request", "response"} for rid in before + after)


def test_an_io_error_is_reported_and_the_spool_tried_again_a_second_later(tmp_path, capfdbinary) -> None:
    recorder = new_recorder(tmp_path)
    first = record_both(recorder, a_call())

    def failing(fd: int, data: memoryview) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    recorder.spool.write_fd = failing
    lost_to_disk = record_both(recorder, a_call())  # must not raise
    assert recorder.health()["spool_error"] == "EIO: Input/output error" and recorder.health()["degraded"]
    recorder.spool.write_fd = os.write
    resting = record_both(recorder, a_call())  # within the second: not tried, stdout only
    assert metric(recorder, "gateway_log_spool_errors_total") == 1
    time.sleep(RETRY_S + 0.1)
    back = record_both(recorder, a_call())
    assert recorder.health()["spool_error"] is None and recorder.health()["spool_errors"] == 1
    assert set(pairs(spooled(tmp_path))) == {first, back}
    assert set(pairs(printed(capfdbinary.readouterr().out))) == {first, lost_to_disk, resting, back}


def test_a_write_cut_short_leaves_no_half_line(tmp_path) -> None:
    recorder = new_recorder(tmp_path)
    kept = record_both(recorder, a_call())
    halves: list[int] = []

    def half_then_full(fd: int, data: memoryview) -> int:
        if halves:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        halves.append(os.write(fd, data[: len(data) // 2]))
        return halves[-1]

    recorder.spool.write_fd = half_then_full
    recorder.request(a_call())
    assert halves and recorder.spool.error is not None
    assert set(pairs(spooled(tmp_path))) == {kept}  # parses: the half line was cut off again
    recorder.spool.write_fd = os.write
    time.sleep(RETRY_S + 0.1)
    later = record_both(recorder, a_call())  # written where the cut file ends: no gap of NULs before it
    [chunk] = tmp_path.glob("*/*.jsonl.open")
    assert b"\0" not in chunk.read_bytes() and set(pairs(spooled(tmp_path))) == {kept, later}


def test_removed_chunk_file_is_re_written_from_the_open_descriptor(tmp_path) -> None:
    recorder = new_recorder(tmp_path)
    written = [record_both(recorder, a_call()) for _ in range(3)]
    [chunk] = tmp_path.glob("*/*.jsonl.open")
    chunk.unlink()  # a cleanup job: the records now live only behind the recorder's descriptor
    recorder.spool.rotate_if_due(time.time())  # the background tick
    assert set(pairs(spooled(tmp_path))) == set(written)
    later = record_both(recorder, a_call())
    shutil.rmtree(tmp_path / chunk.parent.name)
    assert recorder.spool.close_current() is not None  # shutdown: re-written, then closed
    found = spooled(tmp_path)
    assert pairs(found) == {rid: {"request", "response"} for rid in [*written, later]} and len(found) == 8


def test_spool_folder_removed_mid_run_loses_no_record(tmp_path, capfdbinary) -> None:
    root = tmp_path / "spool"
    recorder = new_recorder(root, chunk_max_bytes=2000)  # some chunks are closed before the folder goes
    before = [record_both(recorder, a_call()) for _ in range(4)]
    shutil.rmtree(root)
    after = [record_both(recorder, a_call()) for _ in range(4)]
    assert recorder.health()["degraded"] is False
    recorder.spool.close_current()
    in_spool, in_stdout = pairs(spooled(root)), pairs(printed(capfdbinary.readouterr().out))
    assert all(in_spool[rid] == {"request", "response"} for rid in after)
    for rid in before + after:  # closed chunks went with the folder; stdout still has them
        assert in_spool.get(rid, set()) | in_stdout.get(rid, set()) == {"request", "response"}


def test_gateway_process_keeps_every_record_when_its_spool_folder_is_removed(tmp_path) -> None:
    upstream = UpstreamThread()
    spool = tmp_path / "spool"
    config = fake_config(upstream.url, logging={"flush_interval_s": 3600, "capture": "summary"})
    try:
        with GatewayProcess(tmp_path, config, {"LOG_SPOOL_DIR": str(spool)}) as gw:
            sent = [chat(gw.url)[0] for _ in range(3)]
            shutil.rmtree(spool)
            sent += [chat(gw.url, stream=True)[0] for _ in range(3)]
            auth = {"Authorization": f"Bearer {PROCESS_KEY}"}
            logging = httpx.get(gw.url + "/health", headers=auth, timeout=10).json()["logging"]
            assert logging["degraded"] is False and logging["spool_error"] is None
            assert gw.stop() == 0
        found = spooled(spool)
        assert len(found) == 12 and pairs(found) == {rid: {"request", "response"} for rid in sent}
        assert pairs(printed(gw.stdout_path.read_bytes())) == pairs(found)
    finally:
        upstream.close()


# B. The background task survives its own errors ---------------------------------------------------------


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    server = S3().start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


async def uploading_recorder(root: Path, s3: S3, **spool: Any) -> LogRecorder:
    target = S3Target.from_env(s3.env())
    assert target is not None
    recorder = new_recorder(root, **spool)
    recorder.uploader = Uploader(target, recorder.spool)
    assert await recorder.uploader.start()
    return recorder


async def test_background_task_outlives_a_failing_step_and_a_failing_upload(tmp_path, s3) -> None:
    recorder = await uploading_recorder(tmp_path, s3, max_age_s=0.2)
    spool, uploader = recorder.spool, recorder.uploader
    assert uploader is not None
    measure, upload = spool.refresh, uploader.upload_pending
    failed: list[str] = []

    def refresh_once() -> None:
        if "refresh" not in failed:
            failed.append("refresh")
            raise RuntimeError("a bug in a step")
        measure()

    async def upload_once() -> int:
        if "upload" not in failed:
            failed.append("upload")
            raise ValueError("not a network error")
        return await upload()

    spool.refresh, uploader.upload_pending = refresh_once, upload_once  # type: ignore[method-assign]
    task = asyncio.create_task(recorder.run(0.05))
    sent = [record_both(recorder, a_call()) for _ in range(3)]
    await until(lambda: recorder.task_error is not None, what="the failing step to be seen")
    assert recorder.health()["degraded"] is True and "RuntimeError at " in recorder.task_error
    await until(lambda: recorder.uploaded_records == 6, within=15, what="the upload after the errors")
    assert failed == ["refresh", "upload"] and not task.done()
    assert recorder.task_error is None and recorder.task_errors == 1
    assert metric(recorder, "gateway_log_task_errors_total") == 1
    assert metric(recorder, "gateway_log_upload_failures_total") == 1
    task.cancel()
    await recorder.close(5)
    assert pairs(s3.records()) == {rid: {"request", "response"} for rid in sent}


async def test_close_uploads_even_when_the_last_rotation_fails(tmp_path, s3) -> None:
    recorder = await uploading_recorder(tmp_path, s3)
    closed = record_both(recorder, a_call())
    recorder.spool.close_current()
    record_both(recorder, a_call())  # in the open chunk, which will fail to close

    def broken() -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    recorder.spool.close_current = broken  # type: ignore[assignment, method-assign]
    await recorder.close(5)
    assert recorder.task_error == "last rotation: EROFS: Read-only file system"
    assert pairs(s3.records()) == {closed: {"request", "response"}}


async def test_recorder_context_closes_the_spool_when_the_task_died(tmp_path, monkeypatch, caplog) -> None:
    async def dies(self: LogRecorder, tick_s: float) -> None:
        raise RuntimeError("the task's own bug")

    monkeypatch.setattr(LogRecorder, "run", dies)
    fake = FakeUpstream()
    spool = tmp_path / "spool"
    async with serving(fake.app) as fake_url:
        config = parse_config(gateway_config(fake_url, logging={"flush_interval_s": 3600}))
        env = {"FAKE_KEY": PROVIDER_KEY, "LOG_SPOOL_DIR": str(spool)}
        app = create_app(config, keys=KeyRing.from_env({"PROXY_KEY": PROXY_KEY}), env=env)
        async with serving(app) as url, aiohttp.ClientSession() as http:
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": f"Bearer {PROXY_KEY}"}
            async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as response:
                assert response.status == 200
                rid = response.headers["X-Request-Id"]
            await asyncio.sleep(0.05)
    assert not list(spool.glob("*/*.jsonl.open"))  # close() ran: the chunk was closed for upload
    assert pairs(spooled(spool)) == {rid: {"request", "response"}}
    assert "the background log task had stopped: RuntimeError at " in caplog.text


# C. Every call keeps both full records whatever bytes the client chose ----------------------------------


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"content": [value]}
    return value


def test_undecodable_header_bytes_and_deep_nesting_cost_only_their_fields(tmp_path) -> None:
    recorder = new_recorder(tmp_path, capture="full")
    deep = {"role": "user", "content": nested(150)}  # 300 levels: past what orjson writes
    body = {**TOOLS_BODY, "messages": [*TOOLS_BODY["messages"], deep]}
    call = make_call(body, status=200, session_id="\udcff", client="geo\udcff", origin="\udcffhttps://a")
    record_both(recorder, call)
    recorder.spool.close_current()
    request, response = [r for r in spooled(tmp_path) if r["type"] != "system_prompt"]
    assert (request["session_id"], request["client"], request["origin"]) == (
        "\ufffd",
        "geo\ufffd",
        "\ufffdhttps://a",
    )
    # the last user message is that 300-level value: no text can be made of it
    assert set(request["record_errors"]) == {
        "session_id",
        "client",
        "origin",
        "messages",
        "user_message_this_turn",
    }
    assert request["user_question"] == "What is 2+3?" and request["message_count"] == 6
    assert request["messages"][:5] == [
        {"role": "system", "content_sha256": request["system_prompt_sha256"]},
        *TOOLS_BODY["messages"][1:],
    ]
    assert TOO_DEEP in orjson.dumps(request["messages"]).decode()
    assert response["status"] == 200 and set(response["record_errors"]) == {"session_id", "origin"}
    assert response["model"] == "kimi" and response["request_id"] == call.request_id


ODD_BODIES = [
    {"messages": "hello"},
    {"messages": [1, "two", None, [3], {"role": "user", "content": 5}]},
    {"messages": [{"role": "user", "content": {"nested": ["x", {"text": 1}]}}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": ["not", "text"]}, "plain", 7]}]},
    {"messages": [{"role": "assistant", "tool_calls": 7}, {"role": "tool", "tool_call_id": {"x": 1}}]},
    {"messages": [{"role": "assistant", "tool_calls": ["x", {"id": 1, "function": "f"}]}]},
    {"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": ["n"]}}]}]},
    {"messages": [{"role": ["user"], "content": "x"}, {"role": "system", "content": 3}]},
    {"tools": "all of them", "user": {"id": 7}, "enable_thinking": "yes", "model": 12},
    {"prompt": [1, 2, 3]},
    {"prompt": {"text": "x" * 10}},
    {"prompt": nested(300)},
    {"messages": [{"role": "user", "content": nested(300)}]},
    {"messages": [{"role": "tool", "content": 2**70, "name": "\udcff" * 300}]},
]


@pytest.mark.parametrize("capture", ["summary", "full"])
@pytest.mark.parametrize("endpoint", [Endpoint.CHAT, Endpoint.COMPLETIONS])
@pytest.mark.parametrize("body", ODD_BODIES, ids=range(len(ODD_BODIES)))
def test_any_body_shape_gives_both_records(tmp_path, body, endpoint, capture) -> None:
    recorder = new_recorder(tmp_path, capture=capture)
    call = a_call(body=body, endpoint=endpoint)
    record_both(recorder, call)
    recorder.spool.close_current()
    found = [r for r in spooled(tmp_path) if r["type"] != "system_prompt"]
    assert [r["type"] for r in found] == ["request", "response"]
    assert all(r["request_id"] == call.request_id for r in found) and found[1]["status"] == 200
    assert recorder.failed == 0  # no fallback record: every field that could be kept was kept


def test_a_well_formed_call_has_no_record_errors() -> None:
    builder = RecordBuilder(LoggingSettings(capture="full"))
    call = a_call()
    assert not any(
        "record_errors" in r for r in [*builder.request(call), builder.response(call, time.time())]
    )


# joined by hand: `st.text` leaves out lone surrogates, the very strings a header byte like \xff becomes
TEXT = st.lists(st.characters() | st.characters(categories=["Cs"]), max_size=12).map("".join)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "tool", "system"]) | JSON,
        "content": JSON,
        "tool_calls": JSON,
        "tool_call_id": JSON,
        "name": JSON,
    },
)
BODY = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.lists(MESSAGE | JSON, max_size=5) | JSON,
        "tools": JSON,
        "user": JSON,
        "prompt": JSON,
        "enable_thinking": JSON,
        "model": JSON,
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=BODY,
    endpoint=st.sampled_from([Endpoint.CHAT, Endpoint.COMPLETIONS]),
    capture=st.sampled_from(["summary", "full"]),
    status=st.sampled_from([200, 401, 400, 502]),
    header=st.none() | TEXT,
    answer=JSON,
    headers=st.none() | st.dictionaries(TEXT, TEXT, max_size=3),
)
def test_property_any_json_body_keeps_both_records(body, endpoint, capture, status, header, answer, headers):
    call = Call(
        uuid.uuid4().hex,
        endpoint,
        body=body,
        status=status,
        session_id=header,
        client=header,
        origin=header,
        provider=None if status == 401 else "nrp",
        error=header,
        upstream_headers=headers,
    )
    call.model = call.requested_model = body.get("model") if isinstance(body.get("model"), str) else None
    try:
        call.answer.add_body(orjson.dumps(answer))
    except TypeError:  # past 64 bits or not UTF-8: an upstream could not have sent it as JSON either
        call.answer.add_body(b"{")
    builder = RecordBuilder(LoggingSettings(capture=capture))
    built = [*builder.request(call), builder.response(call, time.time())]  # never raises
    assert [r["type"] for r in built][-2:] == ["request", "response"]
    for record in built:
        written = orjson.loads(dumps(record))
        errors = set(written.get("record_errors", ()))
        assert errors <= set(record), "record_errors names only fields of the record"
        for name, value in record.items():
            if name == "record_errors":
                continue
            try:
                expected = orjson.loads(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))
            except TypeError:
                assert name in errors and name in written  # mended or replaced, never dropped
                continue
            assert written[name] == expected
    request, response = built[-2], built[-1]
    assert request["request_id"] == response["request_id"] == call.request_id
    assert response["status"] == status and "model" in request and "model" in response


# D, E. Caps on every string a client controls; refused calls are small -----------------------------------


def test_client_strings_are_capped_with_a_marker() -> None:
    huge = "x" * 100_000
    call = make_call(
        {**TOOLS_BODY, "model": huge},
        status=502,
        session_id=huge,
        client=huge,
        origin=huge,
        error=huge,
        upstream_headers={f"x-ratelimit-{i}{huge}": huge for i in range(30)},
    )
    call.model = "kimi"
    call.answer.add_body(
        orjson.dumps(
            {"choices": [{"message": {"tool_calls": [{"function": {"name": huge, "arguments": "{}"}}]}}]}
        )
    )
    builder = RecordBuilder(LoggingSettings())
    [request], response = builder.request(call), builder.response(call, time.time())

    def within(value: str, limit: int) -> bool:
        return value == huge[:limit] + f"… [{100_000 - limit} more chars]"

    assert all(within(request[f], 256) for f in ("session_id", "client", "model"))
    assert within(request["origin"], 512) and within(response["origin"], 512)
    assert within(response["error"], 2000) and within(response["requested_model"], 256)
    assert len(response["upstream_headers"]) == 20
    assert all(len(k) < 300 and within(v, 256) for k, v in response["upstream_headers"].items())
    assert len(response["tool_calls"][0]["name"]) <= 256


def test_tool_result_names_and_ids_are_capped() -> None:
    huge = "y" * 10_000
    body = {"messages": [{"role": "tool", "tool_call_id": huge, "name": huge, "content": "ok"}]}
    [request] = RecordBuilder(LoggingSettings()).request(make_call(body))
    [result] = request["tool_results_this_turn"]
    assert result["tool_call_id"].endswith("[9744 more chars]") and result["name"].endswith(
        "[9744 more chars]"
    )


def test_logging_md_caps_table_matches_the_code() -> None:
    section = DOC.read_text().split("### Caps", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (.+?) \| ([\d,]+) ", section, flags=re.M))
    limits = {name: int(value.replace(",", "")) for name, value in rows.items()}
    assert limits == {
        "`model`, `requested_model`, `session_id`, `client`": records.NAME_CHARS,
        "`origin`": records.ORIGIN_CHARS,
        "`error`": records.ERROR_CHARS,
        "`upstream_headers`: each name and value": records.HEADER_CHARS,
        "`upstream_headers`: headers kept": records.MAX_HEADERS,
        "tool names (`tool_calls`), `tool_results_this_turn` `name` and `tool_call_id`": records.NAME_CHARS,
        "`finish_reason`, `upstream_id`": records.NAME_CHARS,
        "a refused call's `model`, `session_id`, `client`, `origin` and user messages": records.REFUSED_CHARS,
    }


@pytest.mark.parametrize("capture", ["summary", "full"])
def test_a_call_refused_for_its_key_leaves_small_records(tmp_path, capture) -> None:
    huge = "z" * 1_000_000
    body = {
        "model": huge,
        "user": huge,
        "messages": [{"role": "system", "content": huge}, {"role": "user", "content": huge}],
        "tools": [{"type": "function", "function": {"name": huge}}] * 100,
    }
    call = Call(
        uuid.uuid4().hex,
        Endpoint.CHAT,
        body=body,
        model=huge,
        requested_model=huge,
        session_id=huge,
        client=huge,
        origin=huge,
        status=401,
        error="Incorrect API key provided.",
    )
    recorder = new_recorder(tmp_path, capture=capture)
    record_both(recorder, call)
    recorder.spool.close_current()
    [chunk] = recorder.spool.closed_chunks()
    lines = chunk.read_bytes().splitlines()
    assert len(lines) == 2 and all(len(line) < 1024 for line in lines) and len(chunk.read_bytes()) < 2048
    request, response = map(orjson.loads, lines)
    assert request["model"].startswith("z" * 64) and request["message_count"] == 2
    assert request["user_question"] == "z" * 64 + "… [999936 more chars]" and response["status"] == 401


# F. What the record tee could not keep --------------------------------------------------------------------


def test_response_record_says_when_the_answer_was_cut_or_unreadable() -> None:
    call = a_call()
    call.answer.keep = 5
    call.answer.add_chunk(orjson.dumps({"choices": [{"delta": {"content": "0123456789"}}]}))
    call.answer.add_chunk(b"not json")
    record = RecordBuilder(LoggingSettings()).response(call, time.time())
    assert record["truncated"] is True and record["unreadable_chunks"] == 1 and record["content"] == "01234"
    plain = RecordBuilder(LoggingSettings()).response(a_call(), time.time())
    assert plain["truncated"] is False and plain["unreadable_chunks"] == 0
