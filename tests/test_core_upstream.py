"""Talking to providers: retries before the first byte, fallbacks, and client disconnects passed upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from conftest import AUTH, CHAT, FAST_UPSTREAM, MakeGateway, RunningGateway, gateway_config, until
from conftest import provider_section as section
from fake_upstream import FakeUpstream, Reply

FAIL_503 = Reply(status=503, error=b'{"error": {"message": "overloaded", "type": "server_error"}}')
PROMPTLY_S = 5  # a bound, so that a gateway that never tells the upstream fails instead of hanging


@pytest.mark.parametrize(
    "failure",
    [
        Reply(status=503),
        Reply(status=502),
        Reply(status=429),
        Reply(drop=True),  # the connection closes before any answer
    ],
    ids=["503", "502", "429", "connection"],
)
async def test_failures_before_the_first_byte_are_retried_until_one_succeeds(
    failure: Reply, gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.queue(failure, failure)  # FAST_UPSTREAM allows two retries
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["choices"][0]["message"]["content"] == "Hello from the fake upstream."
    assert len(fake_upstream.requests) == 3
    assert len({r["raw"] for r in fake_upstream.requests}) == 1  # the same request each time
    assert gateway.gw.metrics.retries.labels("fake")._value.get() == 2


async def test_a_streamed_call_is_retried_too_and_the_client_sees_one_clean_stream(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.queue(FAIL_503)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 200
        received = await response.read()
    assert received == b"".join(fake_upstream.requests[1]["sent"])


async def test_the_number_of_retries_is_configurable_and_the_last_answer_is_returned(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(gateway_config(fake_upstream.url, upstream={**FAST_UPSTREAM, "retries": 4}))
    rate_limited = Reply(
        status=429,
        error=b'{"error": {"message": "slow down", "type": "rate_limit_error", "code": "rate_limited"}}',
        headers={"Retry-After": "0", "X-RateLimit-Remaining-Requests": "0"},
    )
    fake_upstream.queue(*[rate_limited] * 5)
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 429
        assert await response.read() == rate_limited.error
        assert response.headers["Retry-After"] == "0"
        assert response.headers["X-RateLimit-Remaining-Requests"] == "0"
    assert len(fake_upstream.requests) == 5


async def test_no_retries_when_configured_so(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(gateway_config(fake_upstream.url, upstream={**FAST_UPSTREAM, "retries": 0}))
    fake_upstream.queue(FAIL_503)
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 503
        assert await response.read() == FAIL_503.error
    assert len(fake_upstream.requests) == 1


async def test_retry_after_is_honoured(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # The backoff alone would wait about 10 ms; the upstream asks for a whole second.
    fake_upstream.queue(Reply(status=429, headers={"Retry-After": "1"}))
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 200
    first, second = fake_upstream.requests
    assert second["at"] - first["at"] >= 0.95


async def test_an_unreachable_provider_is_a_502_in_openai_shape_after_retries(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    down = section(fake_upstream.url, endpoint="http://127.0.0.1:9/v1/chat/completions")
    gateway = await make_gateway(gateway_config(fake_upstream.url, providers={"fake": down}))
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 502
        error = (await response.json())["error"]
    assert error["type"] == "upstream_error"
    assert error["code"] == "bad_gateway"
    assert set(error) == {"message", "type", "param", "code"}
    assert gateway.gw.metrics.retries.labels("fake")._value.get() == 2
    assert gateway.gw.metrics.upstream_errors.labels("fake", "connection")._value.get() == 3


def _failing_for(model: str, reply: Reply) -> Any:
    def responder(body: dict[str, Any]) -> Reply:
        return reply if body.get("model") == model else Reply(content=f"answered by {body.get('model')}")

    return responder


async def test_fallback_models_are_used_when_the_primary_keeps_failing(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    providers = {
        "fake": section(fake_upstream.url),
        "backup": section(
            fake_upstream.url, models=["backup-model"], model_prefixes=[], api_key_env="BACKUP"
        ),
    }
    upstream = {**FAST_UPSTREAM, "retries": 1, "fallbacks": {"fake-model": ["backup-model"]}}
    gateway = await make_gateway(
        gateway_config(fake_upstream.url, providers=providers, upstream=upstream),
        env={"FAKE_KEY": "primary-key", "BACKUP": "backup-key"},
    )
    fake_upstream.responder = _failing_for("fake-model", FAIL_503)
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["choices"][0]["message"]["content"] == "answered by backup-model"
    seen = [(r["body"]["model"], r["headers"]["Authorization"]) for r in fake_upstream.requests]
    assert seen == [
        ("fake-model", "Bearer primary-key"),
        ("fake-model", "Bearer primary-key"),  # one retry of the primary first
        ("backup-model", "Bearer backup-key"),
    ]
    # Apart from the model, the fallback gets what the client sent.
    assert {k: v for k, v in fake_upstream.requests[2]["body"].items() if k != "model"} == {
        "messages": CHAT["messages"]
    }
    call = gateway.recorder.responses()[0]
    assert (call.provider, call.model, call.requested_model) == ("backup", "backup-model", "fake-model")


async def test_when_fallbacks_fail_too_the_last_answer_is_returned(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream = {**FAST_UPSTREAM, "retries": 0, "fallbacks": {"fake-model": ["fake/second"]}}
    gateway = await make_gateway(gateway_config(fake_upstream.url, upstream=upstream))
    fake_upstream.queue(FAIL_503, Reply(status=429))
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 429
        assert (await response.json())["error"]["message"] == "fake failure"
    assert [r["body"]["model"] for r in fake_upstream.requests] == ["fake-model", "fake/second"]


async def _disconnect_after(
    gateway: RunningGateway, body: dict[str, Any], ready: Any
) -> tuple[aiohttp.ClientSession, asyncio.Task[None]]:
    """Start a call in its own session, wait until `ready()` holds, then drop the connection."""
    session = aiohttp.ClientSession()

    async def call() -> None:
        async with session.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
            await response.content.readuntil(b"\n\n")
            await asyncio.sleep(3600)  # holds the stream open until the test drops it

    task = asyncio.create_task(call())
    await until(ready, PROMPTLY_S, "the upstream call starting")
    task.cancel()
    await session.close()
    return session, task


async def _assert_upstream_saw_disconnect(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    await asyncio.wait_for(fake_upstream.disconnected.wait(), PROMPTLY_S)
    assert fake_upstream.disconnects == 1
    await until(gateway.recorder.responses, PROMPTLY_S, "the response record")
    call = gateway.recorder.responses()[0]
    assert call.client_disconnected is True
    assert gateway.gw.in_flight == 0


async def test_a_client_leaving_before_the_first_byte_cancels_the_upstream_call(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    body = {**CHAT, "stream": True, "fake": {"delay": 30}}
    await _disconnect_after(gateway, body, lambda: fake_upstream.requests)
    await _assert_upstream_saw_disconnect(gateway, fake_upstream)


async def test_a_client_leaving_mid_stream_cancels_the_upstream_stream(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.gate = asyncio.Queue()
    fake_upstream.gate.put_nowait(None)  # one chunk, then the upstream waits
    body = {**CHAT, "stream": True}
    await _disconnect_after(
        gateway, body, lambda: fake_upstream.requests and fake_upstream.requests[0]["sent"]
    )
    await _assert_upstream_saw_disconnect(gateway, fake_upstream)
    assert gateway.recorder.responses()[0].status == 200  # the stream had started
    assert gateway.gw.metrics.open_streams.labels("fake", "fake-model")._value.get() == 0


async def test_a_client_leaving_a_non_streaming_call_cancels_the_upstream_call(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    body = {**CHAT, "fake": {"delay": 30}}
    await _disconnect_after(gateway, body, lambda: fake_upstream.requests)
    await _assert_upstream_saw_disconnect(gateway, fake_upstream)
    assert gateway.recorder.responses()[0].status == 499


async def test_an_upstream_that_never_answers_is_a_504_in_openai_shape(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream = {**FAST_UPSTREAM, "first_byte_timeout_s": 0.3, "retries": 1}
    gateway = await make_gateway(gateway_config(fake_upstream.url, upstream=upstream))
    body = {**CHAT, "stream": True, "fake": {"delay": 30}}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 504
        error = (await response.json())["error"]
    assert error["code"] == "upstream_timeout"
    assert set(error) == {"message", "type", "param", "code"}
    assert len(fake_upstream.requests) == 2  # retried once: nothing had reached the client
    assert gateway.gw.metrics.upstream_errors.labels("fake", "timeout")._value.get() == 2
