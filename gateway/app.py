"""The app factory: middlewares, app keys, cleanup contexts and routes, read top to bottom."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from gateway import __version__, info
from gateway.auth import KeyRing, named_keys
from gateway.config import Config, validate
from gateway.cors import Cors
from gateway.http1 import Pool
from gateway.limits import web as limits
from gateway.metrics import Metrics
from gateway.middleware import add_request_id, errors
from gateway.proxy import handler_for
from gateway.routing import Router
from gateway.scrub import Scrubber
from gateway.state import GATEWAY, Gateway, Recorder
from gateway.upstream import Upstream
from providers.base import Endpoint, Provider


def create_app(
    config: Config,
    providers: Mapping[str, Provider] | None = None,
    *,
    keys: KeyRing | None = None,
    env: Mapping[str, str] | None = None,
    recorder: Recorder | None = None,
) -> web.Application:
    """Build the gateway: `providers` as `validate` built them, which runs when none are handed in."""
    env = os.environ if env is None else env
    if providers is None:
        providers = validate(config, env).providers
    secrets = [s for p in providers.values() for s in p.secrets] + list(named_keys(env).values())
    router = Router(providers, config.default_provider)
    gw = Gateway(config, router, keys or KeyRing.from_env(env), Scrubber(secrets), Metrics(router.exact))
    cors = Cors(config.cors)

    app = web.Application(middlewares=[errors, cors.preflight], client_max_size=config.server.max_body_bytes)
    app[GATEWAY] = gw
    app[info.CATALOG] = info.ModelCatalog(config.upstream.models_cache_s)
    app.on_response_prepare.extend([add_request_id, cors.on_prepare])
    app.cleanup_ctx.append(_upstream_pool)
    if config.limits.enabled:
        app.cleanup_ctx.append(limits.limits_context(env))
    if recorder is not None:
        gw.recorder = recorder
    else:
        from gateway.logs import recorder_context

        app.cleanup_ctx.append(recorder_context(env, secrets))

    app.router.add_post("/v1/chat/completions", handler_for(Endpoint.CHAT))
    app.router.add_post("/chat", handler_for(Endpoint.CHAT))
    app.router.add_post("/v1/completions", handler_for(Endpoint.COMPLETIONS))
    app.router.add_post("/v1/embeddings", handler_for(Endpoint.EMBEDDINGS))
    app.router.add_post("/v1/responses", handler_for(Endpoint.RESPONSES))
    app.router.add_post("/v1/messages", handler_for(Endpoint.MESSAGES))
    app.router.add_post("/v1/messages/count_tokens", handler_for(Endpoint.COUNT_TOKENS))
    app.router.add_post("/llm", handler_for(Endpoint.RAW))
    app.router.add_get("/v1/models", info.models)
    app.router.add_get("/v1/usage", limits.usage)
    app.router.add_get("/v1/usage/keys", limits.usage_of_every_key)
    app.router.add_get("/health", info.health)
    app.router.add_get("/livez", info.livez)
    app.router.add_get("/readyz", info.readyz)
    app.router.add_get("/metrics", info.metrics)
    return app


async def _upstream_pool(app: web.Application) -> AsyncIterator[None]:
    """The one connection pool every provider shares. It keeps no cookies: an upstream's cookies must
    never pass from one client's call to another's. Connecting is bounded here; waiting for an answer is
    bounded per call by `Upstream` (first byte, silence, deadline)."""
    gw = app[GATEWAY]
    settings = gw.config.upstream
    pool = Pool(
        max_connections=settings.max_connections,
        connect_timeout_s=settings.connect_timeout_s,
        user_agent=f"open-llm-proxy/{__version__}",
    )
    gw.upstream = Upstream(pool, settings, gw.metrics, gw.scrubber)
    try:
        yield
    finally:
        await pool.close()
