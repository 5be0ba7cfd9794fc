"""The `open-llm-proxy` command: serve, check-config, providers, and the analyzer and agent runner."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway import __version__
from gateway.auth import KeyRing, one_time_key
from gateway.config import Config, ConfigError, load_config, read_raw
from gateway.errors import NotFound
from gateway.prices import PriceTableError, load_prices
from gateway.routing import Router, duplicate_models
from providers.registry import build_providers, discover

log = logging.getLogger("gateway")
ONE_TIME_KEY_ENV = "OPEN_LLM_PROXY_ONE_TIME_KEY"  # hands the parent's one-time key to its workers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="open-llm-proxy",
        description="An OpenAI-compatible LLM gateway: routes by model to provider plugins, streams answers "
        "through, and records every call as JSONL in the namespace's S3 bucket.",
    )
    parser.add_argument("--version", action="version", version=f"open-llm-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway. With no config "
        "file it serves the built-in providers (nrp, openrouter, nimbus).",
    )
    serve.add_argument(
        "--config",
        default=os.environ.get("PROXY_CONFIG"),
        help="YAML or JSON config file (env PROXY_CONFIG; default: built-in defaults)",
    )
    serve.add_argument(
        "--host", default=os.environ.get("HOST", "0.0.0.0"), help="bind address (env HOST; 0.0.0.0)"
    )
    serve.add_argument(
        "--port", type=int, default=os.environ.get("PORT", "8080"), help="port (env PORT; 8080)"
    )
    serve.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port, to use several cores (default 1)"
    )
    serve.add_argument(
        "--allow-open",
        action="store_true",
        help="with no proxy key configured, accept every caller instead of making a one-time key",
    )

    check = commands.add_parser(
        "check-config",
        help="validate a config file",
        description="Validate a config file: exit 0 with a summary, or exit 2 with one line per problem.",
    )
    check.add_argument("path", help="YAML or JSON config file")

    commands.add_parser(
        "providers",
        help="list the provider plugins installed",
        description="List the provider plugins found by entry point, with their distribution.",
    )
    for name, what in (
        ("analyze", "reports on the gateway's logs, as scripts/analyze_logs.py (analyze --help)"),
        ("agent", "an MCP tool-use session through the gateway, as scripts/agent_runner.py (agent --help)"),
    ):
        sub = commands.add_parser(name, help=what, add_help=False)
        sub.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("analyze", "agent"):  # their own parsers take every argument, --help included
        return _delegate(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.path)
    if args.command == "providers":
        return list_providers()
    return serve(args)


def _delegate(command: str, argv: list[str]) -> int:
    if command == "analyze":
        from gateway.analyze.cli import main as analyze

        return analyze(argv)
    from gateway.agent.cli import main as agent

    return agent(argv)


def validate(config: Config, env: Mapping[str, str]) -> list[str]:
    """Every problem with a parsed config, one line each."""
    providers, problems = build_providers(config.providers, discover(), env)
    problems += duplicate_models(providers)
    if config.default_provider is not None and config.default_provider not in config.providers:
        problems.append(f"default_provider: {config.default_provider!r} is not a configured provider")
    if config.logging.prices:
        try:
            load_prices(Path(config.logging.prices))
        except PriceTableError as exc:
            problems.append(f"logging.prices: {exc}")
    if config.logging.capture not in ("summary", "full"):
        problems.append(f"logging.capture: must be summary or full, not {config.logging.capture!r}")
    return problems + _fallback_problems(config, Router(providers, config.default_provider))


def _fallback_problems(config: Config, router: Router) -> list[str]:
    """Fallbacks no provider serves: they would turn a provider's failure into a 404 at the worst moment."""
    problems = []
    for model, others in config.upstream.fallbacks.items():
        where = f"upstream.fallbacks.{model}"
        for other in others:
            if not isinstance(other, str):
                problems.append(f"{where}: expected model names, got {type(other).__name__}")
                continue
            try:
                router.resolve(other)
            except NotFound:
                problems.append(f"{where}: {other!r} is not a model this config serves")
    return problems


def _provider_problems(path: str) -> list[str]:
    """The provider sections' problems, for a file whose other sections did not parse: all said in one run."""
    try:
        sections = read_raw(path).get("providers")
    except ConfigError:
        return []
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        return []
    providers, problems = build_providers(sections, discover(), os.environ)
    return problems + duplicate_models(providers)


def check_config(path: str) -> int:
    try:
        config = load_config(path)
        problems = validate(config, os.environ)
    except ConfigError as exc:
        problems = exc.problems + _provider_problems(path)
    except OSError as exc:
        problems = [exc.strerror or str(exc)]
    if problems:
        for line in problems:
            print(f"{path}: {line}", file=sys.stderr)
        return 2
    providers, _ = build_providers(config.providers, discover(), os.environ)
    print(f"{path}: OK, {len(providers)} providers, default {config.default_provider or 'none'}")
    for name, p in providers.items():
        s = p.settings
        key = f"{s.api_key_env} {'set' if p.api_key else 'NOT set'}" if s.api_key_env else "no key"
        prefixes = ", ".join(s.prefixes) or "none"
        print(f"  {name} [{s.plugin}] {s.endpoint or '(no endpoint)'}  key: {key}")
        print(f"    models: {', '.join(s.models) or 'none'}; prefixes: {prefixes}")
    return 0


def list_providers() -> int:
    for name, plugin in sorted(discover().items()):
        where = (
            f"{plugin.cls.__module__}:{plugin.cls.__qualname__}" if plugin.cls else f"BROKEN: {plugin.error}"
        )
        print(f"{name:<14} {plugin.distribution:<28} {where}")
    return 0


def serve(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.server import run, setup_logging

    setup_logging()
    try:
        config = load_config(args.config)
        problems = validate(config, os.environ)
        if problems:
            raise ConfigError(problems)
    except (ConfigError, OSError) as exc:
        for line in exc.problems if isinstance(exc, ConfigError) else [str(exc)]:
            log.error("config %s: %s", args.config or "(built-in defaults)", line)
        return 2
    keys = _keys(args.allow_open)
    log.info("config: %s; providers: %s", config.source, ", ".join(config.providers))
    return run(lambda: create_app(config, keys=keys), args.host, args.port, args.workers)


def _keys(allow_open: bool) -> KeyRing:
    keys = KeyRing.from_env(os.environ, allow_open=allow_open)
    if keys.open:
        log.warning("!" * 72)
        log.warning("RUNNING OPEN: no proxy key is configured and --allow-open was given. Anyone who can")
        log.warning("reach this port can spend the providers' keys. Set PROXY_KEY to close it.")
        log.warning("!" * 72)
    elif keys.empty:
        key = os.environ.get(ONE_TIME_KEY_ENV) or one_time_key()
        os.environ[ONE_TIME_KEY_ENV] = key
        print(
            f"\nNo proxy key configured (PROXY_KEY). This run accepts the one-time key:\n\n    {key}\n\n"
            "Send it as `Authorization: Bearer <key>`; it is forgotten when the gateway stops.\n",
            file=sys.stderr,
            flush=True,
        )
        keys = keys.with_key(key, "generated")
    return keys
