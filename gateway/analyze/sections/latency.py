"""Latency of successful calls: p50/p90/p99/max of total latency and of time to first token."""

from __future__ import annotations

import itertools

import duckdb

from gateway.analyze.model import Chart, Section, Series, query_table, row_facts
from gateway.analyze.sections.common import SUCCESSFUL, Context

EDGES_MS = [500, 1000, 2000, 5000, 10000, 30000, 60000]
HISTOGRAM_MODELS = 6  # more series than this make the grouped bars unreadable


def _quantiles(column: str) -> str:
    return ", ".join(f"quantile_cont({column}, {q})" for q in (0.5, 0.9, 0.99)) + f", max({column})"


STATS = f"count(latency_ms), {_quantiles('latency_ms')}, count(ttft_ms), {_quantiles('ttft_ms')}"
COLUMNS = (
    "calls:int, latency_p50:ms, latency_p90:ms, latency_p99:ms, latency_max:ms, streams:int, "
    "ttft_p50:ms, ttft_p90:ms, ttft_p99:ms, ttft_max:ms"
)


def build(con: duckdb.DuckDBPyConnection, context: Context) -> Section:
    """Overall and per model, with the distributions of the busiest models as charts."""
    overall = query_table(
        con, "overall", "All models", COLUMNS, f"SELECT {STATS} FROM calls WHERE {SUCCESSFUL}"
    )
    per_model = query_table(
        con,
        "per_model",
        "By model",
        f"model, {COLUMNS}",
        f"SELECT model, {STATS} FROM calls WHERE {SUCCESSFUL} GROUP BY model ORDER BY 2 DESC, 1 LIMIT $limit",
        {"limit": context.limit},
    )
    models = [str(r[0]) for r in per_model.rows[:HISTOGRAM_MODELS] if r[0] is not None]
    charts = [
        histogram(con, "latency_histogram", "Latency distribution", "latency_ms", models),
        histogram(con, "ttft_histogram", "Time to first token distribution", "ttft_ms", models),
    ]
    facts = [f for f in row_facts(overall) if f.key != "streams"]
    note = "successful: a response with an HTTP status below 400; ttft is measured on streams only."
    return Section("latency", "Latency of successful calls", facts, [per_model], charts, [note])


def histogram(con: duckdb.DuckDBPyConnection, key: str, title: str, column: str, models: list[str]) -> Chart:
    """Calls per latency bucket, one series per model."""
    labels = [f"< {EDGES_MS[0] / 1000:g} s"]
    labels += [f"{a / 1000:g}-{b / 1000:g} s" for a, b in itertools.pairwise(EDGES_MS)]
    labels.append(f">= {EDGES_MS[-1] / 1000:g} s")
    bucket = "CASE " + " ".join(f"WHEN {column} < {edge} THEN {i}" for i, edge in enumerate(EDGES_MS))
    bucket += f" ELSE {len(EDGES_MS)} END"
    rows = con.execute(
        f"SELECT model, {bucket}, count(*) FROM calls WHERE {SUCCESSFUL} AND {column} IS NOT NULL "
        "AND list_contains($models, model) GROUP BY ALL",
        {"models": models},
    ).fetchall()
    counts = {m: [0.0] * len(labels) for m in models}
    for model, index, n in rows:
        counts[model][index] = float(n)
    return Chart(key, title, "histogram", labels, [Series(m, counts[m]) for m in models if any(counts[m])])
