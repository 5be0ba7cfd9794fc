"""The `open-llm-proxy` command: serve, check-config, providers, and the analyzer and agent runner."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.auth import KeyRing, one_time_key
from gateway.config import ConfigError, Validated, load
from providers.registry import discover

log = logging.getLogger("gateway")
ONE_TIME_KEY_ENV = "OPEN_LLM_PROXY_ONE_TIME_KEY"  # hands the parent's one-time key to its workers
# What makes an address impossible to listen on: said in one line and exit 2, not a traceback.
BIND_ERRORS = (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)


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
        "--port",
        type=int,
        default=os.environ.get("PORT", "8080"),
        help="port (env PORT; 8080); 0: a free one, named in the log",
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
    usage = commands.add_parser(
        "usage",
        help="every key's usage and what its limits leave, from a running gateway",
        description="Every proxy key's usage and what its limits leave, read from a running gateway's "
        "/v1/usage/keys with a key named in limits.operator_keys.",
    )
    port = os.environ.get("PORT", "8080")
    usage.add_argument(
        "--url", default=f"http://127.0.0.1:{port}", help="the gateway (env PORT for the port)"
    )
    usage.add_argument("--key-env", default="PROXY_KEY", help="the variable holding the operator's proxy key")
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
    if args.command == "usage":
        from gateway.limits.report import show_usage

        return show_usage(args.url, args.key_env)
    return serve(args)


def _delegate(command: str, argv: list[str]) -> int:
    if command == "analyze":
        from gateway.analyze.cli import main as analyze

        return analyze(argv)
    from gateway.agent.cli import main as agent

    return agent(argv)


def check_config(path: str) -> int:
    """Validate `path` as `serve` would: a summary and exit 0, or one line per problem and exit 2."""
    try:
        validated = load(path, os.environ)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"{path}: {line}", file=sys.stderr)
        return 2
    for line in validated.warnings:
        print(f"{path}: warning: {line}", file=sys.stderr)
    config, providers = validated.config, validated.providers
    print(f"{path}: OK, {len(providers)} providers, default {config.default_provider or 'none'}")
    for name, p in providers.items():
        s = p.settings
        key = f"{s.api_key_env} {'set' if p.api_key else 'NOT set'}" if s.api_key_env else "none needed"
        prefixes = ", ".join(s.prefixes) or "none"
        print(f"  {name} [{s.plugin}] {s.endpoint or '(no endpoint)'}  key: {key}")
        print(f"    models: {', '.join(s.models) or 'none'}; prefixes: {prefixes}")
        print(f"    dialects: {', '.join(s.dialects)}")
    if (limits := config.limits).enabled:
        named = ", ".join([*(["default"] if limits.default else []), *limits.keys]) or "none"
        print(f"  limits [{limits.store}]: keys {named}; models {', '.join(limits.models) or 'none'}")
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
    from gateway.server import check_port, run, setup_logging

    setup_logging()
    validated = _load_for_serving(args.config)
    if validated is None:
        return 2
    limits = validated.config.limits
    if args.workers > 1 and limits.enabled and limits.store == "memory":  # each worker would count alone
        log.error("limits with --workers %d need a shared store: set limits.store: redis", args.workers)
        return 2
    try:
        # In this process, before any worker would fail to bind (and be restarted, forever) and before a
        # one-time key is printed for a gateway that cannot start.
        check_port(args.host, args.port)
    except OSError as exc:
        if exc.errno not in BIND_ERRORS and not isinstance(exc, socket.gaierror):
            raise
        reason = os.strerror(exc.errno) if exc.errno in BIND_ERRORS else exc.strerror
        log.error("cannot listen on %s port %d: %s", args.host, args.port, reason)
        return 2
    keys = _keys(args.allow_open)
    config, providers = validated.config, validated.providers
    log.info("config: %s; providers: %s", config.source, ", ".join(providers))
    return run(lambda: create_app(config, providers, keys=keys), args.host, args.port, args.workers)


def _load_for_serving(path: str | None) -> Validated | None:
    """The validated config, its warnings logged; None (its problems logged) when it cannot be served."""
    where = path or "(built-in defaults)"
    try:
        validated = load(path, os.environ)
    except ConfigError as exc:
        for line in exc.problems:
            log.error("config %s: %s", where, line)
        return None
    for line in validated.warnings:
        log.warning("config %s: %s", where, line)
    return validated


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
