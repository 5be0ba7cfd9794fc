"""Report sections on volume: calls over time, models and providers, latency, tokens and cost."""

from __future__ import annotations

import itertools

import duckdb

from gateway.analyze.model import Chart, Column, Section, Series, label, query_facts, query_table, row_facts

C = Column
LATENCY_EDGES_MS = [500, 1000, 2000, 5000, 10000, 30000, 60000]
MAX_DAYS_FILLED = 400  # beyond this span, a stray timestamp would fill the chart with empty days


def time_section(con: duckdb.DuckDBPyConnection, limit: int) -> Section:
    """Total calls, first and last record, days sampled, busiest day, calls per day and a per-day chart."""
    section = Section("time", "Calls over time")
    section.facts = query_facts(
        con,
        [
            ("calls", "calls", "int"),
            ("first_record", "first record", "time"),
            ("last_record", "last record", "time"),
            ("days_sampled", "days with calls", "int"),
            ("days_spanned", "days spanned", "int"),
            ("busiest_day", "busiest day", "text"),
            ("busiest_day_calls", "calls on the busiest day", "int"),
            ("calls_per_day", "calls per day (days with calls)", "float"),
            ("sessions", "sessions", "int"),
        ],
        """
        WITH busiest AS (SELECT day, count(*) AS n FROM calls GROUP BY day ORDER BY n DESC, day LIMIT 1)
        SELECT count(*), min(ts), max(coalesce(answered_at, ts)), count(DISTINCT day),
               date_diff('day', min(day), max(day)) + 1,
               (SELECT CAST(day AS VARCHAR) FROM busiest), (SELECT n FROM busiest),
               count(*) / nullif(count(DISTINCT day), 0), count(DISTINCT session_id)
        FROM calls""",
    )
    days = query_table(
        con,
        "per_day",
        "Calls per day",
        [
            C("day", "day"),
            C("calls", "calls", "int"),
            C("failed", "failed", "int"),
            C("sessions", "sessions", "int"),
        ],
        f"""
        WITH span AS (SELECT min(day) AS lo, max(day) AS hi FROM calls),
        axis AS (
            SELECT CAST(d AS DATE) AS day FROM span, generate_series(lo, hi, INTERVAL 1 DAY) AS g(d)
            WHERE date_diff('day', lo, hi) < {MAX_DAYS_FILLED}
            UNION SELECT DISTINCT day FROM calls)
        SELECT CAST(a.day AS VARCHAR), count(c.day), count(*) FILTER (WHERE c.failed),
               count(DISTINCT c.session_id)
        FROM axis a LEFT JOIN calls c ON c.day = a.day
        WHERE a.day IS NOT NULL GROUP BY a.day ORDER BY a.day""",
    )
    section.tables = [days]
    labels = [str(row[0]) for row in days.rows]
    section.charts = [
        Chart(
            "calls_per_day",
            "Calls per day",
            "columns",
            labels,
            [
                Series("calls", [float(row[1] or 0) for row in days.rows]),
                Series("failed", [float(row[2] or 0) for row in days.rows]),
            ],
        )
    ]
    return section


