"""The price table: USD per million tokens, by exact model id or longest prefix.

The gateway fills a record's `cost` from it when the provider reported none; the analyzer estimates cost
with it. `gateway/prices.yaml` ships as the default; `logging.prices` and `--prices` name an edited copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LOCAL_PATH = Path("config") / "prices.yaml"  # an operator's edited copy, beside the config
SHIPPED_PATH = Path(__file__).with_name("prices.yaml")
KNOWN_MODELS = 1024  # model names whose price a table remembers


class PriceTableError(ValueError):
    """The price file cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens."""

    prompt: float
    completion: float
    cached_prompt: float | None = None

    def cost(self, prompt: int, completion: int, cached: int = 0) -> float:
        """USD for one call's usage; cached prompt tokens at their own price when one is given."""
        # min(max(cached, 0), prompt), without the two calls: priced for every call that reports usage
        if cached < 0:
            cached = 0
        if prompt < cached:
            cached = prompt
        cached_price = self.prompt if self.cached_prompt is None else self.cached_prompt
        return ((prompt - cached) * self.prompt + cached * cached_price + completion * self.completion) / 1e6


@dataclass(frozen=True)
class PriceTable:
    """Prices by exact model id, then by the longest matching prefix; each model's remembered once found."""

    models: dict[str, Price] = field(default_factory=dict)
    prefixes: dict[str, Price] = field(default_factory=dict)
    source: str = ""
    # The gateway prices every call that reports usage (its record, its key's spend): pricing by prefix costs
    # a look at every prefix, a remembered price one lookup.
    seen: dict[str | None, Price | None] = field(default_factory=dict, init=False, compare=False, repr=False)

    def lookup(self, model: str | None) -> Price | None:
        """The price of `model`, or None when the table does not list it."""
        try:
            return self.seen[model]
        except KeyError:
            pass
        seen = self.seen
        if len(seen) >= KNOWN_MODELS:  # model names are the clients': what they take is bounded
            seen.clear()
        price = seen[model] = self._find(model)
        return price

    def _find(self, model: str | None) -> Price | None:
        if model is None:
            return None
        if model in self.models:
            return self.models[model]
        matches = [p for p in self.prefixes if model.startswith(p)]
        return self.prefixes[max(matches, key=len)] if matches else None


def load_prices(path: Path) -> PriceTable:
    """Read and check a price file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PriceTableError(f"{path}: cannot read the price table: {exc}") from exc
    if not isinstance(data, dict):
        raise PriceTableError(f"{path}: expected a mapping with `models:` and optional `prefixes:`")
    unknown = set(data) - {"models", "prefixes"}
    if unknown:
        raise PriceTableError(f"{path}: unknown top-level keys: {', '.join(sorted(map(str, unknown)))}")
    models = {str(k): _price(path, str(k), v) for k, v in (data.get("models") or {}).items()}
    prefixes = {str(k): _price(path, str(k), v) for k, v in (data.get("prefixes") or {}).items()}
    return PriceTable(models, prefixes, str(path))


def _price(path: Path, name: str, entry: Any) -> Price:
    if not isinstance(entry, dict) or not {"prompt", "completion"} <= set(entry):
        raise PriceTableError(f"{path}: {name}: needs `prompt` and `completion` (USD per 1M tokens)")
    unknown = set(entry) - {"prompt", "completion", "cached_prompt"}
    if unknown:
        raise PriceTableError(f"{path}: {name}: unknown keys: {', '.join(sorted(map(str, unknown)))}")
    cached = entry.get("cached_prompt")
    return Price(
        _number(path, name, "prompt", entry["prompt"]),
        _number(path, name, "completion", entry["completion"]),
        None if cached is None else _number(path, name, "cached_prompt", cached),
    )


def _number(path: Path, name: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise PriceTableError(f"{path}: {name}.{key}: expected a number >= 0, got {value!r}")
    return float(value)


def find_price_file(explicit: Path | None) -> Path | None:
    """The price file to use: the one given, else `config/prices.yaml` here, else the shipped table."""
    if explicit is not None:
        return explicit
    for candidate in (LOCAL_PATH, SHIPPED_PATH):
        if candidate.is_file():
            return candidate
    return None
