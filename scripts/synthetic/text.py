"""Text for synthetic conversations: questions, answers, tool arguments and tool results."""

from __future__ import annotations

import random

import orjson

QUESTIONS = [
    "What fraction of California is protected land?",
    "Show me wetlands within 10 km of San Francisco Bay",
    "Which counties have the most vulnerable carbon?",
    "How much of the 30x30 target has California met so far?",
    "Compare protected area coverage in Oregon and Washington",
    "What are the largest GAP 1 areas in Nevada?",
    "Map the species richness hotspots in the Sierra Nevada",
    "How many acres of tribal land are in the PAD-US dataset?",
    "Which ecoregions are least protected?",
    "List the top 10 national forests by area",
    "What is the mean irrecoverable carbon in Yosemite?",
    "Where are the fire-prone areas near Los Angeles?",
    "Summarize land ownership in Alaska",
    "How has the protected area changed since 2010?",
    "Find parcels with high biodiversity and low protection",
    "What data sources do you have?",
    "Explain what GAP status codes mean",
    "Which states have the highest share of private conservation easements?",
    "How many wilderness areas are larger than 100,000 acres?",
    "Show the distribution of redlined neighborhoods in Oakland",
    "What is the tree canopy cover in Sacramento neighborhoods?",
    "Give me a SQL query for protected areas by state",
    "How do I cite the PAD-US data?",
    "What is the area of Joshua Tree National Park?",
    "Which watersheds overlap with critical habitat?",
    "hello",
    "Translate the legend into Spanish",
    "What's the population living within 1 km of a protected area?",
    "Rank Bay Area counties by park access",
    "Are there any marine protected areas near Monterey?",
]

FOLLOW_UPS = [
    "Can you show that on the map?",
    "What about Oregon?",
    "Thanks! Can you break that down by county?",
    "Why is that number so different from last year?",
    "Make the chart a bar chart instead",
    "Only show areas larger than 1000 acres",
    "What is the source of that data?",
    "ok",
]

SYSTEM_PROMPTS = [
    "You are a helpful geospatial assistant. Use the tools to query the data before answering. " * 20,
    "You are a data analyst with access to a DuckDB database of protected areas. Always cite tables. " * 25,
    "You are a concise assistant.",
]

_SENTENCES = [
    "About 26% of California's land area is in GAP 1 or GAP 2 protection.",
    "The largest share is federal land managed by the Bureau of Land Management and the Forest Service.",
    "I queried the protected areas table and grouped the results by county.",
    "Here is a summary of the results, with areas in acres.",
    "Note that easements are reported separately and may overlap with fee-owned lands.",
    "The map now shows the layer you asked for, colored by management agency.",
    "Carbon estimates come from the irrecoverable carbon dataset at 300 m resolution.",
    "These figures exclude marine areas beyond the three-mile state boundary.",
    "| county | acres |\n|---|---|\n| Inyo | 5,612,000 |\n| San Bernardino | 8,021,000 |",
    "If you want, I can also compare this with the 2015 version of the data.",
]

_FAILURES = [
    'Error: relation "pad_us_4" does not exist',
    'Traceback (most recent call last):\n  File "server.py", line 88, in query\n'
    "TimeoutError: query exceeded 30 s",
    '{"error": "rate limited by the tile server", "status": 429}',
    "MCP error -32603: Internal error while fetching the URL",
    "failed to parse arguments: expected a JSON object",
]


def question_variant(rng: random.Random, question: str) -> str:
    """The same question typed a little differently: case, spacing, punctuation."""
    roll = rng.random()
    if roll < 0.15:
        return question.lower()
    if roll < 0.25:
        return "  " + question + "  "
    if roll < 0.35:
        return question.rstrip("?") + "??"
    return question


def answer(rng: random.Random) -> str:
    """An assistant answer of a few sentences."""
    return " ".join(rng.sample(_SENTENCES, rng.randrange(1, 6)))


def tool_arguments(rng: random.Random, name: str) -> str:
    """The raw JSON arguments a model would send to `name`."""
    if name in ("run_sql", "query_database"):
        args: dict[str, object] = {
            "query": f"SELECT state, sum(acres) FROM pad_us GROUP BY state LIMIT {rng.randrange(5, 50)}"
        }
    elif name in ("web_search", "fetch_url"):
        args = {"query": rng.choice(QUESTIONS)}
    else:
        args = {"name": rng.choice(["pad_us", "carbon", "wetlands", "redlining"])}
    return orjson.dumps(args).decode()


def tool_result(rng: random.Random, name: str) -> str:
    """What a tool answered: usually data, sometimes an error."""
    if rng.random() < 0.08:
        return rng.choice(_FAILURES)
    rows = [{"state": s, "acres": rng.randrange(10_000, 9_000_000)} for s in ("CA", "OR", "WA", "NV", "AZ")]
    return orjson.dumps(
        {"tool": name, "rows": rows[: rng.randrange(1, 6)], "count": rng.randrange(1, 500)}
    ).decode()
