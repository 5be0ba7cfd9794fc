"""Every section of a `--json` report checked against the plain-Python computation of the same records."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from pytest import approx
from test_analyze_expected import (
    Raw,
    asks_of,
    calls_of,
    counts,
    estimated_cost,
    normalized,
    quantile,
    reported_cost,
    sessions_of,
    tool_names,
    tool_results,
    usage,
)

Report = dict[str, Any]


def check_report(report: Report, raw: Raw) -> None:
    """Assert every section against values computed independently from `raw`."""
    calls = calls_of(raw.records)
    assert report["read"]["lines"] == raw.lines
    assert report["read"]["records"] == len(raw.records)
    assert report["read"]["skipped_lines"] == raw.bad
    assert report["calls"] == len(calls)
    sections = report["sections"]
    check_time(sections["time"], calls)
    check_models(sections["models"], calls)
    check_latency(sections["latency"], calls)
    check_cost(sections["cost"], calls)
    check_tools(sections["tools"], calls)
    check_errors(sections["errors"], calls)
    check_sessions(sections["sessions"], calls)
    check_questions(sections["questions"], calls)


def _iso(value: Any) -> str:
    return value.isoformat() if value is not None else None


def check_time(section: Report, calls: list[dict[str, Any]]) -> None:
    facts = section["facts"]
    per_day = Counter(c["ts"].date() for c in calls)
    busiest = min(per_day, key=lambda d: (-per_day[d], d))
    assert facts["calls"] == len(calls)
    assert facts["first_record"] == _iso(min(c["ts"] for c in calls))
    assert facts["last_record"] == _iso(max(c["answered_at"] or c["ts"] for c in calls))
    assert facts["days_sampled"] == len(per_day)
    assert facts["days_spanned"] == (max(per_day) - min(per_day)).days + 1
    assert (facts["busiest_day"], facts["busiest_day_calls"]) == (busiest.isoformat(), per_day[busiest])
    assert facts["calls_per_day"] == approx(len(calls) / len(per_day))
    assert facts["sessions"] == len({c["session_id"] for c in calls if c["session_id"] is not None})
    days = {row["day"]: row for row in section["tables"]["per_day"]}
    span = [min(per_day) + timedelta(days=i) for i in range(facts["days_spanned"])]
    assert list(days) == [d.isoformat() for d in span]
    for day in span:
        failed = sum(1 for c in calls if c["ts"].date() == day and c["failed"])
        assert (days[day.isoformat()]["calls"], days[day.isoformat()]["failed"]) == (per_day[day], failed)
    assert section["charts"]["calls_per_day"]["series"]["calls"] == [per_day[d] for d in span]


def check_models(section: Report, calls: list[dict[str, Any]]) -> None:
    total = len(calls)
    for table, keys in (
        ("providers", ("provider",)),
        ("models", ("provider", "model")),
        ("origins", ("origin",)),
    ):
        expected = Counter(tuple(c[k] for k in keys) for c in calls)
        failed = Counter(tuple(c[k] for k in keys) for c in calls if c["failed"])
        rows = section["tables"][table]
        assert {tuple(r[k] for k in keys): r["calls"] for r in rows} == dict(expected)
        for row in rows:
            key = tuple(row[k] for k in keys)
            assert row["failed"] == failed[key]
            assert row["share"] == approx(expected[key] / total)
    origins = {r["origin"]: r for r in section["tables"]["origins"]}
    for origin, row in origins.items():
        sessions = {c["session_id"] for c in calls if c["origin"] == origin and c["session_id"] is not None}
        assert row["sessions"] == len(sessions)


def _quantiles(values: list[float]) -> list[Any]:
    return [quantile(values, q) for q in (0.5, 0.9, 0.99)] + [max(values) if values else None]


def check_latency(section: Report, calls: list[dict[str, Any]]) -> None:
    ok = [c for c in calls if c["ok"]]
    latency = [c["rs"]["latency_ms"] for c in ok if c["rs"].get("latency_ms") is not None]
    ttft = [c["rs"]["ttft_ms"] for c in ok if c["rs"].get("ttft_ms") is not None]
    facts = section["facts"]
    names = ["latency_p50", "latency_p90", "latency_p99", "latency_max"]
    assert [facts[n] for n in names] == approx(_quantiles(latency))
    assert [facts[n.replace("latency", "ttft")] for n in names] == approx(_quantiles(ttft))
    for row in section["tables"]["per_model"]:
        mine = [c for c in ok if c["model"] == row["model"]]
        lat = [c["rs"]["latency_ms"] for c in mine if c["rs"].get("latency_ms") is not None]
        first = [c["rs"]["ttft_ms"] for c in mine if c["rs"].get("ttft_ms") is not None]
        assert (row["calls"], row["streams"]) == (len(lat), len(first))
        assert [row[n] for n in names] == approx(_quantiles(lat))
        assert [row[n.replace("latency", "ttft")] for n in names] == approx(_quantiles(first))


def _sum(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def check_cost(section: Report, calls: list[dict[str, Any]]) -> None:
    facts = section["facts"]
    with_usage = [
        c
        for c in calls
        if usage(c).get("prompt_tokens") is not None or usage(c).get("completion_tokens") is not None
    ]
    assert facts["calls_with_usage"] == len(with_usage)
    assert facts["prompt_tokens"] == _sum([usage(c).get("prompt_tokens") for c in calls])
    assert facts["completion_tokens"] == _sum([usage(c).get("completion_tokens") for c in calls])
    assert facts["reasoning_tokens"] == _sum(
        [(usage(c).get("completion_tokens_details") or {}).get("reasoning_tokens") for c in calls]
    )
    assert facts["cached_tokens"] == _sum(
        [(usage(c).get("prompt_tokens_details") or {}).get("cached_tokens") for c in calls]
    )
    reported = [reported_cost(c) for c in calls]
    estimated = [estimated_cost(c) for c in calls]
    assert facts["cost_reported"] == approx(_sum(reported))
    assert facts["cost_estimated"] == approx(_sum(estimated))
    assert facts["calls_cost_reported"] == sum(r is not None for r in reported)
    assert facts["calls_cost_estimated"] == sum(e is not None for e in estimated)
    unpriced = sum(1 for c in with_usage if reported_cost(c) is None and estimated_cost(c) is None)
    assert facts["calls_unpriced"] == unpriced
    for row in section["tables"]["per_model"]:
        mine = [c for c in calls if (c["provider"], c["model"]) == (row["provider"], row["model"])]
        assert row["calls"] == len(mine)
        assert row["cost_reported"] == approx(_sum([reported_cost(c) for c in mine]))
        assert row["cost_estimated"] == approx(_sum([estimated_cost(c) for c in mine]))
        mine_unpriced = [
            c for c in mine if c in with_usage and reported_cost(c) is None and estimated_cost(c) is None
        ]
        assert row["unpriced"] == len(mine_unpriced)


def check_tools(section: Report, calls: list[dict[str, Any]]) -> None:
    facts = section["facts"]
    ok = [c for c in calls if c["ok"]]
    used = [c for c in ok if c["rs"].get("has_tool_calls") or tool_names(c)]
    results = [r for c in calls for r in tool_results(c)]
    assert (facts["turns"], facts["turns_with_tools"]) == (len(ok), len(used))
    assert facts["share_with_tools"] == approx(len(used) / len(ok) if ok else None)
    assert facts["turns_offering_tools"] == sum(1 for c in calls if (c["rq"].get("tools_count") or 0) > 0)
    assert facts["tool_calls"] == sum(len(tool_names(c)) for c in calls)
    assert facts["tool_results"] == len(results)
    assert facts["failed_results"] == sum(1 for _, failed in results if failed)
    called = Counter(name for c in calls for name in tool_names(c))
    answered = Counter(name for name, _ in results)
    failed = Counter(name for name, bad in results if bad)
    rows = {r["tool"]: r for r in section["tables"]["per_tool"]}
    assert set(rows) == set(called) | set(answered)
    for name, row in rows.items():
        assert (row["calls"], row["results"], row["failed"]) == (called[name], answered[name], failed[name])


def check_errors(section: Report, calls: list[dict[str, Any]]) -> None:
    facts = section["facts"]
    status = Counter(c["status"] for c in calls if c["has_response"])
    assert facts["failed"] == sum(c["failed"] for c in calls)
    assert facts["http_errors"] == sum(n for s, n in status.items() if s is not None and s >= 400)
    assert facts["rate_limited"] == status[429]
    assert facts["client_disconnects"] == sum(
        1 for c in calls if c["rs"].get("client_disconnected") or c["status"] == 499
    )
    assert facts["server_errors"] == sum(n for s, n in status.items() if s is not None and s >= 500)
    assert facts["rejected"] == status[401] + status[403]
    assert facts["unanswered"] == sum(1 for c in calls if c["has_request"] and not c["has_response"])
    assert facts["orphan_responses"] == sum(1 for c in calls if c["has_response"] and not c["has_request"])
    by_status = {r["status"]: r["calls"] for r in section["tables"]["by_status"]}
    expected = Counter(str(c["status"]) if c["has_response"] else "no response" for c in calls if c["failed"])
    assert by_status == dict(expected)
    messages = Counter(
        (str(c["status"]) if c["has_response"] else "no response", (c["rs"].get("error") or "")[:300])
        for c in calls
        if c["failed"]
    )
    assert {(r["status"], r["error"]): r["calls"] for r in section["tables"]["by_message"]} == dict(messages)
    limited = Counter((c["provider"], c["model"]) for c in calls if c["status"] == 429)
    assert {(r["provider"], r["model"]): r["hits"] for r in section["tables"]["rate_limits"]} == dict(limited)


def check_sessions(section: Report, calls: list[dict[str, Any]]) -> None:
    expected = sessions_of(calls)
    facts = section["facts"]
    assert facts["sessions"] == len(expected)
    assert facts["calls_without_session"] == counts(calls, "session_id")[None]
    turns = [s["turns"] for s in expected.values()]
    if turns:
        assert (facts["turns_p50"], facts["turns_p90"], facts["turns_max"]) == approx(
            (quantile(turns, 0.5), quantile(turns, 0.9), max(turns))
        )
    for table in ("longest", "costliest"):
        for row in section["tables"][table]:
            mine = expected[row["session_id"]]
            for key in ("turns", "tool_calls", "tokens", "final_status"):
                assert row[key] == mine[key], (row["session_id"], key)
            for key in ("cost", "model_time_s", "wall_clock_s"):
                assert row[key] == approx(mine[key], abs=1e-3), (row["session_id"], key)
    longest = sorted(expected.values(), key=lambda s: -s["turns"])
    assert [r["turns"] for r in section["tables"]["longest"]] == [s["turns"] for s in longest][
        : len(section["tables"]["longest"])
    ]
    finals = Counter(s["final_status"] for s in expected.values())
    assert {r["final_status"]: r["sessions"] for r in section["tables"]["final_status"]} == dict(finals)


def check_questions(section: Report, calls: list[dict[str, Any]]) -> None:
    asks = asks_of(calls)
    per_question = Counter(norm for norm, _ in asks)
    facts = section["facts"]
    assert facts["questions"] == (len(asks) or None)
    assert facts["distinct"] == len(per_question)
    assert facts["asked_more_than_once"] == sum(1 for n in per_question.values() if n > 1)
    assert facts["repeats"] == (len(asks) - len(per_question) if asks else None)
    top = section["tables"]["top"]
    assert all(per_question[normalized(r["question"])] == r["asked"] for r in top)
    assert [r["asked"] for r in top] == sorted(per_question.values(), reverse=True)[: len(top)]
    recent = section["tables"]["recent"]
    latest = sorted(asks.values(), reverse=True)[: len(recent)]
    assert [r["asked_at"] for r in recent] == [t.isoformat() for t in latest]
