"""The one error middleware: every failure leaves as an OpenAI-shaped error with an `X-Request-Id`."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from gateway.cors import Handler
from gateway.edge import LinesResponse
from gateway.errors import GatewayError, MethodNotAllowed, NotFound, PayloadTooLarge, error_body
from gateway.ids import request_id
from gateway.state import RATE_HEADERS, REQUEST_ID

log = logging.getLogger("gateway")


def error_response(error: GatewayError) -> LinesResponse:
    response = LinesResponse(
        status=error.status, body=orjson.dumps(error.body()), content_type="application/json"
    )
    if error.headers:
        response.headers.update(error.headers)
    if error.close_connection:
        response.force_close()
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request its id, and render whatever goes wrong in OpenAI's error shape."""
    request[REQUEST_ID] = request_id()
    try:
        return await handler(request)
    except GatewayError as exc:
        return _with_rate_headers(request, error_response(exc))
    except web.HTTPMethodNotAllowed as exc:
        return error_response(MethodNotAllowed(f"{exc.method} is not allowed on {request.path}."))
    except web.HTTPNotFound:
        return error_response(NotFound(f"No route {request.method} {request.path}."))
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge("The request body is larger than this gateway accepts."))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = error_body(exc.reason, "invalid_request_error" if exc.status < 500 else "server_error")
        return web.Response(status=exc.status, body=orjson.dumps(body), content_type="application/json")
    except Exception:
        # A bug of ours: said loudly in the server log, never with request contents.
        log.exception(
            "unhandled error in %s %s (request %s)", request.method, request.path, request[REQUEST_ID]
        )
        body = error_body("The gateway failed internally.", "server_error", code="internal_error")
        response = LinesResponse(status=500, body=orjson.dumps(body), content_type="application/json")
        return _with_rate_headers(request, response)


def _with_rate_headers(request: web.Request, response: LinesResponse) -> LinesResponse:
    """An error after a call was admitted still tells the caller where its limits stand (a refusal's own
    headers say it already)."""
    response.head_lines = request.get(RATE_HEADERS, b"")
    return response


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    if REQUEST_ID in request:
        response.headers["X-Request-Id"] = request[REQUEST_ID]
