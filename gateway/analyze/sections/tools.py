"""Tools: calls per tool, tool results that look like failures, the share of turns that used tools."""

from __future__ import annotations

import duckdb

from gateway.analyze.model import Section, query_facts, query_table, table_chart
from gateway.analyze.sections.common import SUCCESSFUL, Context

FACTS = (
    "turns:int=answered turns, turns_with_tools:int=turns that called tools, "
    "share_with_tools:pct=share of turns that called tools, "
    "turns_offering_tools:int=turns offering tools to the model, "
    "tool_calls:int=tool calls, tool_results:int=tool results sent back, "
    "failed_results:int=tool results that look like failures, "
    "failed_share:pct=share of tool results that look like failures"
)
FAILED = "len(list_filter(tool_results, lambda r: r.failed))"
FACTS_SQL = f"""
SELECT count(*) FILTER (WHERE ok), count(*) FILTER (WHERE ok AND used),
       count(*) FILTER (WHERE ok AND used) / nullif(count(*) FILTER (WHERE ok), 0),
       count(*) FILTER (WHERE tools_count > 0), sum(len(tool_names)), sum(len(tool_results)),
       sum({FAILED}), sum({FAILED}) / nullif(sum(len(tool_results)), 0)
FROM (SELECT *, {SUCCESSFUL} AS ok, has_tool_calls OR len(tool_names) > 0 AS used FROM calls)
"""
PER_TOOL_SQL = """
WITH called AS (SELECT unnest(tool_names) AS tool FROM calls),
results AS (SELECT unnest(tool_results) AS r FROM calls),
c AS (SELECT tool, count(*) AS n FROM called GROUP BY tool),
r AS (SELECT r.name AS tool, count(*) AS n, count(*) FILTER (WHERE r.failed) AS failed
      FROM results GROUP BY 1)
SELECT coalesce(c.tool, r.tool), coalesce(c.n, 0),
       coalesce(c.n, 0) / nullif((SELECT count(*) FROM called), 0),
       coalesce(r.n, 0), coalesce(r.failed, 0), r.failed / nullif(r.n, 0)
FROM c FULL OUTER JOIN r ON c.tool = r.tool ORDER BY 2 DESC, 4 DESC, 1 LIMIT $limit
"""
NOTE = (
    "a result looks like a failure when it starts with an error word (error, exception, traceback, failed), "
    "carries an error field, or is an MCP or tool error."
)


def build(con: duckdb.DuckDBPyConnection, context: Context) -> Section:
    """Tool use overall and per tool."""
    per_tool = query_table(
        con,
        "per_tool",
        "By tool",
        "tool, calls:int, share:pct=share of calls, results:int, failed:int=failed results, failure_rate:pct",
        PER_TOOL_SQL,
        {"limit": context.limit},
    )
    chart = table_chart(
        per_tool,
        "tool_usage",
        "Tool calls and failed results",
        "bars",
        "tool",
        {"calls": "calls", "failed results": "failed"},
    )
    return Section("tools", "Tools", query_facts(con, FACTS, FACTS_SQL), [per_tool], [chart], [NOTE])