def models_section(con: duckdb.DuckDBPyConnection, limit: int) -> Section:
    """Calls, share and errors by provider, by model and by origin (the app calling)."""
    section = Section("models", "Models and providers")
    share = "count(*) / (SELECT count(*) FROM calls)"
    common = [
        C("calls", "calls", "int"),
        C("share", "share", "pct"),
        C("failed", "failed", "int"),
        C("error_rate", "error rate", "pct"),
    ]
    counts = f"count(*), {share}, count(*) FILTER (WHERE failed), avg(CAST(failed AS INT))"
    section.tables = [
        query_table(
            con,
            "providers",
            "By provider",
            [C("provider", "provider"), *common],
            f"SELECT provider, {counts} FROM calls GROUP BY ALL ORDER BY 2 DESC, 1",
        ),
        query_table(
            con,
            "models",
            "By model",
            [C("provider", "provider"), C("model", "model"), *common],
            f"SELECT provider, model, {counts} FROM calls GROUP BY ALL ORDER BY 3 DESC, 2, 1 LIMIT {limit}",
        ),
        query_table(
            con,
            "origins",
            "By origin (app)",
            [
                C("origin", "origin"),
                *common,
                C("sessions", "sessions", "int"),
                C("top_model", "top model"),
            ],
            f"""WITH per_model AS (SELECT origin, model, count(*) AS n FROM calls GROUP BY ALL),
                top AS (SELECT origin, first(model ORDER BY n DESC, model) AS model FROM per_model GROUP BY 1)
            SELECT c.origin, {counts}, count(DISTINCT c.session_id), any_value(top.model)
            FROM calls c LEFT JOIN top ON c.origin IS NOT DISTINCT FROM top.origin
            GROUP BY c.origin ORDER BY 2 DESC, 1 LIMIT {limit}""",
        ),
        query_table(
            con,
            "origin_models",
            "Origin and model",
            [C("origin", "origin"), C("model", "model"), *common],
            f"SELECT origin, model, {counts} FROM calls GROUP BY ALL ORDER BY 3 DESC, 1, 2 LIMIT {limit}",
        ),
    ]
    models = section.tables[1]
    section.charts = [
        Chart(
            "calls_by_model",
            "Calls by model",
            "bars",
            [label(r[1]) for r in models.rows],
            [
                Series("calls", [float(r[2] or 0) for r in models.rows]),
                Series("failed", [float(r[4] or 0) for r in models.rows]),
            ],
        )
    ]
    section.notes = [
        "failed: an HTTP status of 400 or more (client disconnects included), or no response at all."
    ]
    return section


def _quantiles(column: str) -> str:
    return ", ".join(f"quantile_cont({column}, {q})" for q in (0.5, 0.9, 0.99)) + f", max({column})"


def latency_section(con: duckdb.DuckDBPyConnection, limit: int) -> Section:
    """p50/p90/p99/max of total latency and of time to first token, overall and per model."""
    section = Section("latency", "Latency of successful calls")
    ok = "has_response AND status < 400"
    columns = [
        C("calls", "calls", "int"),
        *(C(f"latency_{q}", f"latency {q}", "ms") for q in ("p50", "p90", "p99")),
        C("latency_max", "latency max", "ms"),
        C("streams", "streams", "int"),
        *(C(f"ttft_{q}", f"ttft {q}", "ms") for q in ("p50", "p90", "p99")),
        C("ttft_max", "ttft max", "ms"),
    ]
    body = f"count(latency_ms), {_quantiles('latency_ms')}, count(ttft_ms), {_quantiles('ttft_ms')}"
    overall = query_table(con, "overall", "All models", columns, f"SELECT {body} FROM calls WHERE {ok}")
    section.facts = [f for f in row_facts(overall) if f.key != "streams"]
    per_model = query_table(
        con,
        "per_model",
        "By model",
        [C("model", "model"), *columns],
        f"SELECT model, {body} FROM calls WHERE {ok} GROUP BY model ORDER BY 2 DESC, 1 LIMIT {limit}",
    )
    section.tables = [per_model]
    models = [str(r[0]) for r in per_model.rows[:6] if r[0] is not None]
    section.charts = [
        _histogram(con, "latency_histogram", "Latency distribution", "latency_ms", models, ok),
        _histogram(con, "ttft_histogram", "Time to first token distribution", "ttft_ms", models, ok),
    ]
    section.notes = [
        "successful: a response with an HTTP status below 400; ttft is measured on streams only."
    ]
    return section


def _histogram(
    con: duckdb.DuckDBPyConnection, key: str, title: str, column: str, models: list[str], ok: str
) -> Chart:
    edges = LATENCY_EDGES_MS
    labels = [f"< {edges[0] / 1000:g} s"] + [
        f"{a / 1000:g}-{b / 1000:g} s" for a, b in itertools.pairwise(edges)
    ]
    labels.append(f">= {edges[-1] / 1000:g} s")
    bucket = "CASE " + " ".join(f"WHEN {column} < {edge} THEN {i}" for i, edge in enumerate(edges))
    bucket += f" ELSE {len(edges)} END"
    rows = con.execute(
        f"SELECT model, {bucket} AS b, count(*) FROM calls WHERE {ok} AND {column} IS NOT NULL "
        f"AND list_contains($models, model) GROUP BY ALL",
        {"models": models},
    ).fetchall()
    counts = {m: [0.0] * len(labels) for m in models}
    for model, index, n in rows:
        counts[model][index] = float(n)
    series = [Series(m, counts[m]) for m in models if any(counts[m])]
    return Chart(key, title, "histogram", labels, series)


