"""Sessions: per session_id turns, tool calls, tokens, cost, model time, wall-clock time, final status."""

from __future__ import annotations

import duckdb

from gateway.analyze.model import Section, query_facts, query_table
from gateway.analyze.sections.common import Context

SESSIONS_SQL = """
CREATE OR REPLACE TEMP TABLE sessions AS
SELECT session_id, count(*) AS turns, sum(len(tool_names)) AS tool_calls,
       sum(coalesce(total_tokens, prompt_tokens + completion_tokens)) AS tokens,
       sum(coalesce(cost_reported, cost_estimated)) AS cost, sum(latency_ms) / 1000 AS model_time_s,
       date_diff('millisecond', min(ts), max(coalesce(answered_at, ts))) / 1000 AS wall_clock_s,
       arg_max(CASE WHEN has_response THEN CAST(status AS VARCHAR) ELSE 'no response' END, ts)
           AS final_status,
       arg_max(failed, ts) AS ended_failed,
       min(ts) AS started, arg_min(origin, ts) AS origin, arg_min(model, ts) AS model
FROM calls WHERE session_id IS NOT NULL GROUP BY session_id
"""
FACTS = (
    "sessions:int, calls_without_session:int=calls without a session id, "
    "turns_p50:float=median turns per session, turns_p90:float=p90 turns per session, "
    "turns_max:int=most turns in a session, wall_clock_p50_s:float=median wall-clock seconds, "
    "tool_calls_mean:float=mean tool calls per session, ended_failed:int=sessions whose last call failed"
)
FACTS_SQL = """
SELECT count(*), (SELECT count(*) FROM calls WHERE session_id IS NULL),
       quantile_cont(turns, 0.5), quantile_cont(turns, 0.9), max(turns), quantile_cont(wall_clock_s, 0.5),
       avg(tool_calls), count(*) FILTER (WHERE ended_failed)
FROM sessions
"""
COLUMNS = (
    "session_id=session, origin, model, started:time, turns:int, tool_calls:int, tokens:int, cost:usd, "
    "model_time_s:float=model s, wall_clock_s:float=wall-clock s, final_status"
)
SELECT = (
    "SELECT session_id, origin, model, started, turns, tool_calls, tokens, cost, model_time_s, wall_clock_s, "
    "final_status FROM sessions"
)
FINAL_SQL = """
SELECT final_status, count(*), count(*) / (SELECT count(*) FROM sessions)
FROM sessions GROUP BY 1 ORDER BY 2 DESC, 1
"""


def build(con: duckdb.DuckDBPyConnection, context: Context) -> Section:
    """Session counts, the longest and the costliest sessions, and how sessions ended."""
    con.execute(SESSIONS_SQL)
    limit = {"limit": context.limit}
    tables = [
        query_table(
            con,
            "longest",
            "Longest sessions",
            COLUMNS,
            f"{SELECT} ORDER BY turns DESC, started DESC, session_id LIMIT $limit",
            limit,
        ),
        query_table(
            con,
            "costliest",
            "Costliest sessions",
            COLUMNS,
            f"{SELECT} WHERE cost > 0 ORDER BY cost DESC, session_id LIMIT $limit",
            limit,
        ),
        query_table(con, "final_status", "Final status", "final_status, sessions:int, share:pct", FINAL_SQL),
    ]
    note = "origin and model are those of the session's first call."
    return Section("sessions", "Sessions", query_facts(con, FACTS, FACTS_SQL), tables, [], [note])
