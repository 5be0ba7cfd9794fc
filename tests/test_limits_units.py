"""Limits on values: window arithmetic (UTC days and months included), the in-process store, the config."""

from __future__ import annotations

import calendar

import pytest

from gateway.config import ConfigError, parse_config
from gateway.limits.answers import refusal
from gateway.limits.config import MICRO, LimitSettings, Meter, parse_limits
from gateway.limits.memory import MemoryStore
from gateway.limits.plan import Plan, head_lines
from gateway.limits.resp import ReplyError, _parse, bulks, head, pack
from gateway.limits.store import Counter, Kind, Verdict
from gateway.limits.usage import usage_tokens
from gateway.limits.windows import (
    BUCKETS,
    Window,
    bucket,
    day_window,
    month_window,
    oldest_bucket,
    reset_text,
    sliding_retry_after,
)


def utc(*parts: int) -> float:
    """Epoch seconds of a UTC date and time."""
    return float(calendar.timegm((*parts, *(0,) * (6 - len(parts)))))


# ---------------------------------------------------------------------------------------------- windows
def test_a_sliding_minute_counts_the_current_second_and_the_sixty_before_it() -> None:
    now = utc(2026, 3, 1, 12, 0, 30) + 0.75
    assert bucket(now) == int(utc(2026, 3, 1, 12, 0, 30))
    assert oldest_bucket(now) == bucket(now) - 60
    assert BUCKETS == 61
    # whatever the fraction of a second, everything of the last 60 s is counted
    assert oldest_bucket(now) <= now - 60


@pytest.mark.parametrize(
    ("moment", "day", "end"),
    [
        (utc(2026, 3, 1, 0, 0, 0), "2026-03-01", utc(2026, 3, 2)),
        (utc(2026, 3, 1, 23, 59, 59) + 0.999, "2026-03-01", utc(2026, 3, 2)),
        (utc(2026, 12, 31, 23, 59, 59), "2026-12-31", utc(2027, 1, 1)),
        (utc(2028, 2, 28, 12), "2028-02-28", utc(2028, 2, 29)),  # a leap year
        (utc(2028, 2, 29, 12), "2028-02-29", utc(2028, 3, 1)),
    ],
)
def test_days_are_utc_calendar_days(moment: float, day: str, end: float) -> None:
    assert day_window(moment) == (day, end)


@pytest.mark.parametrize(
    ("moment", "month", "end"),
    [
        (utc(2026, 1, 31, 23, 59, 59), "2026-01", utc(2026, 2, 1)),
        (utc(2026, 2, 1), "2026-02", utc(2026, 3, 1)),
        (utc(2026, 2, 28, 23, 59, 59), "2026-02", utc(2026, 3, 1)),  # 28 days
        (utc(2028, 2, 29, 23, 59, 59), "2028-02", utc(2028, 3, 1)),  # 29 days
        (utc(2026, 4, 30, 12), "2026-04", utc(2026, 5, 1)),  # 30 days
        (utc(2026, 12, 31, 23, 59, 59), "2026-12", utc(2027, 1, 1)),  # into the next year
        (utc(2027, 1, 1), "2027-01", utc(2027, 2, 1)),
    ],
)
def test_months_are_utc_calendar_months(moment: float, month: str, end: float) -> None:
    assert month_window(moment) == (month, end)


def test_the_wait_is_until_enough_of_the_oldest_buckets_have_left() -> None:
    now = 1000.5
    buckets = [(950, 3), (970, 4), (1000, 3), (900, 50)]  # 900 is no longer counted
    assert sliding_retry_after(buckets, need=1, limit=11, now=now) == 0.0
    # 10 used of 10: one more fits once bucket 950 leaves, at 950 + 61 = 1011
    assert sliding_retry_after(buckets, need=1, limit=10, now=now) == pytest.approx(10.5)
    # 4 more need 950 and 970 gone: at 1031
    assert sliding_retry_after(buckets, need=4, limit=10, now=now) == pytest.approx(30.5)
    assert sliding_retry_after(buckets, need=11, limit=10, now=now) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.02, "20ms"),
        (0.9994, "999ms"),
        (1, "1s"),
        (8.64, "8.64s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (7503.2, "2h5m4s"),
    ],
)
def test_resets_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert reset_text(seconds) == text


