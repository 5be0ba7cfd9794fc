"""Report sections on behaviour: tools, errors, sessions and the questions users ask."""

from __future__ import annotations

import duckdb

from gateway.analyze.model import Chart, Column, Section, Series, label, query_facts, query_table

C = Column

# Questions count as the same when they differ only in case, spacing or trailing punctuation.
NORMALIZED_QUESTION = r"regexp_replace(trim(regexp_replace(lower(q), '\s+', ' ', 'g')), '[\s?!.]+$', '')"


def tools_section(con: duckdb.DuckDBPyConnection, limit: int) -> Section:
    """Calls per tool, tool results that look like failures, and the share of turns that used tools."""
    section = Section("tools", "Tools")
    section.facts = query_facts(
        con,
        [
            ("turns", "answered turns", "int"),
            ("turns_with_tools", "turns that called tools", "int"),
            ("share_with_tools", "share of turns that called tools", "pct"),
            ("turns_offering_tools", "turns offering tools to the model", "int"),
            ("tool_calls", "tool calls", "int"),
            ("tool_results", "tool results sent back", "int"),
            ("failed_results", "tool results that look like failures", "int"),
            ("failed_share", "share of tool results that look like failures", "pct"),
        ],
        """
        SELECT count(*) FILTER (WHERE ok), count(*) FILTER (WHERE ok AND used),
               count(*) FILTER (WHERE ok AND used) / nullif(count(*) FILTER (WHERE ok), 0),
               count(*) FILTER (WHERE tools_count > 0), sum(len(tool_names)), sum(len(tool_results)),
               sum(len(list_filter(tool_results, lambda r: r.failed))),
               sum(len(list_filter(tool_results, lambda r: r.failed))) / nullif(sum(len(tool_results)), 0)
        FROM (SELECT *, has_response AND status < 400 AS ok, has_tool_calls OR len(tool_names) > 0 AS used
              FROM calls)""",
    )
    per_tool = query_table(
        con,
        "per_tool",
        "By tool",
        [
            C("tool", "tool"),
            C("calls", "calls", "int"),
            C("share", "share of calls", "pct"),
            C("results", "results", "int"),
            C("failed", "failed results", "int"),
            C("failure_rate", "failure rate", "pct"),
        ],
        f"""
        WITH called AS (SELECT unnest(tool_names) AS tool FROM calls),
        results AS (SELECT unnest(tool_results) AS r FROM calls),
        c AS (SELECT tool, count(*) AS n FROM called GROUP BY tool),
        r AS (SELECT r.name AS tool, count(*) AS n, count(*) FILTER (WHERE r.failed) AS failed
              FROM results GROUP BY 1)
        SELECT coalesce(c.tool, r.tool), coalesce(c.n, 0),
               coalesce(c.n, 0) / nullif((SELECT count(*) FROM called), 0),
               coalesce(r.n, 0), coalesce(r.failed, 0), r.failed / nullif(r.n, 0)
        FROM c FULL OUTER JOIN r ON c.tool = r.tool ORDER BY 2 DESC, 4 DESC, 1 LIMIT {limit}""",
    )
    section.tables = [per_tool]
    section.charts = [
        Chart(
            "tool_usage",
            "Tool calls and failed results",
            "bars",
            [label(r[0]) for r in per_tool.rows],
            [
                Series("calls", [float(r[1] or 0) for r in per_tool.rows]),
                Series("failed results", [float(r[4] or 0) for r in per_tool.rows]),
            ],
        )
    ]
    section.notes = [
        "a result looks like a failure when it starts with an error word (error, exception, "
        "traceback, failed), carries an error field, or is an MCP or tool error."
    ]
    return section


