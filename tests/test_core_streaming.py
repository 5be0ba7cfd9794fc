"""Streaming: upstream SSE bytes reach the client unchanged as they arrive; failures end in an error event."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
from conftest import (
    AUTH,
    CHAT,
    FAST_UPSTREAM,
    MakeGateway,
    RunningGateway,
    event_json,
    gateway_config,
    read_events,
    until,
)
from fake_upstream import FakeUpstream, Reply

from gateway import relay

STREAM = {**CHAT, "stream": True}
STEP_S = 5  # a bound on each step, so a gateway that buffers or hangs fails instead of waiting forever


def _usage_event(event: bytes) -> bool:
    return (
        event.startswith(b"data: {")
        and event_json(event).get("choices") == []
        and "usage" in event_json(event)
    )


async def test_stream_bytes_are_the_upstreams_minus_only_the_usage_chunk_the_gateway_asked_for(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = {**STREAM, "fake": {"content": "one two three four", "reasoning": "hmm ok", "comments": True}}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        received = await response.read()
    sent = fake_upstream.requests[0]["sent"]
    # The gateway asked for usage (to log tokens) although the client did not; that chunk alone is held back.
    assert fake_upstream.requests[0]["body"]["stream_options"] == {"include_usage": True}
    usage = [e for e in sent if _usage_event(e)]
    assert len(usage) == 1
    assert received == b"".join(e for e in sent if e not in usage)
    assert b": OPENROUTER PROCESSING\n\n" in received
    assert received.endswith(b"data: [DONE]\n\n")
    # ... and the gateway still knows the usage it held back.
    assert gateway.recorder.responses()[0].answer.usage == event_json(usage[0])["usage"]


async def test_a_client_that_asks_for_usage_gets_every_byte_including_usage(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw = orjson.dumps({**STREAM, "stream_options": {"include_usage": True}})
    async with http.post(gateway.url + "/v1/chat/completions", data=raw, headers=AUTH) as response:
        received = await response.read()
    sent = fake_upstream.requests[0]["sent"]
    assert received == b"".join(sent)
    assert sum(_usage_event(e) for e in sent) == 1
    # Nothing needed changing, so the upstream got the client's own bytes.
    assert fake_upstream.requests[0]["raw"] == raw


async def test_each_chunk_reaches_the_client_before_the_upstream_sends_the_next(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.gate = asyncio.Queue()
    body = {**STREAM, "stream_options": {"include_usage": True}, "fake": {"content": "a b c d e"}}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 200
        received: list[bytes] = []
        while True:
            sent = fake_upstream.requests[0]["sent"]
            assert len(sent) == len(received)  # the fake is waiting for the next token
            fake_upstream.gate.put_nowait(None)
            event = await asyncio.wait_for(response.content.readuntil(b"\n\n"), STEP_S)
            received.append(event)
            assert event == sent[len(received) - 1]
            if event == b"data: [DONE]\n\n":
                break
        assert await asyncio.wait_for(response.read(), STEP_S) == b""
    contents = [event_json(e)["choices"][0]["delta"].get("content") for e in received[1:6]]
    assert contents == ["a ", "b ", "c ", "d ", "e"]


async def test_open_streams_gauge_counts_a_stream_while_it_runs(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.gate = asyncio.Queue()
    fake_upstream.gate.put_nowait(None)
    async with http.post(gateway.url + "/v1/chat/completions", json=STREAM, headers=AUTH) as response:
        await asyncio.wait_for(response.content.readuntil(b"\n\n"), STEP_S)
        assert gateway.gw.metrics.open_streams.labels("fake", "fake-model")._value.get() == 1
        assert gateway.gw.in_flight == 1
        for _ in range(20):
            fake_upstream.gate.put_nowait(None)
        await asyncio.wait_for(response.read(), STEP_S)
    assert gateway.gw.metrics.open_streams.labels("fake", "fake-model")._value.get() == 0
    assert gateway.gw.in_flight == 0


async def test_upstream_failure_after_the_first_byte_ends_with_one_openai_error_event(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = {**STREAM, "fake": {"content": "one two three four five", "abort_after": 3}}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 200
        events = await asyncio.wait_for(read_events(response), STEP_S)
    sent = fake_upstream.requests[0]["sent"]
    assert len(sent) == 3
    assert events[:3] == sent
    assert len(events) == 4
    error = event_json(events[3])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "upstream_error"
    assert b"[DONE]" not in b"".join(events)
    call = gateway.recorder.responses()[0]
    assert call.error == error["message"]
    assert call.answer.text == "one two "


async def test_an_upstream_silent_too_long_mid_stream_gives_an_error_event(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw_config = gateway_config(fake_upstream.url, upstream={**FAST_UPSTREAM, "idle_timeout_s": 0.3})
    gateway = await make_gateway(raw_config)
    fake_upstream.gate = asyncio.Queue()
    for _ in range(2):
        fake_upstream.gate.put_nowait(None)  # two chunks, then silence
    async with http.post(gateway.url + "/v1/chat/completions", json=STREAM, headers=AUTH) as response:
        events = await asyncio.wait_for(read_events(response), STEP_S)
    assert events[:2] == fake_upstream.requests[0]["sent"]
    assert len(events) == 3
    error = event_json(events[2])["error"]
    assert error["code"] == "upstream_timeout"
    assert "silent" in error["message"]


async def test_upstream_error_status_on_a_stream_request_comes_back_as_json(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    error = b'{"error": {"message": "context too long", "type": "invalid_request_error", "code": 400}}'
    fake_upstream.queue(Reply(status=400, error=error))
    async with http.post(gateway.url + "/v1/chat/completions", json=STREAM, headers=AUTH) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        assert await response.read() == error


async def test_a_streamed_tool_call_passes_through_and_is_reassembled_for_the_record(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    call = {"name": "get_weather", "arguments": '{"city": "Berkeley", "unit": "C"}'}
    body = {**STREAM, "fake": {"content": "", "tool_calls": [call]}}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        received = await response.read()
    assert received == b"".join(e for e in fake_upstream.requests[0]["sent"] if not _usage_event(e))
    recorded = gateway.recorder.responses()[0].answer
    assert recorded.tool_call_list() == [call]
    assert recorded.finish_reason == "tool_calls"


CHUNK = (
    'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
)
DONE_EVENT = "data: [DONE]\n\n"


async def test_the_clients_body_ends_with_done_while_the_upstream_has_not_ended_its_own(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.gate = asyncio.Queue()
    # The fake waits at the gate before its last (empty) write, and only then ends its body.
    body = {
        **STREAM,
        "stream_options": {"include_usage": True},
        "fake": {"raw_events": [CHUNK, DONE_EVENT, ""]},
    }
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        for _ in range(2):
            fake_upstream.gate.put_nowait(None)
        received = await asyncio.wait_for(response.read(), STEP_S)  # the whole body: its end came with [DONE]
    assert received == (CHUNK + DONE_EVENT).encode()
    assert gateway.gw.in_flight == 1  # the call itself goes on until the upstream's answer has ended
    assert gateway.recorder.responses() == []
    # The connection is free for the client's next call, which is answered once the first has ended.

    async def next_call() -> dict[str, object]:
        async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as second:
            assert second.status == 200
            return dict(await second.json())

    second = asyncio.create_task(next_call())
    await asyncio.sleep(0.2)
    assert not second.done()
    fake_upstream.gate.put_nowait(None)
    assert (await asyncio.wait_for(second, STEP_S))["choices"]
    await until(lambda: len(gateway.recorder.responses()) == 2, what="both calls recorded")
    first = next(c for c in gateway.recorder.responses() if c.stream)
    assert first.error is None and first.status == 200
    assert first.answer.text == "hi"
    # Its latency is the client's: to the last byte it got, [DONE], not to the upstream's end 0.2 s later.
    assert first.latency_ms < 150


async def test_streams_whose_upstreams_end_together_all_finish_timed_at_their_last_byte(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway.gw.upstream.pool.ends.per_turn = 2  # ends that come together: most wake in the turns after
    count = 40
    # A chunk, [DONE] 0.3 s later, and the upstream's body end 0.3 s after that: 40 of them at once.
    fake = {"raw_events": [CHUNK, DONE_EVENT, ""], "chunk_delay": 0.3}
    body = {**STREAM, "stream_options": {"include_usage": True}, "fake": fake}

    async def one() -> tuple[str, bytes, float]:
        """The call's id, what its client received, and how long the client waited for it (ms)."""
        started = time.perf_counter()
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
            received = await asyncio.wait_for(response.read(), STEP_S)
            return response.headers["X-Request-Id"], received, (time.perf_counter() - started) * 1000

    answers = await asyncio.gather(*(one() for _ in range(count)))
    assert [received for _, received, _ in answers] == [(CHUNK + DONE_EVENT).encode()] * count
    await until(lambda: len(gateway.recorder.responses()) == count, what="every call recorded")
    calls = {c.request_id: c for c in gateway.recorder.responses()}
    assert gateway.gw.in_flight == 0 and gateway.gw.upstream.pool.ends.waiting == 0
    assert all(c.error is None and c.status == 200 and c.answer.text == "hi" for c in calls.values())
    # Each is timed to its client's [DONE]: within what its client waited, never the upstream's end 0.3 s
    # later (the client's own wait also holds the connect and the request, which the gateway's does not).
    late = [
        (rid, waited, calls[rid].latency_ms) for rid, _, waited in answers if calls[rid].latency_ms > waited
    ]
    assert not late, late