# ---------------------------------------------------------------------------------------------- store
def sliding(limit: int, now: float, key: str = "k:rpm") -> Counter:
    return Counter(key, Kind.SLIDING, bucket(now), limit)


async def admit(
    store: MemoryStore, call_id: str, counters: list[Counter], amounts: list[int], now: float
) -> Verdict:
    return await store.admit(call_id, store.bind(counters, now), amounts, now)


async def test_no_sixty_seconds_ever_hold_more_than_a_sliding_limit() -> None:
    store, admitted = MemoryStore(), []
    now = 10_000.0
    while now < 10_300:  # a call every 0.25 s against 20 per minute: four times the limit, for five minutes
        if (await admit(store, f"c{now}", [sliding(20, now)], [1], now)).admitted:
            admitted.append(now)
        now += 0.25
    for start in admitted:
        assert sum(1 for t in admitted if start <= t < start + 60) <= 20
    # and it is not much tighter than that: over five minutes nearly 5 x 20 are let through
    assert len(admitted) >= 5 * 20 * 60 / 61 - 1


async def test_a_fixed_bucket_would_let_twice_through_at_the_boundary_and_this_does_not() -> None:
    store = MemoryStore()
    t = 60_000.0 - 0.5  # half a second before a minute boundary
    first = [await admit(store, f"a{i}", [sliding(10, t)], [1], t) for i in range(10)]
    after = [await admit(store, f"b{i}", [sliding(10, t + 1)], [1], t + 1) for i in range(10)]
    assert all(v.admitted for v in first)
    assert not any(v.admitted for v in after)


async def test_an_admission_is_all_or_nothing_and_says_which_limit_refused() -> None:
    store, now = MemoryStore(), 5_000.0
    day = Counter("k:tpd:2026-01-01", Kind.CALENDAR, 86_400, 100)
    assert (await admit(store, "a", [sliding(10, now), day], [1, 60], now)).admitted
    refused = await admit(store, "b", [sliding(10, now), day], [1, 60], now)
    assert (refused.refused, refused.used) == (1, (1, 60))
    # the refused call charged nothing: the minute still holds one request
    assert await store.read([sliding(10, now), day], now) == (1, 60)


async def test_settlement_corrects_the_bucket_the_reservation_went_to() -> None:
    store, now = MemoryStore(), 7_000.0
    tokens = sliding(1000, now, "k:tpm")
    bound = store.bind([tokens], now)
    await store.admit("a", bound, [600], now)
    await admit(store, "b", [sliding(1000, now + 2, "k:tpm")], [300], now + 2)  # a later bucket
    store.settle("a", bound, [-550], now + 5)  # reserved 600, used 50
    assert await store.read([tokens], now + 5) == (350,)
    assert (await store.read([tokens], now + 61)) == (300,)  # and it leaves with its bucket
    store.settle("a", bound, [+999], now + 62)  # a bucket already gone is not brought back
    assert await store.read([tokens], now + 62) == (300,)


async def test_a_settlement_never_takes_its_bucket_below_zero() -> None:
    store, now = MemoryStore(), 7_000.0
    await admit(store, "a", [sliding(1000, now, "k:tpm")], [100], now)
    bound = store.bind([sliding(1000, now + 1, "k:tpm")], now + 1)
    await store.admit("b", bound, [300], now + 1)
    store.settle("b", bound, [-400], now + 1)  # it reserved 300: its bucket is left empty, a's untouched
    assert await store.read([sliding(1000, now + 1, "k:tpm")], now + 1) == (100,)
    assert await store.read([sliding(1000, now + 61, "k:tpm")], now + 61) == (0,)


