"""Models and providers: calls, share and errors by provider, model, API and origin (the app calling)."""

from __future__ import annotations

import duckdb

from gateway.analyze.model import Section, query_table, table_chart
from gateway.analyze.sections.common import COUNT_COLUMNS, COUNTS, Context

ORIGINS_SQL = f"""
WITH per_model AS (SELECT origin, model, count(*) AS n FROM calls GROUP BY ALL),
top AS (SELECT origin, first(model ORDER BY n DESC, model) AS model FROM per_model GROUP BY 1)
SELECT c.origin, {COUNTS}, count(DISTINCT c.session_id), any_value(top.model)
FROM calls c LEFT JOIN top ON c.origin IS NOT DISTINCT FROM top.origin
GROUP BY c.origin ORDER BY 2 DESC, 1 LIMIT $limit
"""


def build(con: duckdb.DuckDBPyConnection, context: Context) -> Section:
    """Calls, share and errors by provider, by model, by API, by origin, and by origin and model."""
    limit = {"limit": context.limit}
    group = f"SELECT {{keys}}, {COUNTS} FROM calls GROUP BY ALL ORDER BY {{order}} LIMIT $limit"
    tables = [
        query_table(
            con,
            "providers",
            "By provider",
            f"provider, {COUNT_COLUMNS}",
            group.format(keys="provider", order="2 DESC, 1"),
            limit,
        ),
        query_table(
            con,
            "models",
            "By model",
            f"provider, model, {COUNT_COLUMNS}",
            group.format(keys="provider, model", order="3 DESC, 2, 1"),
            limit,
        ),
        query_table(
            con,
            "endpoints",
            "By API (chat completions, Responses, Messages, ...)",
            f"endpoint, {COUNT_COLUMNS}",
            group.format(keys="endpoint", order="2 DESC, 1"),
            limit,
        ),
        query_table(
            con,
            "origins",
            "By origin (app)",
            f"origin, {COUNT_COLUMNS}, sessions:int, top_model",
            ORIGINS_SQL,
            limit,
        ),
        query_table(
            con,
            "origin_models",
            "Origin and model",
            f"origin, model, {COUNT_COLUMNS}",
            group.format(keys="origin, model", order="3 DESC, 1, 2"),
            limit,
        ),
    ]
    chart = table_chart(
        tables[1], "calls_by_model", "Calls by model", "bars", "model", {"calls": "calls", "failed": "failed"}
    )
    note = "failed: an HTTP status of 400 or more (client disconnects included), or no response at all."
    return Section("models", "Models and providers", [], tables, [chart], [note])
