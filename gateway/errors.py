"""The gateway's errors, each rendered in OpenAI's error shape.

    GatewayError                  any error the gateway answers with itself
    ├── InvalidRequest            400  bad JSON, missing or wrongly typed fields
    ├── AuthenticationFailed      401  missing or wrong proxy key
    ├── NotFound                  404  unknown route or model
    ├── MethodNotAllowed          405
    ├── RequestTimeout            408  the client's body did not arrive in time
    ├── PayloadTooLarge           413
    └── UpstreamError             502  the provider could not be reached or answered badly
        ├── UpstreamRedirect      502  the provider answered 3xx (never followed)
        ├── UpstreamTooLarge      502  an answer or one stream event past its size limit
        ├── ProviderUnavailable   503  the routed provider has no endpoint or no key configured
        └── UpstreamTimeout       504  no answer in time, silence mid-answer, or the call's deadline

Foreign exceptions (aiohttp's client errors, timeouts) are mapped to these in exactly one place,
`gateway.upstream`. An error *returned* by a provider is not a GatewayError: its status and body are
passed back to the client as they came, scrubbed of secrets.
"""

from __future__ import annotations

from typing import Any

import orjson


class GatewayError(Exception):
    """An error the gateway answers with itself, in OpenAI's shape."""

    status = 500
    type = "server_error"
    code: str | None = None
    close_connection = False  # the connection is left in a state no further request can follow

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped error object."""
        return error_body(self.message, self.type, param=self.param, code=self.code)


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    close_connection = True


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamRedirect(UpstreamError):
    code = "upstream_redirect"


class UpstreamTooLarge(UpstreamError):
    code = "upstream_answer_too_large"


class ProviderUnavailable(UpstreamError):
    status = 503
    code = "provider_not_configured"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    """Build `{"error": {message, type, param, code}}`."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_bytes(error: GatewayError) -> bytes:
    return orjson.dumps(error.body())


_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def normalize_upstream_error(status: int, raw: bytes) -> bytes:
    """Return an upstream error body in OpenAI shape, keeping the provider's own words.

    A body that already has `{"error": {...}}` passes through unchanged; anything else (plain text,
    HTML, `{"detail": ...}` from FastAPI-based servers) is wrapped.
    """
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error = parsed["error"]
        if "message" in error and "type" in error:
            return raw
        message = error.get("message") or orjson.dumps(error).decode()
        return orjson.dumps(error_body(str(message), _type_for(status), code=error.get("code", status)))
    if isinstance(parsed, dict):
        detail = parsed.get("detail") or parsed.get("message") or parsed.get("error")
        message = detail if isinstance(detail, str) else orjson.dumps(parsed).decode()
    else:
        message = raw.decode("utf-8", "replace").strip() or f"upstream answered HTTP {status}"
    return orjson.dumps(error_body(message[:2000], _type_for(status), code=status))


def _type_for(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "upstream_error" if status >= 500 else "invalid_request_error")
