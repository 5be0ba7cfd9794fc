"""The gateway's own routes: health, probes, metrics and the model list."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import AuthenticationFailed
from gateway.native import compiled
from gateway.state import GATEWAY, Gateway
from providers.base import Provider


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _has_key(gw: Gateway, request: web.Request) -> bool:
    try:
        gw.keys.authenticate(request.headers.get("Authorization"))
    except AuthenticationFailed:
        return False
    return True


async def health(request: web.Request) -> web.Response:
    """`{"status", "providers", "proxy_key_configured"}` for anyone; the details only with a key."""
    gw = request.app[GATEWAY]
    logging, limits = gw.recorder.health(), gw.limits.health()
    degraded = logging.get("degraded", logging.get("spool_full")) or limits.get("degraded")
    status = "draining" if gw.draining else ("degraded" if degraded else "ok")
    providers: dict[str, dict[str, object]] = {
        name: {"configured": p.configured} for name, p in gw.router.providers.items()
    }
    summary = {"status": status, "providers": providers, "proxy_key_configured": not gw.keys.open}
    if not _has_key(gw, request):  # what the earlier /health showed anyone, and no more
        return _json(summary)
    for name, p in gw.router.providers.items():
        providers[name].update(endpoint=p.settings.endpoint, plugin=p.settings.plugin)
    details = {
        "default_provider": gw.config.default_provider,
        "in_flight": gw.in_flight,
        "stream_ends_waiting": gw.upstream.pool.ends.waiting,  # a burst of ends, paced (gateway.http1.pacer)
        "connections": {  # this worker's
            "open": gw.connections.open,
            "limit": gw.connections.limit,
            "closed_idle": gw.connections.closed_idle,
        },
        "pid": os.getpid(),  # with --workers N, which worker answered
        "compiled": compiled(),  # the modules this worker runs compiled (gateway.native)
        "logging": logging,
        "limits": limits,
    }
    if gw.metrics.group is not None:
        details["workers"] = gw.metrics.group.describe()
    return _json(summary | details)


async def livez(request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 503 once draining, so the Service stops sending new calls."""
    if request.app[GATEWAY].draining:
        return web.Response(status=503, text="draining")
    return web.Response(text="ready")


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    if gw.config.server.metrics_require_key:
        gw.keys.authenticate(request.headers.get("Authorization"))
    gw.publish_metrics()
    return web.Response(body=gw.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})


class ModelCatalog:
    """Configured models plus what each provider's `/models` reports, cached; a down upstream is skipped."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    async def listing(self, gw: Gateway) -> list[dict[str, Any]]:
        providers = list(gw.router.providers.values())
        found = await asyncio.gather(*(self._discovered(gw, p) for p in providers))
        seen: dict[str, dict[str, Any]] = {}
        for provider, discovered in zip(providers, found, strict=True):
            for model in provider.settings.models:
                seen.setdefault(model, _entry(model, provider.id))
            for entry in discovered:
                seen.setdefault(entry["id"], entry)
        return list(seen.values())

    async def _discovered(self, gw: Gateway, provider: Provider) -> list[dict[str, Any]]:
        target = provider.models_request()
        if target is None:
            return []
        cached = self._cache.get(provider.id)
        if cached and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        data = await gw.upstream.get_json(*target)
        items = data.get("data") if isinstance(data, dict) else None
        entries = [
            _entry(str(m["id"]), provider.id) for m in items or () if isinstance(m, dict) and "id" in m
        ]
        # A failed discovery is cached briefly too, so a down upstream does not slow every listing.
        self._cache[provider.id] = (time.monotonic() - (0 if entries else self.ttl_s * 0.9), entries)
        return entries


def _entry(model: str, provider: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": provider}


CATALOG = web.AppKey("catalog", ModelCatalog)


async def models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    gw.keys.authenticate(request.headers.get("Authorization"))
    return _json({"object": "list", "data": await request.app[CATALOG].listing(gw)})