async def test_a_call_that_reserved_nothing_counts_what_it_used_once_the_minute_moved_on() -> None:
    store, now = MemoryStore(), 7_000.0
    cost = sliding(10**6, now, "k:cpm")
    bound = store.bind([cost], now)
    await store.admit("a", bound, [0], now)  # a model without a price: nothing reserved
    await admit(store, "b", [sliding(10**6, now + 1, "k:cpm")], [0], now + 1)
    store.settle("a", bound, [250], now + 2)  # what the provider said it cost
    assert await store.read([cost], now + 2) == (250,)


async def test_a_calendar_counter_starts_again_with_its_window() -> None:
    store = MemoryStore()
    jan = Counter("k:rpd:2026-01-31", Kind.CALENDAR, int(utc(2026, 2, 1)), 2)
    feb = Counter("k:rpd:2026-02-01", Kind.CALENDAR, int(utc(2026, 2, 2)), 2)
    january = store.bind([jan], utc(2026, 1, 31, 23))
    for call in ("a", "b"):
        assert (await store.admit(call, january, [1], utc(2026, 1, 31, 23))).admitted
    assert not (await admit(store, "c", [jan], [1], utc(2026, 1, 31, 23, 59))).admitted
    assert (await admit(store, "d", [feb], [1], utc(2026, 2, 1))).admitted
    store.settle("a", january, [-1], utc(2026, 2, 1, 0, 1))  # a late settlement of a window gone: dropped
    assert await store.read([jan, feb], utc(2026, 2, 1, 0, 1)) == (0, 1)


async def test_concurrency_slots_are_freed_by_settlement() -> None:
    store, now = MemoryStore(), 1.0
    slot = Counter("k:concurrent", Kind.CONCURRENT, 3600, 2)
    bound = store.bind([slot], now)
    assert (await store.admit("a", bound, [1], now)).admitted
    assert (await store.admit("b", bound, [1], now)).admitted
    assert not (await store.admit("c", bound, [1], now)).admitted
    store.settle("a", bound, [-1], now)  # a slot's correction frees it
    assert (await store.admit("c", bound, [1], now)).admitted
    assert await store.read([slot], now) == (2,)


async def test_a_spent_budget_refuses_a_call_that_reserves_nothing() -> None:
    store, budget = MemoryStore(), Counter("k:cost:2026-01", Kind.CALENDAR, 10**10, 5 * MICRO)
    bound = store.bind([budget], 1.0)
    assert (await store.admit("a", bound, [0], 1.0)).admitted
    store.settle("a", bound, [5 * MICRO], 1.0)  # the price was only known at the end
    assert not (await admit(store, "b", [budget], [0], 2.0)).admitted


# ---------------------------------------------------------------------------------------------- answers
def meter(name: str, metric: str, window: Window | None, limit: int) -> Meter:
    return Meter(f"default.{name}", metric, window, limit, f"olp:k=x:{name}")


def test_headers_describe_the_tightest_window_of_requests_and_of_tokens() -> None:
    now = utc(2026, 3, 1, 23, 0, 0)
    plan = Plan(
        (
            meter("requests_per_minute", "requests", Window.MINUTE, 60),
            meter("requests_per_day", "requests", Window.DAY, 100),
            meter("tokens_per_minute", "tokens", Window.MINUTE, 10_000),
            meter("concurrent", "concurrent", None, 4),
        )
    )
    plan.counters_at(now, 3600, lambda window, at: ("2026-03-01", utc(2026, 3, 2)))
    amounts = plan.pick((1, 500, 0, 1))
    assert amounts == (1, 1, 500, 1)
    assert plan.headers((10, 95, 1000, 1), amounts, admitted=True) == {
        "x-ratelimit-limit-requests": "100",  # 4 left today is tighter than 49 left this minute
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1h0m0s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "8500",
        "x-ratelimit-reset-tokens": "1m1s",
    }
    refused = plan.headers((60, 95, 1000, 1), amounts, admitted=False)
    assert refused["x-ratelimit-remaining-requests"] == "0"


