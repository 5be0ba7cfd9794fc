"""The log report's numbers computed a second way, in plain Python over the raw JSONL lines.

Nothing here shares code with `gateway.analyze`: the records are read with `json`, joined with dicts and
counted with loops, so a mistake in the analyzer's SQL cannot hide behind the same mistake here.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

PRICES = Path(__file__).resolve().parents[1] / "gateway" / "prices.yaml"


@dataclass
class Raw:
    """Every line of every chunk under a folder."""

    records: list[dict[str, Any]] = field(default_factory=list)
    lines: int = 0
    bad: int = 0
    files: int = 0


def read_folder(root: Path) -> Raw:
    """Parse every chunk under `root` line by line."""
    raw = Raw()
    for path in sorted(root.rglob("*")):
        if not path.is_file() or not path.name.endswith((".jsonl", ".jsonl.open")):
            continue
        raw.files += 1
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
            if not line.strip():
                continue
            raw.lines += 1
            try:
                record = json.loads(line)
            except ValueError:
                raw.bad += 1
                continue
            if is_record(record):
                raw.records.append(record)
            else:
                raw.bad += 1
    return raw


def is_record(value: Any) -> bool:
    """A line is a record when it is an object of a known type that names its call or its prompt."""
    return (
        isinstance(value, dict)
        and value.get("type") in ("request", "response", "system_prompt")
        and (value.get("request_id") is not None or value.get("sha256") is not None)
    )


def moment(text: str | None) -> datetime | None:
    """A record timestamp as naive UTC."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def calls_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per request id: the request record, the response record and the fields the report uses."""
    by_id: dict[str, dict[str, Any]] = defaultdict(dict)
    for record in records:
        if record["type"] in ("request", "response"):
            by_id[record.get("request_id")][record["type"]] = record
    calls = []
    for rid, pair in by_id.items():
        rq, rs = pair.get("request") or {}, pair.get("response") or {}
        call = {"request_id": rid, "rq": rq, "rs": rs, "has_request": bool(rq), "has_response": bool(rs)}
        for key in ("session_id", "key_name", "origin"):
            call[key] = rq.get(key) if rq.get(key) is not None else rs.get(key)
        for key in ("provider", "model"):  # the ones that answered, else the ones asked for
            call[key] = rs.get(key) if rs.get(key) is not None else rq.get(key)
        call["ts"] = moment(rq.get("timestamp")) or moment(rs.get("timestamp"))
        call["answered_at"] = moment(rs.get("timestamp"))
        call["status"] = rs.get("status")
        call["failed"] = not rs or (rs.get("status") or 0) >= 400
        call["ok"] = bool(rs) and (rs.get("status") or 0) < 400
        calls.append(call)
    return calls


