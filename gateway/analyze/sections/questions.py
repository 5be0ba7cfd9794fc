"""User questions: the most frequent (normalized), how many are repeats, and the latest ones."""

from __future__ import annotations

import duckdb

from gateway.analyze.model import Section, query_facts, query_table
from gateway.analyze.sections.common import Context

# Questions count as the same when they differ only in case, spacing or trailing punctuation.
NORMALIZED = r"regexp_replace(trim(regexp_replace(lower(q), '\s+', ' ', 'g')), '[\s?!.]+$', '')"
# One row per question and conversation (a session, or a call without one): an agent loop repeats its
# question on every tool turn. Questions are normalized once per distinct text, not once per call.
ASKS_SQL = f"""
CREATE OR REPLACE TEMP TABLE asks AS
WITH raw AS (
    SELECT coalesce(session_id, request_id) AS conversation, question AS q, min(ts) AS asked_at,
           arg_min(origin, ts) AS origin, arg_min(model, ts) AS model
    FROM calls WHERE has_request AND question IS NOT NULL GROUP BY 1, 2
), norms AS (SELECT q, {NORMALIZED} AS norm FROM (SELECT DISTINCT q FROM raw))
SELECT norm, conversation, min(asked_at) AS asked_at, arg_min(q, asked_at) AS text,
       arg_min(origin, asked_at) AS origin, arg_min(model, asked_at) AS model
FROM raw JOIN norms USING (q) WHERE norm <> '' GROUP BY norm, conversation
"""
FACTS = (
    "questions:int=questions asked, distinct:int=distinct questions, "
    "asked_more_than_once:int=questions asked more than once, repeats:int=repeat asks"
)
FACTS_SQL = """
SELECT sum(n), count(*), count(*) FILTER (WHERE n > 1), sum(n) - count(*)
FROM (SELECT norm, count(*) AS n FROM asks GROUP BY norm)
"""
TOP_SQL = """
WITH spellings AS (SELECT norm, text, count(*) AS n FROM asks GROUP BY ALL),
shown AS (SELECT norm, first(text ORDER BY n DESC, text) AS text FROM spellings GROUP BY norm)
SELECT any_value(shown.text), count(*), min(asked_at), max(asked_at)
FROM asks JOIN shown USING (norm) GROUP BY norm ORDER BY 2 DESC, 3, 1 LIMIT $limit
"""
RECENT_SQL = "SELECT asked_at, text, origin, model FROM asks ORDER BY asked_at DESC, text LIMIT $limit"
NOTE = (
    "a question is the last user message of a turn, counted once per session (or per call without a "
    "session); questions differing only in case, spacing or final punctuation are one."
)


def build(con: duckdb.DuckDBPyConnection, context: Context) -> Section:
    """Question counts, the most frequent questions (most common spelling shown) and the latest."""
    con.execute(ASKS_SQL)
    limit = {"limit": context.limit}
    tables = [
        query_table(
            con,
            "top",
            "Most frequent",
            "question, asked:int, first_asked:time, last_asked:time",
            TOP_SQL,
            limit,
        ),
        query_table(
            con, "recent", "Most recent", "asked_at:time, question, origin, model", RECENT_SQL, limit
        ),
    ]
    return Section("questions", "User questions", query_facts(con, FACTS, FACTS_SQL), tables, [], [NOTE])