def test_the_usual_plans_lines_say_what_its_headers_say() -> None:
    """`Plan.lines` fills this second's head in for a plan of one meter per metric; the others are rendered
    from `headers`. Both are the same headers, remainders below zero written as 0."""
    now = utc(2026, 3, 1, 23, 0, 0)
    plan = Plan(
        (
            meter("tokens_per_minute", "tokens", Window.MINUTE, 10_000),
            meter("requests_per_day", "requests", Window.DAY, 100),
            meter("concurrent", "concurrent", None, 4),
        )
    )
    assert plan.single is not None
    plan.counters_at(now, 3600, lambda window, at: ("2026-03-01", utc(2026, 3, 2)))
    amounts = plan.pick((1, 500, 0, 1))
    for used in [(1000, 95, 1), (9800, 99, 3), (0, 0, 0)]:
        assert plan.lines(used, amounts) == head_lines(plan.headers(used, amounts, admitted=True))
    assert b"x-ratelimit-remaining-tokens: 0\r\n" in plan.lines((9800, 99, 3), amounts)
    assert b"x-ratelimit-remaining-requests: 4\r\n" in plan.lines((1000, 95, 1), amounts)
    assert plan.pair is not None  # both metrics: the pair's path
    # one metric only: the same, through the general path
    requests = Plan(
        (meter("requests_per_day", "requests", Window.DAY, 100), meter("concurrent", "concurrent", None, 4))
    )
    requests.counters_at(now, 3600, lambda window, at: ("2026-03-01", utc(2026, 3, 2)))
    assert requests.single is not None and requests.pair is None
    for used in [(95, 1), (100, 3), (0, 0)]:
        expected = head_lines(requests.headers(used, requests.pick((1, 500, 0, 1)), admitted=True))
        assert requests.lines(used, requests.pick((1, 500, 0, 1))) == expected
    assert b"x-ratelimit-remaining-requests: 4\r\n" in requests.lines((95, 1), requests.pick((1, 500, 0, 1)))
    # a plan without request or token meters has no lines
    slots = Plan((meter("concurrent", "concurrent", None, 4),))
    slots.counters_at(now, 3600, lambda window, at: ("2026-03-01", utc(2026, 3, 2)))
    assert slots.lines((1,), slots.pick((1, 500, 0, 1))) == b""


def test_a_refusal_names_its_limit_and_tells_the_sdk_whether_to_wait() -> None:
    now = 1_000.25
    rpm = Counter("a", Kind.SLIDING, bucket(now), 2)
    error = refusal("teaching", meter("requests_per_minute", "requests", Window.MINUTE, 2), rpm, 1,
                    Verdict((2,), 0, retry_after=12.75), now)  # fmt: skip
    assert (error.status, error.code, error.type) == (429, "rate_limit_exceeded", "rate_limit_error")
    assert "default.requests_per_minute" in error.message and "'teaching'" in error.message
    assert error.headers == {"Retry-After": "13", "retry-after-ms": "12750", "x-should-retry": "true"}

    budget = Counter("b", Kind.CALENDAR, int(now + 86_000), 5 * MICRO)
    spent = refusal("teaching", meter("cost_per_month_usd", "cost", Window.MONTH, 5 * MICRO), budget, 0,
                    Verdict((5 * MICRO,), 0), now)  # fmt: skip
    assert (spent.code, spent.type) == ("insufficient_quota", "insufficient_quota")
    assert spent.headers and spent.headers["x-should-retry"] == "false"
    assert spent.headers["Retry-After"] == "86000"

    huge = Counter("c", Kind.SLIDING, bucket(now), 100)
    never = refusal(
        "k", meter("tokens_per_minute", "tokens", Window.MINUTE, 100), huge, 500, Verdict((0,), 0), now
    )
    assert never.headers == {"x-should-retry": "false"}
    assert "more than the limit allows" in never.message


def test_usage_objects_of_either_dialect_are_read() -> None:
    assert usage_tokens({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}) == (3, 4, 7)
    assert usage_tokens({"input_tokens": 10, "output_tokens": 2}) == (10, 2, 12)
    assert usage_tokens({"prompt_tokens": 5}) == (5, 0, 5)
    assert usage_tokens({"cost": 0.1}) is None
    assert usage_tokens(None) is None
    assert usage_tokens({"prompt_tokens": "many", "completion_tokens": True}) is None


