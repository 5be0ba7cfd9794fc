"""Discovering provider plugins by entry point, and building the configured providers from them."""

from __future__ import annotations

import difflib
import functools
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from importlib.metadata import entry_points
from typing import Any

from providers.base import DIALECTS, Provider, ProviderSettings, endpoint_problem

GROUP = "open_llm_proxy.providers"
GENERIC = "openai"
ENDPOINT_ENV = "endpoint_env"  # a section key any plugin understands: the variable holding the endpoint


@dataclass(frozen=True)
class Plugin:
    name: str
    cls: type[Provider] | None
    distribution: str
    error: str | None = None


def discover() -> dict[str, Plugin]:
    """Every plugin registered under the entry-point group, loaded; a broken one carries its error."""
    found: dict[str, Plugin] = {}
    for ep in entry_points(group=GROUP):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown"
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Provider)):
                raise TypeError(f"{ep.value} is not a Provider subclass")
            found[ep.name] = Plugin(ep.name, cls, dist)
        except Exception as exc:  # a broken third-party plugin must not take the gateway down
            found[ep.name] = Plugin(ep.name, None, dist, f"{type(exc).__name__}: {exc}")
    return found


@functools.cache
def _setting_types() -> dict[str, Any]:
    """The type of each settings field a config section may give, read from `ProviderSettings` itself."""
    hints = typing.get_type_hints(ProviderSettings)
    return {
        f.name: hints[f.name] for f in fields(ProviderSettings) if f.name not in ("name", "plugin", "options")
    }


def shown(value: Any, limit: int = 60) -> str:
    """A bad value as a problem line quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unknown_setting(where: str, key: str, known: Iterable[str], what: str = "setting") -> str:
    """The problem line for a key nothing reads, with the likely intended one."""
    close = difflib.get_close_matches(str(key), list(known), n=1)  # YAML keys may be numbers
    place = f"{where}.{key}" if where else key
    return f"{place}: unknown {what}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _fits(value: Any, hint: Any) -> tuple[bool, Any]:
    """Whether `value` fits a settings field typed `hint`, and the value as that field holds it."""
    origin = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return next((fit for fit in (_fits(value, a) for a in args) if fit[0]), (False, None))
    if hint is type(None):
        return value is None, None
    if origin is tuple:
        ok = isinstance(value, list | tuple) and all(_is(v, args[0]) for v in value)
        return ok, tuple(value) if ok else None
    if origin in (Mapping, dict):
        ok = isinstance(value, dict) and all(isinstance(k, str) and _is(v, args[1]) for k, v in value.items())
        return ok, value
    return _is(value, hint), value


def _is(value: Any, hint: Any) -> bool:
    """Whether `value` is of the plain type `hint`."""
    if hint is bool or hint is str:
        return isinstance(value, hint)
    if hint is int or hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return True  # a type this check does not know passes as written


def _expected(hint: Any) -> str:
    """`hint` in a config author's words."""
    origin = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in args)
    if origin is tuple:
        return f"a list of {_plural(args[0])}"
    if origin in (Mapping, dict):
        return f"a mapping of names to {_plural(args[1])}"
    names = {bool: "true or false", str: "a string", int: "a number", float: "a number", type(None): "null"}
    return names.get(hint, str(hint))


def _plural(hint: Any) -> str:
    return {bool: "true/false values", str: "strings", int: "numbers", float: "numbers"}.get(hint, "values")


def _key_variable(name: str, section: Mapping[str, Any], cls: type[Provider]) -> str:
    """The variable an inline key should move to: the one the section or plugin names, else one made up."""
    named = section.get("api_key_env") or cls.defaults.get("api_key_env")
    return named if isinstance(named, str) else re.sub(r"\W", "_", name).upper() + "_API_KEY"


def _key_problems(name: str, section: Mapping[str, Any], cls: type[Provider]) -> list[str]:
    """Keys nothing reads (a typo such as `endpont`), and a provider key written into the file."""
    where = f"providers.{name}"
    known = {*_setting_types(), "plugin", ENDPOINT_ENV, *cls.defaults}
    problems = [
        unknown_setting(where, key, known) for key in section if key not in known and key != "api_key"
    ]
    if "api_key" in section:  # the value is a secret: it is never repeated
        variable = _key_variable(name, section, cls)
        problems.append(
            f"{where}.api_key: keys never go in the config file; "
            f"put it in an environment variable and name it: `api_key_env: {variable}`"
        )
    return problems


