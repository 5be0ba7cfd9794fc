"""Errors: by status and message, rate-limit hits, client disconnects, unanswered requests."""

from __future__ import annotations

import duckdb

from gateway.analyze.model import Section, query_facts, query_table
from gateway.analyze.sections.common import Context

FACTS = (
    "calls:int, failed:int=failed calls, error_rate:pct, http_errors:int=HTTP errors (status >= 400), "
    "rate_limited:int=rate-limit hits (429), client_disconnects:int, "
    "server_errors:int=upstream or gateway errors (5xx), rejected:int=rejected (401/403), "
    "unanswered:int=unanswered requests (no response record), "
    "orphan_responses:int=responses with no request record"
)
FACTS_SQL = """
SELECT count(*), count(*) FILTER (WHERE failed), avg(CAST(failed AS INT)),
       count(*) FILTER (WHERE status >= 400), count(*) FILTER (WHERE status = 429),
       count(*) FILTER (WHERE disconnected), count(*) FILTER (WHERE status >= 500),
       count(*) FILTER (WHERE status IN (401, 403)),
       count(*) FILTER (WHERE has_request AND NOT has_response),
       count(*) FILTER (WHERE has_response AND NOT has_request)
FROM calls
"""
STATUS = "CASE WHEN has_response THEN CAST(status AS VARCHAR) ELSE 'no response' END"
BY_STATUS_SQL = f"""
SELECT {STATUS}, count(*), count(*) / (SELECT count(*) FROM calls WHERE failed), max(ts)
FROM calls WHERE failed GROUP BY 1 ORDER BY 2 DESC, 1
"""
BY_MESSAGE_SQL = f"""
SELECT {STATUS}, coalesce(error, ''), count(*), max(ts)
FROM calls WHERE failed GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT $limit
"""
RATE_LIMITS_SQL = """
SELECT provider, model, count(*) FILTER (WHERE status = 429), count(*) FILTER (WHERE status = 429) / count(*),
       max(ts) FILTER (WHERE status = 429)
FROM calls GROUP BY ALL HAVING count(*) FILTER (WHERE status = 429) > 0 ORDER BY 3 DESC, 1, 2 LIMIT $limit
"""


def build(con: duckdb.DuckDBPyConnection, context: Context) -> Section:
    """Failure counts, and failed calls by status, by message and (for 429s) by model."""
    limit = {"limit": context.limit}
    tables = [
        query_table(
            con,
            "by_status",
            "By status",
            "status, calls:int, share:pct=share of failed, last_seen:time",
            BY_STATUS_SQL,
        ),
        query_table(
            con, "by_message", "By message", "status, error, calls:int, last_seen:time", BY_MESSAGE_SQL, limit
        ),
        query_table(
            con,
            "rate_limits",
            "Rate-limit hits",
            "provider, model, hits:int, share:pct=share of the model's calls, last_seen:time",
            RATE_LIMITS_SQL,
            limit,
        ),
    ]
    note = "a request whose response falls outside the window read shows as unanswered."
    return Section("errors", "Errors", query_facts(con, FACTS, FACTS_SQL), tables, [], [note])
