"""What every section builder is given, and SQL pieces several of them share."""

from __future__ import annotations

from dataclasses import dataclass

# Calls, share of all calls, failed calls and error rate, for any GROUP BY over `calls`.
COUNTS = (
    "count(*), count(*) / (SELECT count(*) FROM calls), count(*) FILTER (WHERE failed), "
    "avg(CAST(failed AS INT))"
)
COUNT_COLUMNS = "calls:int, share:pct, failed:int, error_rate:pct"
SUCCESSFUL = "has_response AND status < 400"


@dataclass(frozen=True)
class Context:
    """Settings that shape the sections."""

    limit: int = 15  # rows in ranked tables
    price_source: str = ""  # the price table used, for the cost section's note