def resolve_settings(
    name: str, section: Mapping[str, Any], cls: type[Provider], env: Mapping[str, str], problems: list[str]
) -> ProviderSettings:
    """Lay a config section over the plugin's defaults, checking keys and types; problems are appended."""
    where = f"providers.{name}"
    problems += _key_problems(name, section, cls)
    merged = {**cls.defaults, **section}
    if "models" in section and "model_prefixes" not in section:
        # An earlier config's `models` are prefixes too, whatever the plugin's defaults say.
        merged["model_prefixes"] = None
    endpoint_env = merged.get(ENDPOINT_ENV)
    if endpoint_env is not None and not isinstance(endpoint_env, str):
        problems.append(f"{where}.{ENDPOINT_ENV}: expected a string or null, got {shown(endpoint_env)}")
        endpoint_env = None
    if "endpoint" not in section and endpoint_env and env.get(endpoint_env):
        merged["endpoint"] = env[endpoint_env]
    values: dict[str, Any] = {}
    for key, hint in _setting_types().items():
        if key in merged:
            ok, value = _fits(merged[key], hint)
            values[key] = value if ok else None  # a wrong value is said, and left to the field's default
            if not ok:
                problems.append(f"{where}.{key}: expected {_expected(hint)}, got {shown(merged[key])}")
    problems += _value_problems(where, values, endpoint_given=bool(merged.get("endpoint") or endpoint_env))
    known = {k: v for k, v in values.items() if v is not None}
    options = {k: v for k, v in merged.items() if k not in values and k not in ("plugin", "api_key")}
    return ProviderSettings(name=name, plugin=cls.name, options=options, **{"endpoint": None, **known})


def _value_problems(where: str, values: Mapping[str, Any], *, endpoint_given: bool) -> list[str]:
    """Values of the right type that still cannot be served."""
    endpoint = values.get("endpoint")
    problems = []
    if endpoint and (why := endpoint_problem(endpoint)):
        problems.append(f"{where}: {why}")
    elif not endpoint_given:  # an endpoint variable named instead makes it a warning, while it is unset
        problems.append(
            f"{where}: no endpoint; give its URL, e.g. `endpoint: https://host/v1/chat/completions`"
        )
    dialects = values.get("dialects")
    if dialects is not None and (not dialects or not set(dialects) <= set(DIALECTS)):
        problems.append(
            f"{where}.dialects: expected some of {', '.join(DIALECTS)}, got {shown(list(dialects))}"
        )
    if values.get("models_auth") not in (None, "bearer", "x-api-key"):
        problems.append(
            f"{where}.models_auth: must be bearer or x-api-key, not {shown(values['models_auth'])}"
        )
    return problems


def build_providers(
    sections: Mapping[str, Mapping[str, Any]], plugins: Mapping[str, Plugin], env: Mapping[str, str]
) -> tuple[dict[str, Provider], list[str]]:
    """Instantiate one provider per config section; return them with one line per problem."""
    providers: dict[str, Provider] = {}
    problems: list[str] = []
    for name, section in sections.items():
        plugin_name = section.get("plugin")
        if plugin_name is not None and plugin_name not in plugins:
            problems.append(
                f"providers.{name}: unknown plugin {plugin_name!r} (installed: {', '.join(plugins)})"
            )
            continue
        plugin = plugins.get(plugin_name or name) or plugins.get(GENERIC)
        if plugin is None or plugin.cls is None:
            why = plugin.error if plugin else f"no plugin {GENERIC!r} installed"
            problems.append(f"providers.{name}: plugin failed to load: {why}")
            continue
        settings = resolve_settings(name, section, plugin.cls, env, problems)
        providers[name] = plugin.cls(settings, env)
    return providers, problems


def readiness_warnings(providers: Mapping[str, Provider]) -> list[str]:
    """What leaves a valid provider unready: an endpoint or key still to come from the environment."""
    warnings = []
    for name, provider in providers.items():
        settings = provider.settings
        if not settings.endpoint:
            variable = settings.options.get(ENDPOINT_ENV)
            warnings.append(
                f"providers.{name}: no endpoint: {variable} is not set; calls routed here answer 503"
            )
        if settings.api_key_env and not provider.api_key:
            warnings.append(
                f"providers.{name}: {settings.api_key_env} is not set; calls routed here answer 503 "
                "(`api_key_env: null` if it needs no key)"
            )
    return warnings