def errors_section(con: duckdb.DuckDBPyConnection, limit: int) -> Section:
    """Errors by status and message, rate-limit hits, client disconnects and unanswered requests."""
    section = Section("errors", "Errors")
    section.facts = query_facts(
        con,
        [
            ("calls", "calls", "int"),
            ("failed", "failed calls", "int"),
            ("error_rate", "error rate", "pct"),
            ("http_errors", "HTTP errors (status >= 400)", "int"),
            ("rate_limited", "rate-limit hits (429)", "int"),
            ("client_disconnects", "client disconnects", "int"),
            ("server_errors", "upstream or gateway errors (5xx)", "int"),
            ("rejected", "rejected (401/403)", "int"),
            ("unanswered", "unanswered requests (no response record)", "int"),
            ("orphan_responses", "responses with no request record", "int"),
        ],
        """
        SELECT count(*), count(*) FILTER (WHERE failed), avg(CAST(failed AS INT)),
               count(*) FILTER (WHERE status >= 400), count(*) FILTER (WHERE status = 429),
               count(*) FILTER (WHERE disconnected), count(*) FILTER (WHERE status >= 500),
               count(*) FILTER (WHERE status IN (401, 403)),
               count(*) FILTER (WHERE has_request AND NOT has_response),
               count(*) FILTER (WHERE has_response AND NOT has_request)
        FROM calls""",
    )
    status = "CASE WHEN has_response THEN CAST(status AS VARCHAR) ELSE 'no response' END"
    section.tables = [
        query_table(
            con,
            "by_status",
            "By status",
            [
                C("status", "status"),
                C("calls", "calls", "int"),
                C("share", "share of failed", "pct"),
                C("last_seen", "last seen", "time"),
            ],
            f"SELECT {status}, count(*), count(*) / (SELECT count(*) FROM calls WHERE failed), max(ts) "
            "FROM calls WHERE failed GROUP BY 1 ORDER BY 2 DESC, 1",
        ),
        query_table(
            con,
            "by_message",
            "By message",
            [
                C("status", "status"),
                C("error", "error"),
                C("calls", "calls", "int"),
                C("last_seen", "last seen", "time"),
            ],
            f"SELECT {status}, coalesce(error, ''), count(*), max(ts) FROM calls WHERE failed "
            f"GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT {limit}",
        ),
        query_table(
            con,
            "rate_limits",
            "Rate-limit hits",
            [
                C("provider", "provider"),
                C("model", "model"),
                C("hits", "hits", "int"),
                C("share", "share of the model's calls", "pct"),
                C("last_seen", "last seen", "time"),
            ],
            "SELECT provider, model, count(*) FILTER (WHERE status = 429), "
            "count(*) FILTER (WHERE status = 429) / count(*), max(ts) FILTER (WHERE status = 429) "
            "FROM calls GROUP BY ALL HAVING count(*) FILTER (WHERE status = 429) > 0 "
            f"ORDER BY 3 DESC, 1, 2 LIMIT {limit}",
        ),
    ]
    section.notes = ["a request whose response falls outside the window read shows as unanswered."]
    return section


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


def sessions_section(con: duckdb.DuckDBPyConnection, limit: int) -> Section:
    """Per session: turns, tool calls, tokens, cost, model time, wall-clock time and final status."""
    con.execute(SESSIONS_SQL)
    section = Section("sessions", "Sessions")
    section.facts = query_facts(
        con,
        [
            ("sessions", "sessions", "int"),
            ("calls_without_session", "calls without a session id", "int"),
            ("turns_p50", "turns per session, median", "float"),
            ("turns_p90", "turns per session, p90", "float"),
            ("turns_max", "turns per session, max", "int"),
            ("wall_clock_p50_s", "wall-clock seconds, median", "float"),
            ("tool_calls_mean", "tool calls per session, mean", "float"),
            ("ended_failed", "sessions whose last call failed", "int"),
        ],
        """
        SELECT count(*), (SELECT count(*) FROM calls WHERE session_id IS NULL),
               quantile_cont(turns, 0.5), quantile_cont(turns, 0.9), max(turns),
               quantile_cont(wall_clock_s, 0.5),
               avg(tool_calls), count(*) FILTER (WHERE ended_failed)
        FROM sessions""",
    )
    columns = [
        C("session_id", "session"),
        C("origin", "origin"),
        C("model", "model"),
        C("started", "started", "time"),
        C("turns", "turns", "int"),
        C("tool_calls", "tool calls", "int"),
        C("tokens", "tokens", "int"),
        C("cost", "cost", "usd"),
        C("model_time_s", "model s", "float"),
        C("wall_clock_s", "wall-clock s", "float"),
        C("final_status", "final status"),
    ]
    select = (
        "SELECT session_id, origin, model, started, turns, tool_calls, tokens, cost, model_time_s, "
        "wall_clock_s, final_status FROM sessions"
    )
    section.tables = [
        query_table(
            con,
            "longest",
            "Longest sessions",
            columns,
            f"{select} ORDER BY turns DESC, started DESC, session_id LIMIT {limit}",
        ),
        query_table(
            con,
            "costliest",
            "Costliest sessions",
            columns,
            f"{select} WHERE cost > 0 ORDER BY cost DESC, session_id LIMIT {limit}",
        ),
        query_table(
            con,
            "final_status",
            "Final status",
            [C("final_status", "final status"), C("sessions", "sessions", "int"), C("share", "share", "pct")],
            "SELECT final_status, count(*), count(*) / (SELECT count(*) FROM sessions) FROM sessions "
            "GROUP BY 1 ORDER BY 2 DESC, 1",
        ),
    ]
    return section