def cost_section(con: duckdb.DuckDBPyConnection, limit: int, price_source: str) -> Section:
    """Prompt, completion, reasoning and cached tokens; reported and estimated cost, by model and origin."""
    section = Section("cost", "Tokens and cost")
    sums = (
        "sum(prompt_tokens), sum(completion_tokens), sum(reasoning_tokens), sum(cached_tokens), "
        "sum(cost_reported), sum(cost_estimated), sum(coalesce(cost_reported, cost_estimated))"
    )
    section.facts = query_facts(
        con,
        [
            ("calls_with_usage", "calls with token usage", "int"),
            ("prompt_tokens", "prompt tokens", "int"),
            ("completion_tokens", "completion tokens", "int"),
            ("reasoning_tokens", "reasoning tokens", "int"),
            ("cached_tokens", "cached prompt tokens", "int"),
            ("cost_reported", "cost reported by providers", "usd"),
            ("cost_estimated", "cost estimated from the price table", "usd"),
            ("cost_total", "cost in all", "usd"),
            ("calls_cost_reported", "calls with reported cost", "int"),
            ("calls_cost_estimated", "calls with estimated cost", "int"),
            ("calls_unpriced", "calls with usage but no price", "int"),
        ],
        f"""SELECT count(*) FILTER (WHERE prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL), {sums},
        count(cost_reported), count(cost_estimated),
        count(*) FILTER (WHERE (prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL)
                         AND cost_reported IS NULL AND cost_estimated IS NULL)
        FROM calls""",
    )
    token_cols = [
        C("prompt_tokens", "prompt", "int"),
        C("completion_tokens", "completion", "int"),
        C("reasoning_tokens", "reasoning", "int"),
        C("cached_tokens", "cached", "int"),
        C("cost_reported", "reported $", "usd"),
        C("cost_estimated", "estimated $", "usd"),
        C("cost_total", "total $", "usd"),
    ]
    per_model = query_table(
        con,
        "per_model",
        "By model",
        [
            C("provider", "provider"),
            C("model", "model"),
            C("calls", "calls", "int"),
            *token_cols,
            C("unpriced", "unpriced calls", "int"),
        ],
        f"""SELECT provider, model, count(*), {sums},
                   count(*) FILTER (WHERE (prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL)
                                    AND cost_reported IS NULL AND cost_estimated IS NULL)
            FROM calls GROUP BY ALL ORDER BY 10 DESC NULLS LAST, 3 DESC, 2, 1 LIMIT {limit}""",
    )
    per_origin = query_table(
        con,
        "per_origin",
        "By origin",
        [C("origin", "origin"), C("calls", "calls", "int"), *token_cols],
        f"SELECT origin, count(*), {sums} FROM calls GROUP BY ALL "
        f"ORDER BY 9 DESC NULLS LAST, 2 DESC, 1 LIMIT {limit}",
    )
    section.tables = [per_model, per_origin]
    priced = [r for r in per_model.rows if r[9]]
    section.charts = [
        Chart(
            "cost_by_model",
            "Cost by model (USD)",
            "bars",
            [label(r[1]) for r in priced],
            [
                Series("reported", [float(r[7] or 0) for r in priced]),
                Series("estimated", [float(r[8] or 0) for r in priced]),
            ],
            fmt="usd",
            stacked=True,
        )
    ]
    section.notes = [
        f"estimated: from the price table {price_source or '(none found)'} where the provider "
        "reported no cost; else the gateway's own price-table figure, if it logged one."
    ]
    return section
