"""A call's usage object read as numbers: its tokens, and its cost in USD."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.prices import PriceTable


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_tokens(usage: Any) -> tuple[int, int, int] | None:
    """(prompt, completion, total) from an OpenAI (or Anthropic) usage object; None when it holds none."""
    if not isinstance(
        usage, dict
    ):  # a usage object is parsed JSON: a dict (and dict is quicker than Mapping)
        return None
    prompt, completion, total = (
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        usage.get("total_tokens"),
    )
    if (
        type(prompt) is int
        and type(completion) is int
        and type(total) is int
        and prompt >= 0
        and completion >= 0
    ):
        return prompt, completion, total  # the usual shape, read at once (type() is int: no bools)
    prompt = _int(usage.get("prompt_tokens"))
    prompt = prompt if prompt is not None else _int(usage.get("input_tokens"))
    completion = _int(usage.get("completion_tokens"))
    completion = completion if completion is not None else _int(usage.get("output_tokens"))
    total = _int(usage.get("total_tokens"))
    if prompt is None and completion is None and total is None:
        return None
    prompt, completion = prompt or 0, completion or 0
    return prompt, completion, total if total is not None else prompt + completion


def usage_cost(
    prices: PriceTable, model: str | None, usage: Mapping[str, Any] | None
) -> tuple[float | None, str | None]:
    """USD for a call: the provider's own `usage.cost`, else from the price table; and which it was."""
    if not usage or not isinstance(usage, dict):
        return None, None
    reported = usage.get("cost")
    if isinstance(reported, (int, float)) and not isinstance(reported, bool):  # a tuple: no union to build
        return float(reported), "provider"
    price = prices.lookup(model)
    if price is None:
        return None, None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    cost = price.cost(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, cached)
    return round(cost, 8), "price_table"
