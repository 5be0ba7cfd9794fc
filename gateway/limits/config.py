"""The `limits:` section: what each key may use, parsed and checked into frozen dataclasses.

    limits:
      default: {requests_per_minute: 60, tokens_per_minute: 200000, concurrent: 8}
      keys:
        teaching: {requests_per_minute: 20, tokens_per_day: 2000000, cost_per_month_usd: 5}
      models:
        "anthropic/": {cost_per_day_usd: 10}

A limit's name is `<requests|tokens|cost>_per_<minute|day|month>` (cost ends in `_usd`), or `concurrent`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.limits.windows import Window
from providers.registry import shown, unknown_setting

MICRO = 1_000_000  # costs are counted in millionths of a USD: integers add up exactly in every store
STORES = ("memory", "redis")
POLICIES = ("allow", "deny")
_SCHEMES = ("redis://", "rediss://", "unix://")
# Setting name -> (metric, window): every metric in every window.
WINDOWED = {
    f"{metric}_per_{window.value}{'_usd' if metric == 'cost' else ''}": (metric, window)
    for metric in ("requests", "tokens", "cost")
    for window in Window
}


@dataclass(frozen=True, slots=True)
class Limit:
    """One windowed limit: `amount` of `metric` (cost in millionths of a USD) per `window`."""

    name: str
    metric: str
    window: Window
    amount: int


@dataclass(frozen=True)
class Rule:
    """The limits of one entry of `default`, `keys` or `models`."""

    limits: tuple[Limit, ...] = ()
    concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class Meter:
    """One limit as it applies to one key (and model rule): what it is called and the counter it keeps."""

    label: str  # as records, refusals and /v1/usage name it: `keys.teaching.tokens_per_day`
    metric: str  # requests, tokens, cost or concurrent
    window: Window | None  # None: concurrent
    limit: int
    counter: str  # the store key; a calendar window's id is appended to it
    model: str | None = None  # the model rule it comes from


@dataclass(frozen=True)
class LimitSettings:
    default: Rule | None = None  # for every key `keys` does not name, each counted on its own
    keys: Mapping[str, Rule] = field(default_factory=dict)
    models: Mapping[str, Rule] = field(default_factory=dict)  # model id or prefix: the longest match applies
    store: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"  # env LIMITS_REDIS_URL overrides (a password stays secret)
    key_prefix: str = "olp"  # of every store key: one Redis can serve several deployments
    store_timeout_s: float = 0.25  # no call waits longer on the store
    on_store_error: str = "allow"
    completion_tokens_estimate: int = 1024  # reserved when a call sets no max_tokens
    prompt_bytes_per_token: float = 4.0  # the prompt's reservation: its body's bytes over this
    operator_keys: tuple[str, ...] = ()  # key names that may read every key's usage

    @property
    def enabled(self) -> bool:
        return self.default is not None or bool(self.keys) or bool(self.models)


_PLAIN = {  # scalar settings: name -> (type check, what it must be)
    "store": (lambda v: v in STORES, "memory or redis"),
    "redis_url": (
        lambda v: isinstance(v, str) and v.startswith(_SCHEMES),
        "a URL such as redis://host:6379/0",
    ),
    "key_prefix": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "store_timeout_s": (lambda v: _number(v) and 0 < v <= 5, "a number of seconds above 0, at most 5"),
    "on_store_error": (lambda v: v in POLICIES, "allow or deny"),
    "completion_tokens_estimate": (lambda v: _count(v), "a whole number >= 0"),
    "prompt_bytes_per_token": (lambda v: _number(v) and v > 0, "a number above 0"),
    "operator_keys": (
        lambda v: isinstance(v, list) and all(isinstance(k, str) for k in v),
        "a list of names",
    ),
}


def parse_limits(raw: Any, problems: list[str]) -> LimitSettings:
    """The `limits:` section as settings; every problem said in `problems` (its value left at the default)."""
    if raw is None:
        return LimitSettings()
    if not isinstance(raw, dict):
        problems.append(f"limits: must be a mapping, not {shown(raw)}")
        return LimitSettings()
    kwargs: dict[str, Any] = {}
    for name, (fits, what) in _PLAIN.items():
        if name in raw:
            if fits(raw[name]):
                kwargs[name] = tuple(raw[name]) if name == "operator_keys" else raw[name]
            else:
                problems.append(f"limits.{name}: must be {what}, not {shown(raw[name])}")
    if raw.get("default") is not None:
        kwargs["default"] = _rule(raw["default"], "limits.default", problems)
    for section in ("keys", "models"):
        kwargs[section] = _rules(raw.get(section), f"limits.{section}", problems)
    known = {*_PLAIN, "default", "keys", "models"}
    problems += [unknown_setting("limits", key, known) for key in raw if key not in known]
    return LimitSettings(**kwargs)


def _rules(raw: Any, where: str, problems: list[str]) -> dict[str, Rule]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping of names to limits, not {shown(raw)}")
        return {}
    return {str(name): _rule(value, f"{where}.{name}", problems) for name, value in raw.items()}


def _rule(raw: Any, where: str, problems: list[str]) -> Rule:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping of limits, not {shown(raw)}")
        return Rule()
    limits, concurrent = [], None
    for name, value in raw.items():
        if name == "concurrent":
            if _count(value) and value > 0:
                concurrent = value
            else:
                problems.append(f"{where}.concurrent: must be a whole number above 0, not {shown(value)}")
        elif name in WINDOWED:
            metric, window = WINDOWED[name]
            if metric == "cost" and _number(value) and value >= 0:
                limits.append(Limit(name, metric, window, round(value * MICRO)))
            elif metric != "cost" and _count(value):
                limits.append(Limit(name, metric, window, value))
            else:
                what = "a number of USD >= 0" if metric == "cost" else "a whole number >= 0"
                problems.append(f"{where}.{name}: must be {what}, not {shown(value)}")
        else:
            problems.append(unknown_setting(where, name, [*WINDOWED, "concurrent"], "limit"))
    return Rule(tuple(limits), concurrent)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_limits(settings: LimitSettings, key_names: set[str]) -> tuple[list[str], list[str]]:
    """Problems and warnings of settings that parse but cannot serve as written."""
    problems: list[str] = []
    warnings = []
    for where, names in (("limits.keys", settings.keys), ("limits.operator_keys", settings.operator_keys)):
        for name in names:
            if name not in key_names:
                warnings.append(
                    f"{where}: no proxy key is named {name!r} (it would come from {_variable(name)})"
                )
    return problems, warnings


def _variable(name: str) -> str:
    """The environment variable a key of this name comes from."""
    if name == "default":
        return "PROXY_KEY"
    if name.startswith("extra-"):
        return "PROXY_KEYS_EXTRA"
    return f"PROXY_KEY_{name.upper()}"
