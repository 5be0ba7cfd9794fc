"""One row per call: a request record joined to its response record by `request_id`, filtered and priced.

A call missing its response was left unanswered (the gateway stopped mid-call); one missing its request
started before the window or in a chunk that was lost. Filters apply to the call, so both records of a
call are kept or dropped together. A call's model and provider are the ones that answered (the response
record's, which differ from the request's when a fallback answered), else the ones asked for.

The gateway writes each record once and sources are deduplicated by path, so records are not
deduplicated again here (that would cost a sort of every record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb

from gateway.analyze.sources import Window
from gateway.prices import PriceTable

CALLS_SQL = """
CREATE OR REPLACE TABLE calls AS
WITH rq AS (SELECT * FROM records WHERE type = 'request'),
rs AS (SELECT * FROM records WHERE type = 'response'),
joined AS (
    SELECT
        coalesce(rq.request_id, rs.request_id) AS request_id,
        coalesce(rq.ts, rs.ts) AS ts, rs.ts AS answered_at,
        coalesce(rq.session_id, rs.session_id) AS session_id,
        coalesce(rq.key_name, rs.key_name) AS key_name, coalesce(rs.provider, rq.provider) AS provider,
        coalesce(rs.model, rq.model) AS model, coalesce(rq.origin, rs.origin) AS origin, rq.tools_count,
        coalesce(rq.endpoint, rs.endpoint) AS endpoint,
        rq.question, coalesce(rq.tool_results, []) AS tool_results,
        rs.status, rs.latency_ms, rs.ttft_ms, coalesce(rs.has_tool_calls, false) AS has_tool_calls,
        coalesce(rs.tool_names, []) AS tool_names,
        rs.prompt_tokens, rs.completion_tokens, rs.total_tokens, rs.reasoning_tokens, rs.cached_tokens,
        CASE WHEN rs.cost_source = 'provider' OR (rs.cost_source IS NULL AND rs.cost IS NOT NULL) THEN rs.cost
             ELSE rs.usage_cost END AS cost_reported,
        CASE WHEN rs.cost_source = 'price_table' THEN rs.cost END AS cost_logged_estimate,
        rs.error, coalesce(rs.client_disconnected, false) OR rs.status = 499 AS disconnected,
        least(greatest(coalesce(rs.cached_tokens, 0), 0), coalesce(rs.prompt_tokens, 0)) AS cached_clamped,
        rq.request_id IS NOT NULL OR rq.ts IS NOT NULL AS has_request,
        rs.request_id IS NOT NULL OR rs.ts IS NOT NULL AS has_response
    FROM rq FULL OUTER JOIN rs ON rq.request_id = rs.request_id
)
SELECT j.* EXCLUDE (cost_logged_estimate, cached_clamped),
    CAST(j.ts AS DATE) AS day,
    NOT j.has_response OR j.status >= 400 AS failed,
    CASE WHEN j.cost_reported IS NULL THEN coalesce(
        CASE WHEN j.prompt_tokens IS NOT NULL OR j.completion_tokens IS NOT NULL THEN
            ((coalesce(j.prompt_tokens, 0) - j.cached_clamped) * p.prompt + j.cached_clamped * p.cached
             + coalesce(j.completion_tokens, 0) * p.completion) / 1e6 END,
        j.cost_logged_estimate) END AS cost_estimated
FROM joined j LEFT JOIN prices p ON p.model = j.model
WHERE {where}
"""


@dataclass(frozen=True)
class Filters:
    """Which calls to keep: a time window; origins, models and key names (globs; `none`: unset)."""

    window: Window = field(default_factory=Window)
    origins: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    key_names: tuple[str, ...] = ()

    def sql(self) -> tuple[str, dict[str, Any]]:
        """A WHERE clause over the joined call, and its parameters."""
        clauses, params = ["TRUE"], {}
        if self.window.since is not None:
            clauses.append("j.ts >= $since")
            params["since"] = self.window.since
        if self.window.until is not None:
            clauses.append("j.ts < $until")
            params["until"] = self.window.until
        for column, patterns in (
            ("origin", self.origins),
            ("model", self.models),
            ("key_name", self.key_names),
        ):
            if patterns:
                clauses.append(_match(column, patterns, params))
        return " AND ".join(clauses), params

    def describe(self) -> str:
        """The filters in words."""
        parts = [self.window.describe()]
        for name, values in (("origin", self.origins), ("model", self.models), ("key name", self.key_names)):
            if values:
                parts.append(f"{name} {' or '.join(values)}")
        return ", ".join(parts)


def _match(column: str, patterns: tuple[str, ...], params: dict[str, Any]) -> str:
    options = []
    for pattern in patterns:
        if pattern.lower() == "none":
            options.append(f"j.{column} IS NULL")
        else:
            name = f"p{len(params)}"
            params[name] = pattern
            options.append(f"j.{column} GLOB ${name}")
    return "(" + " OR ".join(options) + ")"


def build_calls(con: duckdb.DuckDBPyConnection, prices: PriceTable, filters: Filters) -> int:
    """Create the `calls` table from `records`; return how many calls it holds."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE prices (model VARCHAR, prompt DOUBLE, completion DOUBLE, cached DOUBLE)"
    )
    models = [
        row[0] for row in con.execute("SELECT DISTINCT model FROM records WHERE model IS NOT NULL").fetchall()
    ]
    rows = []
    for model in models:
        price = prices.lookup(model)
        if price is not None:
            cached = price.prompt if price.cached_prompt is None else price.cached_prompt
            rows.append((model, price.prompt, price.completion, cached))
    if rows:
        con.executemany("INSERT INTO prices VALUES (?, ?, ?, ?)", rows)
    where, params = filters.sql()
    con.execute(CALLS_SQL.format(where=where), params)
    row = con.execute("SELECT count(*) FROM calls").fetchone()
    return int(row[0]) if row else 0
