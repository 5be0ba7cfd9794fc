"""What the synthetic gateway serves and who calls it: models, apps, and how calls fail."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]


@dataclass(frozen=True)
class Model:
    """A served model and how it behaves."""

    provider: str
    name: str
    weight: float
    median_ms: float
    thinking: bool
    price: tuple[float, float] | None  # USD per 1M prompt, completion tokens
    reports_cost: bool  # OpenRouter reports usage.cost


MODELS = [
    Model("nrp", "kimi", 0.34, 4200, True, (0.60, 2.50), False),
    Model("nrp", "qwen3", 0.24, 2100, True, (0.22, 0.88), False),
    Model("nrp", "glm-4.7", 0.15, 3300, True, (0.60, 2.20), False),
    Model("openrouter", "anthropic/claude-sonnet-4.5", 0.10, 5200, False, (3.00, 15.00), True),
    Model("openrouter", "openai/gpt-4o-mini", 0.11, 1300, False, (0.15, 0.60), True),
    Model("nimbus", "gpt-oss-120b", 0.06, 2500, True, None, False),
]


@dataclass(frozen=True)
class App:
    """A kind of caller: where it comes from and how it talks."""

    kind: str
    weight: float
    origins: tuple[str | None, ...]
    client: str | None
    key_name: str | None
    stream: bool
    tools: tuple[str, ...]


APPS = [
    App(
        "chat",
        0.50,
        ("https://boettiger-lab.github.io", "https://chat.nrp-nautilus.io"),
        "geo-chat/1.4",
        "default",
        True,
        ("get_map_layer", "query_database", "web_search"),
    ),
    App(
        "agent",
        0.25,
        (None,),
        "agent_runner/0.2",
        "lab-agents",
        False,
        ("run_sql", "list_tables", "describe_table", "web_search", "read_file", "fetch_url"),
    ),
    App("script", 0.22, (None, "http://localhost:5173"), "python-openai/1.54", "students", False, ()),
    App("rejected", 0.03, ("https://example.org",), None, None, True, ()),
]


def fail(rng: random.Random, response: Record, outcome: str) -> None:
    """Turn a would-be answer into a rate limit, an upstream error or a client disconnect."""
    if outcome == "rate_limited":
        response.update(
            status=429,
            latency_ms=round(rng.uniform(80, 600), 3),
            error="Rate limit exceeded: 60 requests per minute",
            upstream_headers={
                "x-ratelimit-limit-requests": "60",
                "x-ratelimit-remaining-requests": "0",
                "retry-after": "12",
            },
        )
    elif outcome == "upstream":
        status, error = rng.choice(
            [
                (502, "upstream connection failed: Connection reset by peer"),
                (504, "upstream timed out after 300 s"),
                (500, "Internal server error"),
            ]
        )
        response.update(
            status=status, error=error, latency_ms=300000.0 if status == 504 else response["latency_ms"]
        )
    else:
        response.update(
            status=499,
            client_disconnected=True,
            error="client disconnected",
            latency_ms=round(response["latency_ms"] * rng.uniform(0.1, 0.9), 3),
            ttft_ms=round(response["latency_ms"] * 0.05, 3),
        )