ASKS_SQL = f"""
CREATE OR REPLACE TEMP TABLE asks AS
WITH raw AS (
    SELECT coalesce(session_id, request_id) AS conversation, question AS q, min(ts) AS asked_at,
           arg_min(origin, ts) AS origin, arg_min(model, ts) AS model
    FROM calls WHERE has_request AND question IS NOT NULL GROUP BY 1, 2
), norms AS (SELECT q, {NORMALIZED_QUESTION} AS norm FROM (SELECT DISTINCT q FROM raw))
SELECT norm, conversation, min(asked_at) AS asked_at, arg_min(q, asked_at) AS text,
       arg_min(origin, asked_at) AS origin, arg_min(model, asked_at) AS model
FROM raw JOIN norms USING (q) WHERE norm <> '' GROUP BY norm, conversation
"""


def questions_section(con: duckdb.DuckDBPyConnection, limit: int) -> Section:
    """The most frequent user questions (normalized), how many are repeats, and the latest ones."""
    con.execute(ASKS_SQL)
    section = Section("questions", "User questions")
    section.facts = query_facts(
        con,
        [
            ("questions", "questions asked", "int"),
            ("distinct", "distinct questions", "int"),
            ("asked_more_than_once", "questions asked more than once", "int"),
            ("repeats", "repeat asks", "int"),
        ],
        """
        SELECT sum(n), count(*), count(*) FILTER (WHERE n > 1), sum(n) - count(*)
        FROM (SELECT norm, count(*) AS n FROM asks GROUP BY norm)""",
    )
    section.tables = [
        query_table(
            con,
            "top",
            "Most frequent",
            [
                C("question", "question"),
                C("asked", "asked", "int"),
                C("first_asked", "first asked", "time"),
                C("last_asked", "last asked", "time"),
            ],
            f"""WITH spellings AS (SELECT norm, text, count(*) AS n FROM asks GROUP BY ALL),
                shown AS (SELECT norm, first(text ORDER BY n DESC, text) AS text FROM spellings GROUP BY norm)
            SELECT any_value(shown.text), count(*), min(asked_at), max(asked_at)
            FROM asks JOIN shown USING (norm) GROUP BY norm ORDER BY 2 DESC, 3, 1 LIMIT {limit}""",
        ),
        query_table(
            con,
            "recent",
            "Most recent",
            [
                C("asked_at", "asked at", "time"),
                C("question", "question"),
                C("origin", "origin"),
                C("model", "model"),
            ],
            f"SELECT asked_at, text, origin, model FROM asks ORDER BY asked_at DESC, text LIMIT {limit}",
        ),
    ]
    section.notes = [
        "a question is the last user message of a turn, counted once per session (or per call "
        "without a session); questions differing only in case, spacing or final punctuation are one."
    ]
    return section
