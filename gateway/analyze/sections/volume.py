"""Calls over time: totals, first and last record, days sampled, the busiest day, a per-day chart."""

from __future__ import annotations

import duckdb

from gateway.analyze.model import Section, query_facts, query_table, table_chart
from gateway.analyze.sections.common import Context

MAX_DAYS_FILLED = 400  # beyond this span, a stray timestamp would fill the chart with empty days

FACTS = (
    "calls:int, first_record:time=first record, last_record:time=last record, "
    "days_sampled:int=days with calls, "
    "days_spanned:int=days spanned, busiest_day=busiest day, busiest_day_calls:int=calls on the busiest day, "
    "calls_per_day:float=calls per day (days with calls), sessions:int"
)
FACTS_SQL = """
WITH busiest AS (SELECT day, count(*) AS n FROM calls GROUP BY day ORDER BY n DESC, day LIMIT 1)
SELECT count(*), min(ts), max(coalesce(answered_at, ts)), count(DISTINCT day),
       date_diff('day', min(day), max(day)) + 1,
       (SELECT CAST(day AS VARCHAR) FROM busiest), (SELECT n FROM busiest),
       count(*) / nullif(count(DISTINCT day), 0), count(DISTINCT session_id)
FROM calls
"""
PER_DAY_SQL = f"""
WITH span AS (SELECT min(day) AS lo, max(day) AS hi FROM calls),
axis AS (
    SELECT CAST(d AS DATE) AS day FROM span, generate_series(lo, hi, INTERVAL 1 DAY) AS g(d)
    WHERE date_diff('day', lo, hi) < {MAX_DAYS_FILLED}
    UNION SELECT DISTINCT day FROM calls)
SELECT CAST(a.day AS VARCHAR), count(c.day), count(*) FILTER (WHERE c.failed), count(DISTINCT c.session_id)
FROM axis a LEFT JOIN calls c ON c.day = a.day
WHERE a.day IS NOT NULL GROUP BY a.day ORDER BY a.day
"""


def build(con: duckdb.DuckDBPyConnection, context: Context) -> Section:
    """Total calls, first and last record, days sampled, busiest day, calls per day and a per-day chart."""
    days = query_table(
        con, "per_day", "Calls per day", "day, calls:int, failed:int, sessions:int", PER_DAY_SQL
    )
    chart = table_chart(
        days, "calls_per_day", "Calls per day", "columns", "day", {"calls": "calls", "failed": "failed"}
    )
    return Section("time", "Calls over time", query_facts(con, FACTS, FACTS_SQL), [days], [chart])
