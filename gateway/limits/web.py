"""The limits in the app: their cleanup context and the usage routes (the proxy puts the x-ratelimit-* headers
on its answers, the error middleware on its errors)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import orjson
from aiohttp import web

from gateway.errors import LimitsUnavailable, PermissionDenied
from gateway.limits.config import LimitSettings
from gateway.limits.limiter import OPEN, Limiter
from gateway.limits.memory import MemoryStore
from gateway.limits.store import Store, StoreError
from gateway.prices import SHIPPED_PATH, PriceTable, load_prices
from gateway.state import GATEWAY

log = logging.getLogger("gateway.limits")
REDIS_URL_ENV = "LIMITS_REDIS_URL"  # overrides `limits.redis_url`, so a password can stay in a Secret


def limits_context(env: Mapping[str, str]) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that opens the limits store for the app's lifetime and drains it at the end."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        gw = app[GATEWAY]
        settings, lease_s = gw.config.limits, gw.config.upstream.call_deadline_s
        store = open_store(settings, env, lease_s)
        limiter = Limiter(
            settings, store, gw.metrics, _prices(gw.config.logging.prices, settings), lease_s=lease_s
        )
        store.on_error = limiter.count_store_error
        await store.start()
        gw.limits = limiter
        try:
            yield
        finally:
            limiter.publish()
            await store.close()

    return context


def open_store(settings: LimitSettings, env: Mapping[str, str], lease_s: float) -> Store:
    """The configured store; the Redis store's modules are imported only when it is the one."""
    if settings.store != "redis":
        if env.get(REDIS_URL_ENV):
            log.warning(
                "limits: %s is set but limits.store is memory: counted in this process only", REDIS_URL_ENV
            )
        return MemoryStore()
    from gateway.limits.redis_store import RedisStore

    url = env.get(REDIS_URL_ENV) or settings.redis_url
    return RedisStore.connect(
        url, prefix=settings.key_prefix, timeout_s=settings.store_timeout_s, lease_s=lease_s + 60
    )


def _prices(path: str | None, settings: LimitSettings) -> PriceTable:
    """The price table, read only when some limit counts cost."""
    rules = [settings.default, *settings.keys.values(), *settings.models.values()]
    if not any(lim.metric == "cost" for rule in rules if rule for lim in rule.limits):
        return PriceTable()
    return load_prices(Path(path) if path else SHIPPED_PATH)


async def usage(request: web.Request) -> web.Response:
    """`GET /v1/usage`: the calling key's usage, and what its limits leave."""
    gw = request.app[GATEWAY]
    key = gw.keys.authenticate(request.headers.get("Authorization")) or OPEN
    return _json(await _usage_of(gw.limits, key))


async def usage_of_every_key(request: web.Request) -> web.Response:
    """`GET /v1/usage/keys`: every key's usage, for the keys `limits.operator_keys` names."""
    gw = request.app[GATEWAY]
    key = gw.keys.authenticate(request.headers.get("Authorization")) or OPEN
    if key not in gw.config.limits.operator_keys and not gw.keys.open:
        raise PermissionDenied(f"The key {key!r} is not in limits.operator_keys.")
    names = sorted({name for _, name in gw.keys.digests} | set(gw.config.limits.keys))
    return _json({"object": "list", "data": [await _usage_of(gw.limits, name) for name in names]})


async def _usage_of(limiter: Limiter, key: str) -> dict[str, object]:
    try:
        return await limiter.usage(key)
    except StoreError as exc:
        raise LimitsUnavailable("The limits store cannot be reached; try again shortly.") from exc


def _json(data: object) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")
