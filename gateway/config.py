"""Configuration: YAML or JSON (by extension), validated into frozen dataclasses, its providers built.

`load(path, env)` is the one way in for `serve` and `check-config`, and `validate` the one check that
`create_app` runs too: every problem is collected first, then raised as one `ConfigError` holding one line
each. Provider sections stay raw mappings in `Config`: each plugin lays them over its own defaults
(`providers.registry.resolve_settings`), so a plugin, not this module, decides what a section means.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from gateway.auth import named_keys
from gateway.errors import NotFound
from gateway.limits.config import LimitSettings, check_limits, parse_limits
from gateway.prices import PriceTableError, load_prices
from gateway.routing import Router, duplicate_models
from providers.base import Provider
from providers.registry import build_providers, discover, readiness_warnings, shown, unknown_setting

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
IMPLIED_DEFAULT = "nrp"  # the earlier proxy sent unknown models here when its config named no default


class ConfigError(Exception):
    """A configuration that cannot be served; `problems` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class UpstreamSettings:
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float = 1200.0  # a 20-minute reasoning call answers non-streamed in one piece
    idle_timeout_s: float = 300.0  # longest silence allowed between two stream chunks
    retries: int = 2
    retry_backoff_s: float = 0.5
    retry_max_wait_s: float = 20.0
    max_connections: int = 0  # 0: unlimited; the pool is shared by every provider
    models_cache_s: float = 300.0
    max_event_bytes: int = 8 * 1024 * 1024  # one SSE event larger than this ends the stream with an error
    max_body_bytes: int = 64 * 1024 * 1024  # a whole (non-streamed) answer larger than this is refused
    call_deadline_s: float = 3600.0  # no call lasts longer, however steadily its upstream drips
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class CorsSettings:
    allow_origins: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = (
        "Authorization",
        "Content-Type",
        "X-Session-Id",
        "X-Client",
        "X-Request-Id",
        "OpenAI-Organization",
        "OpenAI-Project",
        "X-Stainless-*",
    )
    max_age_s: int = 600


@dataclass(frozen=True)
class LoggingSettings:
    enabled: bool = True
    flush_interval_s: float = 300.0
    spool_dir: str = "logs"
    capture: str = "summary"
    stdout: bool = True
    chunk_max_bytes: int = 8 * 1024 * 1024
    spool_max_bytes: int = 1024 * 1024 * 1024
    preview_chars: int = 500
    content_max_chars: int = 100_000
    prefix: str = ""
    prices: str | None = None


@dataclass(frozen=True)
class ServerSettings:
    max_body_bytes: int = 32 * 1024 * 1024
    drain_timeout_s: float = 60.0
    header_timeout_s: float = 75.0  # request line and headers must arrive within this (idle keep-alive too)
    body_timeout_s: float = 60.0  # and its body within this once the headers are in
    refused_body_bytes: int = 16 * 1024  # what is read of a refused (keyless) call's body, at most
    metrics_require_key: bool = False  # GET /metrics answers only callers with a proxy key
    max_connections: int = 0  # client connections per process; 0: from the open-files limit (`connections`)


@dataclass(frozen=True)
class Config:
    providers: Mapping[str, Mapping[str, Any]]
    default_provider: str | None = None
    cors: CorsSettings = CorsSettings()
    logging: LoggingSettings = LoggingSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    server: ServerSettings = ServerSettings()
    limits: LimitSettings = field(default_factory=LimitSettings)
    source: str = "built-in defaults"


_SECTIONS: dict[str, type] = {
    "cors": CorsSettings,
    "logging": LoggingSettings,
    "upstream": UpstreamSettings,
    "server": ServerSettings,
}