def quantile(values: list[float], q: float) -> float | None:
    """Linear interpolation between order statistics, as DuckDB's quantile_cont."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def usage(call: dict[str, Any]) -> dict[str, Any]:
    return call["rs"].get("tokens") or {}


def reported_cost(call: dict[str, Any]) -> float | None:
    rs = call["rs"]
    if rs.get("cost") is not None and rs.get("cost_source") in ("provider", None):
        return float(rs["cost"])
    return usage(call).get("cost")


@functools.cache
def price_table() -> dict[str, Any]:
    return yaml.safe_load(PRICES.read_text())


def price_of(model: str | None) -> dict[str, float] | None:
    table = price_table()
    if model is None:
        return None
    if model in table["models"]:
        return table["models"][model]
    prefixes = [p for p in table.get("prefixes") or {} if model.startswith(p)]
    return table["prefixes"][max(prefixes, key=len)] if prefixes else None


def estimated_cost(call: dict[str, Any]) -> float | None:
    if reported_cost(call) is not None:
        return None
    tokens = usage(call)
    price = price_of(call["model"])
    if price and (tokens.get("prompt_tokens") is not None or tokens.get("completion_tokens") is not None):
        prompt = tokens.get("prompt_tokens") or 0
        cached = min(max((tokens.get("prompt_tokens_details") or {}).get("cached_tokens") or 0, 0), prompt)
        cached_price = price.get("cached_prompt", price["prompt"])
        completion = tokens.get("completion_tokens") or 0
        return (
            (prompt - cached) * price["prompt"] + cached * cached_price + completion * price["completion"]
        ) / 1e6
    if call["rs"].get("cost_source") == "price_table":
        return call["rs"].get("cost")
    return None


def total_tokens(call: dict[str, Any]) -> int | None:
    tokens = usage(call)
    if tokens.get("total_tokens") is not None:
        return int(tokens["total_tokens"])
    if tokens.get("prompt_tokens") is not None and tokens.get("completion_tokens") is not None:
        return int(tokens["prompt_tokens"] + tokens["completion_tokens"])
    return None


def tool_names(call: dict[str, Any]) -> list[str]:
    return [c.get("name") for c in call["rs"].get("tool_calls") or []]


FAILURE = re.compile(
    r"^\W*(error|exception|traceback|failed|failure|fatal)\b"
    r'|"(is_?error|error)"\s*:\s*(true|"|\{)'
    r"|\b(mcp|tool) error\b",
    re.I,
)


def tool_results(call: dict[str, Any]) -> list[tuple[str, bool]]:
    return [
        (r.get("name"), bool(FAILURE.search((r.get("content") or "")[:2000])))
        for r in call["rq"].get("tool_results_this_turn") or []
    ]


def normalized(text: str) -> str:
    return re.sub(r"[\s?!.]+$", "", " ".join(text.lower().split()))


def question(call: dict[str, Any]) -> str | None:
    rq = call["rq"]
    last = (rq.get("user_message_this_turn") or "").strip(" ")  # DuckDB's trim() strips spaces only
    text = last if last else rq.get("user_question")
    return text[:300] if text is not None else None


def sessions_of(calls: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per session id: turns, tool calls, tokens, cost, model time, wall clock, final status."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for call in calls:
        if call["session_id"] is not None:
            grouped[call["session_id"]].append(call)
    out = {}
    for sid, group in grouped.items():
        last = max(group, key=lambda c: c["ts"])
        tokens = [total_tokens(c) for c in group]
        costs = [reported_cost(c) if reported_cost(c) is not None else estimated_cost(c) for c in group]
        end = max(c["answered_at"] or c["ts"] for c in group)
        out[sid] = {
            "turns": len(group),
            "tool_calls": sum(len(tool_names(c)) for c in group),
            "tokens": sum(t for t in tokens if t is not None) if any(t is not None for t in tokens) else None,
            "cost": sum(c for c in costs if c is not None) if any(c is not None for c in costs) else None,
            "model_time_s": sum(lat) / 1000
            if (lat := [c["rs"]["latency_ms"] for c in group if c["rs"].get("latency_ms") is not None])
            else None,
            "wall_clock_s": (end - min(c["ts"] for c in group)).total_seconds(),
            "final_status": str(last["status"]) if last["has_response"] else "no response",
        }
    return out


def asks_of(calls: list[dict[str, Any]]) -> dict[tuple[str, str], datetime]:
    """(normalized question, conversation) -> when first asked."""
    asks: dict[tuple[str, str], datetime] = {}
    for call in calls:
        text = question(call) if call["has_request"] else None
        if text is None or not normalized(text):
            continue
        key = (normalized(text), call["session_id"] or call["request_id"])
        asks[key] = min(asks.get(key, call["ts"]), call["ts"])
    return asks


def counts(calls: list[dict[str, Any]], key: str) -> Counter[Any]:
    return Counter(c[key] for c in calls)


def test_quantile_matches_known_values() -> None:
    assert quantile([1, 2, 3, 4], 0.5) == 2.5
    assert quantile([10], 0.99) == 10
    assert quantile([], 0.5) is None
