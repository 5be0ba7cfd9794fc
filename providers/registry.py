"""Discovering provider plugins by entry point, and building the configured providers from them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib.metadata import entry_points
from typing import Any

from providers.base import Provider, ProviderSettings, endpoint_problem

GROUP = "open_llm_proxy.providers"
GENERIC = "openai"


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


_SETTING_FIELDS = {f.name for f in fields(ProviderSettings)} - {"name", "plugin", "options"}
_LIST_FIELDS = ("models", "model_prefixes", "no_sampling_params")
_MAP_FIELDS = ("extra_headers", "thinking_models")


def resolve_settings(
    name: str, section: Mapping[str, Any], cls: type[Provider], env: Mapping[str, str], problems: list[str]
) -> ProviderSettings:
    """Lay a config section over the plugin's defaults, checking types; problems are appended."""
    merged = {**cls.defaults, **section}
    endpoint_env = merged.pop("endpoint_env", None)
    if "endpoint" not in section and endpoint_env and env.get(endpoint_env):
        merged["endpoint"] = env[endpoint_env]
    where = f"providers.{name}"
    values: dict[str, Any] = {}
    for key, value in merged.items():
        if key in _LIST_FIELDS:
            strings = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
            ok = strings or (key == "model_prefixes" and value is None)  # null prefixes: old behaviour
            values[key] = tuple(value) if ok and value is not None else None
        elif key in _MAP_FIELDS:
            ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
            values[key] = value if ok else {}
        elif key in ("endpoint", "api_key_env", "models_auth"):
            ok = value is None or isinstance(value, str)
            values[key] = value if ok else None
        elif key == "discover_models":
            ok = isinstance(value, bool)
            values[key] = value if ok else True
        else:
            ok = True  # plugin-specific or legacy keys ride along in options
        if not ok:
            problems.append(f"{where}.{key}: wrong type ({type(value).__name__})")
    endpoint = values.get("endpoint")
    if endpoint and (why := endpoint_problem(endpoint)):
        problems.append(f"{where}: {why}")
    if values.get("models_auth") not in (None, "bearer", "x-api-key"):
        problems.append(f"{where}.models_auth: must be bearer or x-api-key")
    known = {k: v for k, v in values.items() if k in _SETTING_FIELDS and v is not None}
    options = {k: v for k, v in merged.items() if k not in _SETTING_FIELDS and k != "plugin"}
    return ProviderSettings(name=name, plugin=cls.name, options=options, **{"endpoint": None, **known})


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