def read_raw(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([exc.strerror or str(exc)]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {_yaml_problem(exc)}"]) from exc
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping"])
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """YAML's error on one line: its messages span several, pointing at the spot with a caret."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return " ".join(f"{getattr(exc, 'problem', None) or exc}{where}".split())


def load_config(path: str | Path | None = None) -> Config:
    """Load `path`, or the built-in defaults when it is None."""
    raw = read_raw(path or DEFAULTS_PATH)
    return parse_config(raw, source=str(path) if path else "built-in defaults")


def parse_config(raw: Mapping[str, Any], source: str = "<memory>") -> Config:
    """Turn a raw mapping into a Config, collecting every problem of its own before raising."""
    problems: list[str] = []
    config = _parse(raw, source, problems)
    if problems:
        raise ConfigError(problems)
    return config


def _parse(raw: Mapping[str, Any], source: str, problems: list[str]) -> Config:
    """The Config `raw` describes, every wrong value left at its default and said in `problems`."""
    providers = raw.get("providers") or {}
    if not isinstance(providers, dict) or not all(isinstance(v, dict) for v in providers.values()):
        problems.append(f"providers: must be a mapping of provider name to settings, not {shown(providers)}")
        providers = {}
    # No key at all is an earlier config: it keeps the earlier fallback. An explicit null means none.
    default = raw.get("default_provider", IMPLIED_DEFAULT if IMPLIED_DEFAULT in providers else None)
    if default is not None and not isinstance(default, str):
        problems.append(f"default_provider: must be a provider name or null, not {shown(default)}")
        default = None
    sections = {name: _section(cls, raw.get(name), name, problems) for name, cls in _SECTIONS.items()}
    if sections["server"].header_timeout_s <= 0:  # 0 would leave slow senders holding sockets forever
        problems.append("server.header_timeout_s: must be above 0")
    if sections["logging"].capture not in ("summary", "full"):
        problems.append(f"logging.capture: must be summary or full, not {shown(sections['logging'].capture)}")
    limits = parse_limits(raw.get("limits"), problems)
    known = {"providers", "default_provider", "limits", *_SECTIONS}
    problems += [unknown_setting("", key, known, "top-level setting") for key in raw if key not in known]
    return Config(providers=providers, default_provider=default, limits=limits, source=source, **sections)


def _section(cls: type, value: Any, name: str, problems: list[str]) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, dict):
        problems.append(f"{name}: must be a mapping, not {shown(value)}")
        return cls()
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for f in fields(cls):
        if f.name not in value:
            continue
        coerced = _coerce(value[f.name], getattr(defaults, f.name), f"{name}.{f.name}", problems)
        if coerced is not None:
            kwargs[f.name] = coerced
    names = {f.name for f in fields(cls)}
    problems += [unknown_setting(name, key, names) for key in value if key not in names]
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str, problems: list[str]) -> Any:
    """Check `value` against the type of its default, converting lists to tuples."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int | float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        value = type(default)(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    elif isinstance(default, Mapping):
        ok = isinstance(value, dict)
        value = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in value.items()} if ok else value
    else:  # strings, and optional strings whose default is None
        ok = isinstance(value, str)
    if not ok:
        problems.append(f"{where}: expected {_type_name(default)}, got {shown(value)}")
        return None
    return value


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int | float):
        return "a non-negative number"
    if isinstance(default, tuple):
        return "a list of strings"
    if isinstance(default, Mapping):
        return "a mapping"
    return "a string"


@dataclass(frozen=True)
class Validated:
    """A config that passed every check, with its providers built: what the gateway serves."""

    config: Config
    providers: Mapping[str, Provider]
    warnings: tuple[str, ...] = ()  # what serves but answers 503 until the environment supplies it


def load(path: str | Path | None, env: Mapping[str, str]) -> Validated:
    """Read, parse and validate `path` (the built-in defaults when None): every problem said in one run."""
    raw = read_raw(path or DEFAULTS_PATH)
    problems: list[str] = []
    config = _parse(raw, str(path) if path else "built-in defaults", problems)
    try:
        validated = validate(config, env)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return validated


def validate(config: Config, env: Mapping[str, str]) -> Validated:
    """Build the providers and check the config as a whole; ConfigError holding every problem."""
    providers, problems = build_providers(config.providers, discover(), env)
    problems += duplicate_models(providers)
    if config.default_provider is not None and config.default_provider not in config.providers:
        problems.append(f"default_provider: {config.default_provider!r} is not a configured provider")
    if config.logging.prices:
        try:
            load_prices(Path(config.logging.prices))
        except PriceTableError as exc:
            problems.append(f"logging.prices: {exc}")
    problems += _fallback_problems(config, Router(providers, config.default_provider))
    limit_problems, limit_warnings = check_limits(config.limits, set(named_keys(env)))
    problems += limit_problems
    if problems:
        raise ConfigError(problems)
    return Validated(config, providers, (*readiness_warnings(providers), *limit_warnings))


def _fallback_problems(config: Config, router: Router) -> list[str]:
    """Fallbacks no provider serves: they would turn a provider's failure into a 404 at the worst moment."""
    problems = []
    for model, others in config.upstream.fallbacks.items():
        where = f"upstream.fallbacks.{model}"
        for other in others:
            if not isinstance(other, str):
                problems.append(f"{where}: expected model names, got {shown(other)}")
                continue
            try:
                router.resolve(other)
            except NotFound:
                problems.append(f"{where}: {other!r} is not a model this config serves")
    return problems
