"""Tokens and cost: prompt, completion, reasoning and cached tokens; reported and estimated cost."""

from __future__ import annotations

import dataclasses

import duckdb

from gateway.analyze.model import Section, query_facts, query_table, table_chart
from gateway.analyze.sections.common import Context

USAGE = "(prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL)"
UNPRICED = f"{USAGE} AND cost_reported IS NULL AND cost_estimated IS NULL"
SUMS = (
    "sum(prompt_tokens), sum(completion_tokens), sum(reasoning_tokens), sum(cached_tokens), "
    "sum(cost_reported), sum(cost_estimated), sum(coalesce(cost_reported, cost_estimated))"
)
SUM_COLUMNS = (
    "prompt_tokens:int=prompt, completion_tokens:int=completion, reasoning_tokens:int=reasoning, "
    "cached_tokens:int=cached, cost_reported:usd=reported $, cost_estimated:usd=estimated $, "
    "cost_total:usd=total $"
)
FACTS = (
    "calls_with_usage:int=calls with token usage, prompt_tokens:int=prompt tokens, "
    "completion_tokens:int=completion tokens, reasoning_tokens:int=reasoning tokens, "
    "cached_tokens:int=cached prompt tokens, cost_reported:usd=cost reported by providers, "
    "cost_estimated:usd=cost estimated from the price table, cost_total:usd=cost in all, "
    "calls_cost_reported:int=calls with reported cost, calls_cost_estimated:int=calls with estimated cost, "
    "calls_unpriced:int=calls with usage but no price"
)
FACTS_SQL = f"""
SELECT count(*) FILTER (WHERE {USAGE}), {SUMS}, count(cost_reported), count(cost_estimated),
       count(*) FILTER (WHERE {UNPRICED})
FROM calls
"""
PER_MODEL_SQL = f"""
SELECT provider, model, count(*), {SUMS}, count(*) FILTER (WHERE {UNPRICED})
FROM calls GROUP BY ALL ORDER BY 10 DESC NULLS LAST, 3 DESC, 2, 1 LIMIT $limit
"""
PER_ORIGIN_SQL = f"""
SELECT origin, count(*), {SUMS} FROM calls GROUP BY ALL ORDER BY 9 DESC NULLS LAST, 2 DESC, 1 LIMIT $limit
"""


def build(con: duckdb.DuckDBPyConnection, context: Context) -> Section:
    """Token and cost totals, by model and by origin, with cost by model as a chart."""
    limit = {"limit": context.limit}
    per_model = query_table(
        con,
        "per_model",
        "By model",
        f"provider, model, calls:int, {SUM_COLUMNS}, unpriced:int=unpriced calls",
        PER_MODEL_SQL,
        limit,
    )
    per_origin = query_table(
        con, "per_origin", "By origin", f"origin, calls:int, {SUM_COLUMNS}", PER_ORIGIN_SQL, limit
    )
    priced = dataclasses.replace(per_model, rows=[r for r in per_model.rows if r[9]])  # models with a cost
    chart = table_chart(
        priced,
        "cost_by_model",
        "Cost by model (USD)",
        "bars",
        "model",
        {"reported": "cost_reported", "estimated": "cost_estimated"},
        fmt="usd",
        stacked=True,
    )
    note = (
        f"estimated: from the price table {context.price_source or '(none found)'} where the provider "
        "reported no cost; else the gateway's own price-table figure, if it logged one."
    )
    facts = query_facts(con, FACTS, FACTS_SQL)
    return Section("cost", "Tokens and cost", facts, [per_model, per_origin], [chart], [note])
