"""No record lost: the real gateway process, a real S3 API (moto's server mode) and the fault scenarios.

Every scenario counts request by request: each call's `X-Request-Id` must appear in exactly one request
record and one response record in the bucket (or, for a `kill -9`, at least every finished call's).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from gateway_process import PROVIDER_KEY, PROXY_KEY, GatewayProcess, UpstreamThread, fake_config
from moto_s3 import S3

AUTH = {"Authorization": f"Bearer {PROXY_KEY}"}


def gateway(tmp_path: Path, upstream: UpstreamThread, env: dict[str, str], **logging: Any) -> GatewayProcess:
    config = fake_config(
        upstream.url,
        logging={"flush_interval_s": 0.5, "capture": "full", **logging},
        server={"drain_timeout_s": 20},
    )
    spool = tmp_path / "spool"
    return GatewayProcess(tmp_path, config, {"LOG_SPOOL_DIR": str(spool), **env})


def chat(url: str, stream: bool = False, key: str = PROXY_KEY, **body: Any) -> tuple[str, int, str]:
    """One call; returns (request id, status, body text)."""
    payload = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": stream,
        **body,
    }
    headers = {"Authorization": f"Bearer {key}", "Origin": "https://app.example"}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", url + "/v1/chat/completions", json=payload, headers=headers) as response,
    ):
        text = "".join(response.iter_text())
        return response.headers["X-Request-Id"], response.status_code, text


def mixed_load(url: str) -> dict[str, int]:
    """Streaming, non-streaming, upstream errors and rejected calls; request id -> status the client saw."""
    calls = (
        [dict(stream=False)] * 6
        + [dict(stream=True)] * 6
        + [dict(fake={"status": 500})] * 2
        + [dict(key="wrong-key")] * 2
        + [dict(messages=[])] * 2
        + [
            dict(
                stream=True, fake={"tool_calls": [{"name": "add", "arguments": '{"a": 1}'}], "reasoning": "r"}
            )
        ]
        * 2
    )
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda kw: chat(url, **kw), calls))
    return {rid: status for rid, status, _ in results}


def assert_accounted(records: list[dict[str, Any]], sent: dict[str, int]) -> None:
    """Each call sent has exactly one request and one response record, with the status the client saw."""
    kinds = Counter((r["request_id"], r["type"]) for r in records if r["type"] in ("request", "response"))
    for rid in sent:
        assert kinds[(rid, "request")] == 1, rid
        assert kinds[(rid, "response")] == 1, rid
    statuses = {r["request_id"]: r["status"] for r in records if r["type"] == "response"}
    assert {rid: statuses[rid] for rid in sent} == sent


def wait_for(predicate: Any, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def health(url: str) -> dict[str, Any]:
    return httpx.get(url + "/health", headers=AUTH, timeout=10).json()["logging"]


def test_mixed_calls_all_recorded_in_the_bucket_and_no_secret_uploaded(tmp_path, upstream, s3) -> None:
    gw = gateway(tmp_path, upstream, s3.env()).start()
    sent = mixed_load(gw.url)
    assert Counter(sent.values()) == Counter({200: 14, 500: 2, 401: 2, 400: 2})
    assert gw.stop() == 0
    objects = s3.objects()
    assert_accounted(s3.records(), sent)
    for key, body in objects.items():
        assert key.count("/") == 1 and key.endswith(".jsonl"), key
        assert PROXY_KEY.encode() not in body and PROVIDER_KEY.encode() not in body
    refused = [r for r in s3.records() if r["type"] == "request" and sent[r["request_id"]] == 401]
    assert len(refused) == 2  # a refused call's record still says what it asked for, and from where
    assert all(r["model"] == "fake-model" and r["origin"] == "https://app.example" for r in refused)
    tool_records = [r for r in s3.records() if r["type"] == "response" and r["has_tool_calls"]]
    assert len(tool_records) == 2 and tool_records[0]["tool_calls"] == [
        {"name": "add", "arguments": '{"a": 1}'}
    ]
    assert not list((tmp_path / "spool").glob("*/*.jsonl*"))  # everything shipped, nothing left behind


def test_s3_down_then_back_keeps_chunks_on_disk_and_uploads_them(tmp_path, upstream) -> None:
    s3 = S3()  # not started: the endpoint refuses connections
    with gateway(tmp_path, upstream, s3.env()) as gw:
        sent = mixed_load(gw.url)
        wait_for(lambda: health(gw.url)["last_error"] is not None and health(gw.url)["chunks_pending"] > 0)
        assert all(status != 502 for status in sent.values())  # calls never fail because of S3
        s3.start()
        try:
            wait_for(lambda: health(gw.url)["chunks_pending"] == 0 and health(gw.url)["records_uploaded"] > 0)
            assert gw.stop() == 0
            assert_accounted(s3.records(), sent)
        finally:
            s3.stop()


def test_sigterm_mid_load_finishes_streams_and_uploads_the_last_chunk(tmp_path, upstream, s3) -> None:
    gw = gateway(tmp_path, upstream, s3.env()).start()
    slow = {"fake": {"chunk_delay": 0.15, "content": " ".join(f"w{i}" for i in range(12))}}
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(chat, gw.url, True, **slow) for _ in range(4)]
        wait_for(lambda: len(upstream.fake.requests) == 4, timeout=20)  # all four streams under way
        assert gw.stop() == 0
        results = [f.result() for f in futures]
    assert all(status == 200 and "[DONE]" in text and "w11" in text for _, status, text in results)
    records = s3.records()
    assert_accounted(records, {rid: 200 for rid, _, _ in results})
    assert all(r["content"].endswith("w11") for r in records if r["type"] == "response")


def test_kill_9_then_restart_uploads_the_leftover_spool(tmp_path, upstream, s3) -> None:
    gw = gateway(tmp_path, upstream, s3.env(), flush_interval_s=3600).start()  # nothing rotates by itself
    sent = {rid: status for rid, status, _ in (chat(gw.url) for _ in range(5))}
    gw.kill()
    assert s3.records() == [] and list((tmp_path / "spool").glob("*/*.jsonl.open"))
    restarted = gateway(tmp_path, upstream, s3.env()).start()
    wait_for(lambda: len(s3.records()) >= 10)
    assert restarted.stop() == 0
    assert_accounted(s3.records(), sent)


def test_client_disconnect_mid_stream_leaves_a_record(tmp_path, upstream, s3) -> None:
    gw = gateway(tmp_path, upstream, s3.env()).start()
    body = {
        "model": "fake-model",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "fake": {"chunk_delay": 0.2, "content": " ".join(f"w{i}" for i in range(30))},
    }
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=AUTH) as response,
    ):
        rid = response.headers["X-Request-Id"]
        received = b""
        for data in response.iter_raw():
            received += data
            if received.count(b"w") >= 3:
                break
    wait_for(lambda: upstream.fake.disconnects == 1, timeout=10)
    assert gw.stop() == 0
    [record] = [r for r in s3.records() if r["type"] == "response" and r["request_id"] == rid]
    assert record["client_disconnected"] is True and record["status"] == 200
    assert record["content"].startswith("w0 w1") and "w29" not in record["content"]
