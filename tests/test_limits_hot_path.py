"""The path every call takes through the limiter with the in-process store: admitted without a suspension,
its headers its own, its settlement applied once and counted in /metrics at once."""

from __future__ import annotations

import calendar
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar
from unittest import mock

import pytest
from aiohttp.abc import AbstractStreamWriter
from aiohttp.test_utils import make_mocked_request

from gateway.calls import Call
from gateway.edge import LinesResponse, parse_head_lines
from gateway.errors import RateLimited
from gateway.limits.config import parse_limits
from gateway.limits.limiter import Limiter
from gateway.limits.plan import head_lines
from gateway.metrics import Metrics
from providers.base import Endpoint

T = TypeVar("T")
LIMITS = {"default": {"requests_per_minute": 3, "tokens_per_minute": 2000, "concurrent": 3}}
BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 100}
NOW = float(calendar.timegm((2026, 3, 1, 12, 0, 0)))


def at_once(step: Coroutine[Any, Any, T]) -> T:
    """The coroutine's result, which it must give without suspending."""
    try:
        step.send(None)
    except StopIteration as done:
        return done.value
    step.close()
    raise AssertionError("it suspended: the in-process store should answer at once")


def admitted(answer: bytes | Awaitable[bytes]) -> dict[str, str]:
    """An admission's headers, which the in-process store gives at once, never as something to await."""
    assert isinstance(answer, bytes), "the in-process store should answer at once"
    pairs = parse_head_lines(answer)
    assert len(pairs) == len(dict(pairs)), "each header once"
    return dict(pairs)


def limiter() -> Limiter:
    problems: list[str] = []
    settings = parse_limits(LIMITS, problems)
    assert not problems
    return Limiter(settings, clock=lambda: NOW)


def chat(request_id: str) -> Call:
    return Call(request_id, Endpoint.CHAT, key_name="default", model="mock-gpt", body=dict(BODY))


def headers(remaining_requests: int, remaining_tokens: int) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": str(remaining_requests),
        "x-ratelimit-reset-requests": "1m1s",
        "x-ratelimit-limit-tokens": "2000",
        "x-ratelimit-remaining-tokens": str(remaining_tokens),
        "x-ratelimit-reset-tokens": "1m1s",
    }


def test_an_admission_is_made_at_once_and_settled_once() -> None:
    limits, call = limiter(), chat("a")
    # 400 bytes of prompt are 100 tokens; with max_tokens 100, 200 are reserved
    assert admitted(limits.admit(call, 400)) == headers(2, 1800)
    call.status, call.answer.usage = 200, {"prompt_tokens": 90, "completion_tokens": 10, "total_tokens": 100}
    limits.settle(call)
    limits.settle(call)  # a second settlement changes nothing
    rows: list[dict[str, Any]] = at_once(limits.usage("default"))["limits"]  # type: ignore[assignment]
    used = {row["name"]: row["used"] for row in rows}
    assert used == {
        "default.requests_per_minute": 1,
        "default.tokens_per_minute": 100,
        "default.concurrent": 0,
    }


def test_each_answer_has_headers_of_its_own_and_a_refusal_has_them_too() -> None:
    limits = limiter()
    first = admitted(limits.admit(chat("a"), 400))
    first["x-ratelimit-remaining-tokens"] = "changed by a hook"  # shared with nothing
    assert admitted(limits.admit(chat("b"), 400)) == headers(1, 1600)
    assert admitted(limits.admit(chat("c"), 400)) == headers(0, 1400)  # the minute's last request
    refused = chat("d")
    with pytest.raises(RateLimited) as caught:
        admitted(limits.admit(refused, 400))
    error = caught.value
    assert refused.limited_by == "default.requests_per_minute" and refused.ticket is None
    assert error.headers is not None and error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["Retry-After"] == "61"  # the three requests leave with their second
    assert error.headers["x-should-retry"] == "true"  # a sliding minute always frees room: worth a retry


def test_settlements_reach_the_keys_metrics_when_published() -> None:
    problems: list[str] = []
    metrics = Metrics()
    limits = Limiter(parse_limits(LIMITS, problems), metrics=metrics, clock=lambda: NOW)

    def tokens() -> float | None:
        return metrics.registry.get_sample_value("gateway_key_tokens_total", {"key": "default"})

    for request_id, used in (("a", 100), ("b", 0), ("c", 20)):
        call = chat(request_id)
        admitted(limits.admit(call, 400))
        call.status = 200
        call.answer.usage = {"prompt_tokens": used, "completion_tokens": 0, "total_tokens": used}
        limits.settle(call)
        if request_id == "b":
            assert tokens() in (None, 0)  # added up, not yet a step of the metric
            limits.publish()
            assert tokens() == 100
    limits.publish()
    limits.publish()  # nothing new: no second step
    assert tokens() == 120


def test_tokens_a_failing_publish_could_not_take_in_are_taken_in_the_next_time() -> None:
    problems: list[str] = []
    metrics = Metrics()
    limits = Limiter(parse_limits(LIMITS, problems), metrics=metrics, clock=lambda: NOW)
    call = chat("a")
    admitted(limits.admit(call, 400))
    call.status, call.answer.usage = 200, {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}
    limits.settle(call)

    def failing(*labels: str) -> Any:
        raise OSError("no space left for the group's metric file")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics.key_tokens, "labels", failing)
        with pytest.raises(OSError):
            limits.publish()
    limits.publish()
    assert metrics.registry.get_sample_value("gateway_key_tokens_total", {"key": "default"}) == 42


def test_a_settlement_seconds_later_corrects_the_bucket_its_reservation_went_to() -> None:
    now = [NOW]
    problems: list[str] = []
    limits = Limiter(parse_limits(LIMITS, problems), clock=lambda: now[0])
    first, second = chat("a"), chat("b")
    admitted(limits.admit(first, 400))  # 200 tokens reserved at NOW
    now[0] += 2.5
    assert admitted(limits.admit(second, 400)) == headers(1, 1600)  # its minute holds both reservations
    first.status, first.answer.usage = 200, {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    limits.settle(first)  # its bucket is no longer the current one: corrected in place all the same
    rows: list[dict[str, Any]] = at_once(limits.usage("default"))["limits"]  # type: ignore[assignment]
    assert {row["name"]: row["used"] for row in rows}["default.tokens_per_minute"] == 210
    now[0] += 60  # NOW's bucket has left the minute; only the second call's reservation is counted
    rows = at_once(limits.usage("default"))["limits"]  # type: ignore[assignment]
    assert {row["name"]: row["used"] for row in rows}["default.tokens_per_minute"] == 200


async def test_an_aiohttp_keeping_its_head_elsewhere_gets_the_lines_as_headers() -> None:
    """`LinesResponse` writes its lines into the head aiohttp buffers; a writer without that buffer is
    handed them as ordinary headers instead, none lost."""
    writer = mock.Mock(spec=AbstractStreamWriter)  # no `_headers_buf`
    writer.write_headers, writer.write_eof = mock.AsyncMock(), mock.AsyncMock()
    lines = headers(2, 1800)
    response = LinesResponse(body=b"{}")
    response.head_lines = head_lines(lines)
    await response.prepare(make_mocked_request("POST", "/v1/chat/completions", writer=writer))
    (_, sent), _ = writer.write_headers.call_args
    assert {name: sent[name] for name in lines} == lines