async def test_stream_ends_waiting_for_their_turn_show_in_health_and_metrics(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    pacer, loop = gateway.gw.upstream.pool.ends, asyncio.get_running_loop()
    waiters = [loop.create_future() for _ in range(3)]
    pacer.per_turn = 0  # nothing wakes: the three ends wait while the gateway is asked about them
    for waiter in waiters:
        pacer.wake(waiter)
    try:
        async with http.get(gateway.url + "/health", headers=AUTH) as response:
            health = await response.json()
        async with http.get(gateway.url + "/metrics") as response:
            scrape = await response.text()
    finally:
        pacer.per_turn = 32
    assert health["stream_ends_waiting"] == 3
    assert "gateway_stream_ends_waiting 3.0" in scrape
    await asyncio.wait_for(asyncio.gather(*waiters), STEP_S)
    async with http.get(gateway.url + "/metrics") as response:
        assert "gateway_stream_ends_waiting 0.0" in await response.text()


async def test_an_upstream_failing_after_done_leaves_the_clients_answer_whole_and_is_recorded(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # Two events, then the connection closes without the body's end: a broken answer, after [DONE].
    fake = {"raw_events": [CHUNK, DONE_EVENT, "never sent"], "abort_after": 2}
    body = {**STREAM, "stream_options": {"include_usage": True}, "fake": fake}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 200
        received = await asyncio.wait_for(response.read(), STEP_S)
    assert received == (CHUNK + DONE_EVENT).encode()  # no error event after the end of a whole answer
    await until(lambda: gateway.recorder.responses(), what="the call recorded")
    call = gateway.recorder.responses()[0]
    assert call.error is not None and "broke off" in call.error
    assert call.answer.text == "hi"


async def test_an_upstream_keeping_its_body_open_after_done_is_cut_off_after_the_grace(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay, "DONE_GRACE_S", 0.3)
    fake_upstream.gate = asyncio.Queue()
    for _ in range(2):
        fake_upstream.gate.put_nowait(None)  # the chunk and [DONE]; the body's end never comes
    fake = {"raw_events": [CHUNK, DONE_EVENT, ""]}
    body = {**STREAM, "stream_options": {"include_usage": True}, "fake": fake}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        received = await asyncio.wait_for(response.read(), STEP_S)
    assert received == (CHUNK + DONE_EVENT).encode()
    # The client's next call on the same connection waits for the first call's end: the grace, not the
    # upstream's idle timeout (300 s).
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as second:
        assert second.status == 200
    await until(lambda: len(gateway.recorder.responses()) == 2, what="both calls recorded")
    first = next(c for c in gateway.recorder.responses() if c.stream)
    assert first.error is not None and "after [DONE]" in first.error
    assert first.answer.text == "hi" and gateway.gw.in_flight == 0
