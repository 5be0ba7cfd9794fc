"""Configuration: YAML or JSON (by extension), validated into frozen dataclasses.

`load_config(path)` raises `ConfigError` holding one line per problem; `check-config` prints them.
Provider sections stay raw mappings here: each plugin merges its own defaults under them
(`providers.base.resolve_settings`), so a plugin, not this module, decides what a section means.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")


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


@dataclass(frozen=True)
class Config:
    providers: Mapping[str, Mapping[str, Any]]
    default_provider: str | None = None
    cors: CorsSettings = CorsSettings()
    logging: LoggingSettings = LoggingSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    server: ServerSettings = ServerSettings()
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
    text = path.read_text(encoding="utf-8")
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
    """Turn a raw mapping into a Config, collecting every problem before raising."""
    problems: list[str] = []
    providers = raw.get("providers") or {}
    if not isinstance(providers, dict) or not all(isinstance(v, dict) for v in providers.values()):
        problems.append("providers: must be a mapping of provider name to settings")
        providers = {}
    default = raw.get("default_provider")
    if default is not None and not isinstance(default, str):
        problems.append("default_provider: must be a provider name or null")
    sections = {name: _section(cls, raw.get(name), name, problems) for name, cls in _SECTIONS.items()}
    if sections["server"].header_timeout_s <= 0:  # 0 would leave slow senders holding sockets forever
        problems.append("server.header_timeout_s: must be above 0")
    known = {"providers", "default_provider", *_SECTIONS}
    problems += [f"{key}: unknown top-level setting" for key in raw if key not in known]
    if problems:
        raise ConfigError(problems)
    return Config(providers=providers, default_provider=default, source=source, **sections)


def _section(cls: type, value: Any, name: str, problems: list[str]) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, dict):
        problems.append(f"{name}: must be a mapping")
        return cls()
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for f in fields(cls):
        if f.name not in value:
            continue
        coerced = _coerce(value[f.name], getattr(defaults, f.name), f"{name}.{f.name}", problems)
        if coerced is not None:
            kwargs[f.name] = coerced
    problems += [
        f"{name}.{key}: unknown setting" for key in value if key not in {f.name for f in fields(cls)}
    ]
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
        problems.append(f"{where}: expected {_type_name(default)}, got {type(value).__name__}")
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
