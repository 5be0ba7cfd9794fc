"""CORS, in one place: preflights answered, headers on every response to an allowed origin (errors too)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.config import CorsSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_LABELS = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"  # what `*` may stand for: one or more DNS labels (or a port)


def origin_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """A predicate for allowed origins: exact ones, `*` alone for any, or `https://*.example.org` patterns."""
    if "*" in patterns:
        return lambda origin: True
    exact = {p.rstrip("/") for p in patterns if "*" not in p}
    wild = [
        re.compile(
            "".join(_LABELS if part == "*" else re.escape(part) for part in re.split(r"(\*)", p.rstrip("/")))
            + r"\Z"
        )
        for p in patterns
        if "*" in p
    ]
    return lambda origin: origin in exact or any(w.match(origin) for w in wild)


class Cors:
    """The CORS policy: a middleware for preflights and a response hook for everything else."""

    def __init__(self, settings: CorsSettings) -> None:
        self.allowed = origin_matcher(settings.allow_origins)
        self.allow_headers = ", ".join(settings.allow_headers)
        self.max_age = str(settings.max_age_s)

    @web.middleware
    async def preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            # Browsers send no credentials on preflight; allowed or not, this is answered here, and only an
            # allowed origin gets the headers that let the real request follow.
            response = web.Response(status=204)
            origin = request.headers.get("Origin", "")
            if self.allowed(origin):
                requested = request.headers.get("Access-Control-Request-Headers")
                response.headers.update(
                    {
                        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                        "Access-Control-Allow-Headers": requested or self.allow_headers,
                        "Access-Control-Max-Age": self.max_age,
                    }
                )
            return response
        return await handler(request)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if not origin:
            return
        response.headers.add("Vary", "Origin")  # the answer differs by origin, allowed or not
        if self.allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "X-Request-Id, Retry-After"
