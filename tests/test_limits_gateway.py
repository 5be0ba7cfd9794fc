"""Limits through the gateway with the in-process store: answers, headers, settlement, usage, the SDK."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from conftest import AUTH, CHAT, PROXY_KEY, MakeGateway, RunningGateway, gateway_config, until
from fake_upstream import FakeUpstream

from gateway.auth import KeyRing
from gateway.calls import Call
from gateway.config import LoggingSettings
from gateway.logs.records import RecordBuilder
from providers.base import Endpoint

TEACHING_KEY = "teaching-key-0123456789"
TEACHING = {"Authorization": f"Bearer {TEACHING_KEY}"}
KEYS = KeyRing.from_env({"PROXY_KEY": PROXY_KEY, "PROXY_KEY_TEACHING": TEACHING_KEY})
URL = "/v1/chat/completions"
FAKE_TOTAL = 7  # the fake's usage for CHAT: "Say hello" (2) + "Hello from the fake upstream." (5)


class Clock:
    """A clock the test moves: the limiter reads it instead of the time."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def limited(make_gateway: MakeGateway, fake_url: str, limits: dict[str, Any]) -> RunningGateway:
    """A gateway with `limits`, the keys `default` and `teaching`, and a clock of its own."""
    gateway = await make_gateway(gateway_config(fake_url, limits=limits), keys=KEYS)
    gateway.gw.limits.clock = Clock()
    return gateway


def clock(gateway: RunningGateway) -> Clock:
    found = gateway.gw.limits.clock
    assert isinstance(found, Clock)
    return found