# ---------------------------------------------------------------------------------------------- config
def test_the_issues_example_parses() -> None:
    raw = {
        "default": {"requests_per_minute": 60, "tokens_per_minute": 200000, "concurrent": 8},
        "keys": {
            "teaching": {"requests_per_minute": 20, "tokens_per_day": 2000000, "cost_per_month_usd": 5},
            "geo-agent": {"tokens_per_day": 50000000, "cost_per_day_usd": 20},
        },
        "models": {"anthropic/": {"cost_per_day_usd": 10}},
    }
    problems: list[str] = []
    settings = parse_limits(raw, problems)
    assert problems == []
    assert settings.enabled and settings.store == "memory" and settings.on_store_error == "allow"
    assert settings.default is not None and settings.default.concurrent == 8
    teaching = {lim.name: (lim.metric, lim.window, lim.amount) for lim in settings.keys["teaching"].limits}
    assert teaching["cost_per_month_usd"] == ("cost", Window.MONTH, 5 * MICRO)
    assert teaching["tokens_per_day"] == ("tokens", Window.DAY, 2_000_000)
    assert not LimitSettings().enabled


def test_every_problem_in_the_section_is_one_line() -> None:
    raw = {
        "providers": {},
        "limits": {
            "store": "postgres",
            "on_store_error": "maybe",
            "store_timeout_s": 30,
            "redis_url": "valkey:6379",
            "default": {"tokens_per_dya": 5, "concurrent": 0, "requests_per_minute": -1},
            "keys": {"teaching": {"cost_per_month_usd": "five"}},
            "models": ["anthropic/"],
            "budgets": {},
        },
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert sorted(caught.value.problems) == sorted(
        [
            "limits.store: must be memory or redis, not 'postgres'",
            "limits.on_store_error: must be allow or deny, not 'maybe'",
            "limits.store_timeout_s: must be a number of seconds above 0, at most 5, not 30",
            "limits.redis_url: must be a URL such as redis://host:6379/0, not 'valkey:6379'",
            "limits.default.tokens_per_dya: unknown limit (did you mean 'tokens_per_day'?)",
            "limits.default.concurrent: must be a whole number above 0, not 0",
            "limits.default.requests_per_minute: must be a whole number >= 0, not -1",
            "limits.keys.teaching.cost_per_month_usd: must be a number of USD >= 0, not 'five'",
            "limits.models: must be a mapping of names to limits, not ['anthropic/']",
            "limits.budgets: unknown setting",
        ]
    )


# ---------------------------------------------------------------------------------------------- RESP
def test_commands_are_arrays_of_bulk_strings() -> None:
    assert (
        pack("EVALSHA", "ab", 2, b"k\r\n") == b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$3\r\nk\r\n\r\n"
    )
    # arguments written as one text (ASCII) or each encoded apart (not): the same bytes, lengths in bytes
    assert head(2) + bulks("GET", 42) == pack("GET", 42)
    assert (
        head(3) + bulks("SET", "clé", 7)
        == pack("SET", "clé", 7)
        == b"*3\r\n$3\r\nSET\r\n$4\r\ncl\xc3\xa9\r\n$1\r\n7\r\n"
    )


def test_replies_are_read_whole_or_not_at_all() -> None:
    reply = b"*3\r\n:0\r\n:-1\r\n*2\r\n$3\r\nabc\r\n$-1\r\n+OK\r\n"
    first = _parse(reply, 0)
    assert first is not None and first[0] == [0, -1, [b"abc", None]]
    assert _parse(reply, first[1]) == ("OK", len(reply))
    for cut in range(1, first[1]):  # every prefix of a reply is incomplete, not wrong
        assert _parse(reply[:cut], 0) is None
    error, _ = _parse(b"-NOSCRIPT No matching script\r\n", 0) or (None, 0)
    assert isinstance(error, ReplyError) and str(error).startswith("NOSCRIPT")