async def post(http: aiohttp.ClientSession, gateway: RunningGateway, body: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:  # fmt: skip
    async with http.post(gateway.url + URL, json=body or CHAT, headers=headers or AUTH) as response:
        raw = await response.read()
        return response.status, response.headers.copy(), orjson.loads(raw) if raw.startswith(b"{") else raw


async def used(
    http: aiohttp.ClientSession, gateway: RunningGateway, headers: dict[str, str] = AUTH
) -> dict[str, Any]:
    async with http.get(gateway.url + "/v1/usage", headers=headers) as response:
        assert response.status == 200, await response.text()
        data = await response.json()
    return {row["name"]: row["used"] for row in data["limits"]}


def counted(gateway: RunningGateway, name: str, **labels: str) -> float:
    gateway.gw.publish_metrics()  # as a scrape does first
    value = gateway.gw.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_every_answer_carries_the_tightest_windows_headers(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    limits = {"default": {"requests_per_minute": 10, "requests_per_day": 100, "tokens_per_minute": 5000}}
    gateway = await limited(make_gateway, fake_upstream.url, limits)
    status, headers, _ = await post(http, gateway)
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-reset-requests"] == "1m1s"
    assert headers["x-ratelimit-limit-tokens"] == "5000"
    reserved = 5000 - int(headers["x-ratelimit-remaining-tokens"])
    assert reserved == math.ceil(len(json.dumps(CHAT)) / 4) + 1024  # the body's bytes / 4, the estimate
    # streams and upstream errors carry them too
    status, headers, _ = await post(http, gateway, {**CHAT, "stream": True})
    assert (status, headers["x-ratelimit-remaining-requests"]) == (200, "8")
    status, headers, _ = await post(http, gateway, {**CHAT, "fake": {"status": 500}})
    assert (status, headers["x-ratelimit-remaining-requests"]) == (500, "7")
    # and so does an error of the gateway's own after admission (a redirect it refuses to follow)
    status, headers, _ = await post(http, gateway, {**CHAT, "fake": {"status": 302, "redirect": "http://x/"}})
    assert (status, headers["x-ratelimit-remaining-requests"]) == (502, "6")
    # the settled usage replaced each reservation: the two answered calls used 7 tokens each
    assert (await used(http, gateway))["default.tokens_per_minute"] == 2 * FAKE_TOTAL


RATE_NAMES = sorted(f"x-ratelimit-{part}-{metric}" for metric in ("requests", "tokens")
                    for part in ("limit", "remaining", "reset"))  # fmt: skip


async def _head(reader: asyncio.StreamReader) -> list[str]:
    """The header lines of the next answer on a raw connection (the status line first)."""
    return (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[:-2]


def _named(lines: list[str], name: str) -> list[str]:
    return [v.strip() for n, _, v in (line.partition(":") for line in lines[1:]) if n.lower() == name]


async def test_the_limits_lines_reach_the_head_once_and_keep_its_framing(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    """The x-ratelimit-* lines are written into the head past aiohttp's serializer (`LinesResponse`): read
    off the wire, each is there once (the provider's own, in any case, give way), before the blank line,
    and the answers after them on the same connection are framed whole."""
    limits = {"default": {"requests_per_minute": 10, "tokens_per_minute": 5000}}  # one meter each: fast
    gateway = await limited(make_gateway, fake_upstream.url, limits)
    provider = {"X-RateLimit-Remaining-Requests": "12", "x-ratelimit-limit-tokens": "1", "retry-after": "3"}
    plain = orjson.dumps({**CHAT, "fake": {"headers": provider}})
    stream = orjson.dumps({**CHAT, "stream": True})
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for n, body in enumerate([plain, plain, stream, plain]):
            writer.write(
                f"POST {URL} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {PROXY_KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            lines = await _head(reader)
            assert lines[0] == "HTTP/1.1 200 OK"
            names = sorted(n.lower() for n, _, _ in (line.partition(":") for line in lines[1:]))
            assert [n for n in names if n.startswith("x-ratelimit-")] == RATE_NAMES
            assert _named(lines, "x-ratelimit-remaining-requests") == [str(9 - n)]
            assert _named(lines, "x-ratelimit-limit-tokens") == ["5000"]
            assert _named(lines, "x-request-id") and all(line.count(": ") >= 1 for line in lines[1:])
            if body is stream:
                assert _named(lines, "transfer-encoding") == ["chunked"]
                answer = await reader.readuntil(b"\r\n0\r\n\r\n")
                assert b"data: [DONE]" in answer
            else:
                assert _named(lines, "retry-after") == ["3"]  # the provider's other headers still pass
                length = int(_named(lines, "content-length")[0])
                answer = await reader.readexactly(length)
                assert orjson.loads(answer)["choices"][0]["message"]["content"]
    finally:
        writer.close()


async def test_over_the_limit_the_answer_is_openais_429_and_both_records_name_the_limit(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await limited(
        make_gateway, fake_upstream.url, {"keys": {"teaching": {"requests_per_minute": 2}}}
    )
    for _ in range(2):
        assert (await post(http, gateway, headers=TEACHING))[0] == 200
    clock(gateway).now += 20
    statuses = [(await post(http, gateway, headers=TEACHING))[:2] for _ in range(3)]
    status, headers = statuses[-1]
    assert status == 429
    assert headers["Retry-After"] == "41" and headers["retry-after-ms"] == "41000"
    assert headers["x-should-retry"] == "true"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["X-Request-Id"]
    _, _, body = await post(http, gateway, headers=TEACHING)
    error = body["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert "keys.teaching.requests_per_minute" in error["message"] and error["param"] is None
    # refused calls reach no upstream and do not count
    assert fake_upstream.hits[URL] == 2
    assert (await used(http, gateway, TEACHING))["keys.teaching.requests_per_minute"] == 2
    # the default key has no limits at all: not named in `keys`, and there is no `default`
    status, headers, _ = await post(http, gateway)
    assert status == 200 and "x-ratelimit-limit-requests" not in headers
    refused = [c for c in gateway.recorder.responses() if c.status == 429]
    assert len(refused) == 4 and all(c.limited_by == "keys.teaching.requests_per_minute" for c in refused)
    builder = RecordBuilder(LoggingSettings())
    [request_record] = builder.request(refused[0])
    assert request_record["limited_by"] == builder.response(refused[0], 0)["limited_by"]
    assert request_record["limited_by"] == "keys.teaching.requests_per_minute"
    assert counted(gateway, "gateway_limit_refusals_total", key="teaching",
                   limit="keys.teaching.requests_per_minute") == 4  # fmt: skip


async def test_limits_reset_at_the_end_of_each_window(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    limits = {"default": {"requests_per_minute": 1, "requests_per_day": 2}}
    gateway = await limited(make_gateway, fake_upstream.url, limits)
    t = clock(gateway)
    t.now = 1_800_057_000.5  # 23:50:00.5 UTC, 2027-01-15
    assert (await post(http, gateway))[0] == 200
    t.now += 60.4  # still inside the sliding minute's 61 buckets
    assert (await post(http, gateway))[:1] == (429,)
    t.now += 0.2  # the bucket has left: one more fits, and it is the day's second
    assert (await post(http, gateway))[0] == 200
    t.now += 61
    status, headers, body = await post(http, gateway)
    assert status == 429 and body["error"]["message"].count("requests per day")
    assert headers["x-should-retry"] == "false" and headers["Retry-After"] == "478"  # at midnight
    t.now = 1_800_057_600.0  # the next UTC midnight
    assert (await post(http, gateway))[0] == 200


async def test_settlement_counts_what_was_used_streams_disconnects_and_errors_included(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await limited(make_gateway, fake_upstream.url, {"default": {"tokens_per_day": 1_000_000}})
    name = "default.tokens_per_day"
    assert (await post(http, gateway, {**CHAT, "max_tokens": 50}))[0] == 200
    assert (await used(http, gateway))[name] == FAKE_TOTAL
    assert (await post(http, gateway, {**CHAT, "stream": True}))[0] == 200  # usage asked for and held back
    assert (await used(http, gateway))[name] == 2 * FAKE_TOTAL
    assert (await post(http, gateway, {**CHAT, "fake": {"status": 503}}))[0] == 503  # nothing generated
    assert (await used(http, gateway))[name] == 2 * FAKE_TOTAL
    # a client that goes away mid-stream: the prompt's estimate and the text that came are counted
    fake_upstream.gate = asyncio.Queue()
    fake_upstream.gate.put_nowait(None)
    fake_upstream.gate.put_nowait(None)
    body = {**CHAT, "stream": True, "fake": {"content": "a b c d e f g h"}}
    async with http.post(gateway.url + URL, json=body, headers=AUTH) as response:
        await response.content.readuntil(b"\n\n")
        await response.content.readuntil(b"\n\n")
    await until(lambda: len(gateway.recorder.responses()) == 4, what="the disconnected call's record")
    call = gateway.recorder.responses()[-1]
    assert call.client_disconnected and call.answer.usage is None
    estimate = math.ceil(len(json.dumps(body)) / 4) + math.ceil(call.answer.kept / 4)
    assert (await used(http, gateway))[name] == 2 * FAKE_TOTAL + estimate
    assert counted(gateway, "gateway_key_tokens_total", key="default") == 2 * FAKE_TOTAL + estimate


async def test_a_concurrency_slot_is_held_for_the_whole_stream(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await limited(make_gateway, fake_upstream.url, {"default": {"concurrent": 1}})
    fake_upstream.gate = asyncio.Queue()
    fake_upstream.gate.put_nowait(None)
    async with http.post(gateway.url + URL, json={**CHAT, "stream": True}, headers=AUTH) as stream:
        await stream.content.readuntil(b"\n\n")
        status, headers, body = await post(http, gateway)
        assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded")
        assert headers["Retry-After"] == "1" and headers["x-should-retry"] == "true"
        assert "default.concurrent" in body["error"]["message"]
        for _ in range(20):
            fake_upstream.gate.put_nowait(None)
        await stream.read()
    await until(lambda: gateway.gw.in_flight == 0)
    assert (await post(http, gateway))[0] == 200


async def test_a_slot_is_free_again_for_the_next_call_of_a_client_calling_one_at_a_time(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A call is settled once its answer has left, before the next call from the same client can arrive."""
    gateway = await limited(make_gateway, fake_upstream.url, {"default": {"concurrent": 1}})
    for i in range(30):
        status, _, body = await post(http, gateway, {**CHAT, "stream": i % 3 == 0})
        assert status == 200, body
    assert counted(gateway, "gateway_key_tokens_total", key="default") == 30 * FAKE_TOTAL


async def test_a_call_whose_accounting_fails_leaves_the_other_calls_of_its_turn_accounted(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = await limited(make_gateway, fake_upstream.url, {"default": {"concurrent": 3}})
    gw = gateway.gw
    calls = [Call(f"call-{i}", Endpoint.CHAT, key_name="default", model="fake-model") for i in range(3)]
    for call in calls:
        gw.limits.admit(call, 100)  # the in-process store admits at once
    assert (await used(http, gateway))["default.concurrent"] == 3
    observe = gw.metrics.observe_call

    def failing(provider: str, model: str, status: int, *rest: Any) -> None:
        if status == 500:
            raise RuntimeError("a metrics bug")
        observe(provider, model, status, *rest)

    monkeypatch.setattr(gw.metrics, "observe_call", failing)
    for call, status in zip(calls, (200, 500, 200), strict=True):
        call.status = status
        gw.finish(call)
    assert (await used(http, gateway))["default.concurrent"] == 0  # the next turn settled all three
    assert "could not account for call call-1" in caplog.text


async def test_a_spent_budget_is_insufficient_quota_and_counts_the_providers_cost(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await limited(make_gateway, fake_upstream.url, {"default": {"cost_per_month_usd": 0.05}})
    for _ in range(2):
        assert (await post(http, gateway, {**CHAT, "fake": {"cost": 0.03}}))[0] == 200
    status, headers, body = await post(http, gateway)
    assert status == 429
    assert (body["error"]["code"], body["error"]["type"]) == ("insufficient_quota", "insufficient_quota")
    assert headers["x-should-retry"] == "false"
    assert "x-ratelimit-limit-requests" not in headers  # no request or token limit is configured
    assert (await used(http, gateway))["default.cost_per_month_usd"] == pytest.approx(0.06)
    assert counted(gateway, "gateway_key_cost_usd_total", key="default") == pytest.approx(0.06)


async def test_a_model_rule_caps_its_models_per_key(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    limits = {"default": {"requests_per_minute": 100}, "models": {"fake/": {"requests_per_minute": 1}}}
    gateway = await limited(make_gateway, fake_upstream.url, limits)
    expensive = {**CHAT, "model": "fake/large"}
    assert (await post(http, gateway, expensive))[0] == 200
    status, headers, body = await post(http, gateway, expensive)
    assert status == 429 and "models.fake/.requests_per_minute" in body["error"]["message"]
    assert headers["x-ratelimit-limit-requests"] == "1"  # the model's window is the tightest
    assert (await post(http, gateway, expensive, TEACHING))[0] == 200  # each key has its own counters
    status, headers, _ = await post(http, gateway)  # other models keep the key's limit
    assert (status, headers["x-ratelimit-remaining-requests"]) == (200, "98")


async def test_a_call_asking_more_than_a_limit_allows_is_told_not_to_retry(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await limited(make_gateway, fake_upstream.url, {"default": {"tokens_per_minute": 1000}})
    status, headers, body = await post(http, gateway, {**CHAT, "max_completion_tokens": 5000})
    assert status == 429 and "Retry-After" not in headers and headers["x-should-retry"] == "false"
    assert "more than the limit allows" in body["error"]["message"]
    assert fake_upstream.total_hits == 0


async def test_usage_is_scoped_to_the_key_and_every_key_only_for_operators(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    limits = {
        "default": {"requests_per_day": 10, "concurrent": 3},
        "keys": {"teaching": {"tokens_per_month": 1000}},
        "models": {"fake/": {"cost_per_day_usd": 2.5}},
        "operator_keys": ["default"],
    }
    gateway = await limited(make_gateway, fake_upstream.url, limits)
    assert (await post(http, gateway, {**CHAT, "max_tokens": 10}, TEACHING))[0] == 200
    async with http.get(gateway.url + "/v1/usage", headers=TEACHING) as response:
        mine = await response.json()
    assert mine["key_name"] == "teaching" and mine["store"] == "memory"
    rows = {row["name"]: row for row in mine["limits"]}
    assert set(rows) == {"keys.teaching.tokens_per_month", "models.fake/.cost_per_day_usd"}
    month = rows["keys.teaching.tokens_per_month"]
    assert (month["used"], month["remaining"], month["window"]) == (FAKE_TOTAL, 1000 - FAKE_TOTAL, "month")
    assert rows["models.fake/.cost_per_day_usd"]["limit"] == 2.5
    async with http.get(gateway.url + "/v1/usage/keys", headers=TEACHING) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "permission_denied"
    async with http.get(gateway.url + "/v1/usage/keys", headers=AUTH) as response:
        every = {entry["key_name"]: entry for entry in (await response.json())["data"]}
    assert set(every) == {"default", "teaching"}
    assert {row["name"] for row in every["default"]["limits"]} >= {"default.concurrent"}
    async with http.get(gateway.url + "/v1/usage") as response:
        assert response.status == 401


async def test_health_and_metrics_show_the_limits(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await limited(make_gateway, fake_upstream.url, {"default": {"requests_per_minute": 1}})
    await post(http, gateway)
    await post(http, gateway)
    async with http.get(gateway.url + "/health", headers=AUTH) as response:
        health = await response.json()
    assert health["status"] == "ok"
    assert health["limits"] == {"enabled": True, "store": "memory", "degraded": False, "store_errors": 0}
    async with http.get(gateway.url + "/metrics") as response:
        text = await response.text()
    assert 'gateway_key_tokens_total{key="default"} 7.0' in text
    assert 'gateway_limit_refusals_total{key="default",limit="default.requests_per_minute"} 1.0' in text


async def test_a_publish_that_fails_leaves_scrapes_answering_and_is_said_once_a_minute(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = await limited(make_gateway, fake_upstream.url, {"default": {"requests_per_minute": 100}})
    await post(http, gateway)
    fail = [True]
    metric = gateway.gw.metrics.key_tokens
    labels = metric.labels

    def failing(*names: str) -> Any:
        if fail[0]:
            raise OSError("no space left for the group's metric file")
        return labels(*names)

    monkeypatch.setattr(metric, "labels", failing)
    for _ in range(3):
        async with http.get(gateway.url + "/metrics") as response:
            assert response.status == 200
            assert "gateway_requests_total" in await response.text()
    said = [r for r in caplog.records if "could not publish the metrics" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is not None
    fail[0] = False  # the disk has room again: what was settled meanwhile is published
    async with http.get(gateway.url + "/metrics") as response:
        assert f'gateway_key_tokens_total{{key="default"}} {float(FAKE_TOTAL)}' in await response.text()


# ---------------------------------------------------------------------------------------------- the SDK
async def test_the_openai_sdk_waits_out_a_busy_slot_and_succeeds(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await limited(make_gateway, fake_upstream.url, {"default": {"concurrent": 1}})
    fake_upstream.gate = asyncio.Queue()
    fake_upstream.gate.put_nowait(None)
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=PROXY_KEY, max_retries=3) as sdk:
        async with http.post(gateway.url + URL, json={**CHAT, "stream": True}, headers=AUTH) as stream:
            await stream.content.readuntil(b"\n\n")
            loop = asyncio.get_running_loop()
            started = loop.time()
            second = asyncio.create_task(
                sdk.chat.completions.create(model="fake-model", messages=CHAT["messages"])
            )
            await until(lambda: counted(gateway, "gateway_limit_refusals_total", key="default",
                                        limit="default.concurrent") >= 1)  # fmt: skip
            for _ in range(20):
                fake_upstream.gate.put_nowait(None)
            await stream.read()
        completion = await asyncio.wait_for(second, 10)
    assert completion.choices[0].message.content == "Hello from the fake upstream."
    assert loop.time() - started >= 0.9  # it honoured Retry-After: 1
    assert fake_upstream.hits[URL] == 2


async def test_the_openai_sdk_does_not_retry_a_spent_budget(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    gateway = await limited(make_gateway, fake_upstream.url, {"default": {"requests_per_day": 1}})
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=PROXY_KEY, max_retries=5) as sdk:
        await sdk.chat.completions.create(model="fake-model", messages=CHAT["messages"])
        with pytest.raises(openai.RateLimitError) as caught:
            await asyncio.wait_for(
                sdk.chat.completions.create(model="fake-model", messages=CHAT["messages"]), 10
            )
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    # one refusal: the SDK read x-should-retry: false (and a Retry-After of hours) and did not try again
    assert (
        counted(gateway, "gateway_limit_refusals_total", key="default", limit="default.requests_per_day") == 1
    )


# ---------------------------------------------------------------------------------------------- the CLI
async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`python -m gateway ARGS` without blocking the loop the gateway under test runs on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_operator_reads_every_keys_usage_from_the_command_line(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    limits = {"default": {"requests_per_day": 10}, "keys": {"teaching": {"cost_per_month_usd": 5}}}
    gateway = await limited(make_gateway, fake_upstream.url, {**limits, "operator_keys": ["default"]})
    await post(http, gateway)
    await post(http, gateway, {**CHAT, "fake": {"cost": 0.25}}, TEACHING)
    code, out, err = await run_cli("usage", "--url", gateway.url, env={"PROXY_KEY": PROXY_KEY})
    assert code == 0, err
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["key", "limit", "used", "of", "left", "resets", "in"]
    assert lines[1][:5] == ["default", "default.requests_per_day", "1", "10", "9"]
    assert lines[2][:5] == ["teaching", "keys.teaching.cost_per_month_usd", "0.25", "5", "4.75"]
    code, _, err = await run_cli("usage", "--url", gateway.url, env={"PROXY_KEY": TEACHING_KEY})
    assert code == 1 and "403" in err and "operator_keys" in err


async def test_check_config_names_each_problem_and_serve_refuses_workers_without_a_shared_store(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: {}\nlimits:\n  default: {tokens_per_minute: lots}\n  on_store_error: retry\n")
    code, _, err = await run_cli("check-config", str(bad))
    assert code == 2
    assert f"{bad}: limits.default.tokens_per_minute: must be a whole number >= 0, not 'lots'" in err
    assert f"{bad}: limits.on_store_error: must be allow or deny, not 'retry'" in err
    memory = tmp_path / "memory.yaml"
    memory.write_text("providers: {nrp: {}}\nlimits: {default: {requests_per_minute: 5}}\n")
    code, _, err = await run_cli("serve", "--config", str(memory), "--port", "0", "--workers", "2")
    assert code == 2 and "need a shared store: set limits.store: redis" in err
