"""The gateway's errors, each rendered in OpenAI's error shape.

    GatewayError                  any error the gateway answers with itself
    ├── InvalidRequest            400  bad JSON, missing or wrongly typed fields
    ├── AuthenticationFailed      401  missing or wrong proxy key
    ├── PermissionDenied          403  a key that may not read what it asked for
    ├── NotFound                  404  unknown route or model
    ├── MethodNotAllowed          405
    ├── RequestTimeout            408  the client's body did not arrive in time
    ├── PayloadTooLarge           413
    ├── RateLimited               429  a limit of the caller's key (`rate_limit_exceeded`), with Retry-After
    │   └── QuotaExceeded         429  a spent budget (`insufficient_quota`)
    ├── LimitsUnavailable         503  the limits store is unreachable and `on_store_error` is deny
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
    headers: dict[str, str] | None = None  # sent with the error answer (Retry-After, x-ratelimit-*)

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


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


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


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QuotaExceeded(RateLimited):
    type = "insufficient_quota"
    code = "insufficient_quota"


class LimitsUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "limits_unavailable"
    headers = {"Retry-After": "1"}


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

    A body that already is `{"error": {"message": str, "type": str, ...}}` passes through unchanged (`param`
    and `code` are optional to OpenAI's clients); an error object whose message or type is missing or not
    text, or whose param or code has a type no client expects, is completed, its own fields kept; anything
    else (plain text, HTML, `{"detail": ...}` from FastAPI-based servers) is wrapped.
    """
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error = parsed["error"]
        if _complete(error):
            return raw
        message = error.get("message")
        if not isinstance(message, str) or not message:
            message = orjson.dumps(error).decode()
        type_ = error.get("type") if isinstance(error.get("type"), str) else _type_for(status)
        code = error.get("code")
        code = code if isinstance(code, str | int) and not isinstance(code, bool) else status
        body = error_body(message[:2000], type_, param=_text_or_none(error.get("param")), code=code)
        return orjson.dumps({**parsed, "error": {**error, **body["error"]}})
    if isinstance(parsed, dict):
        detail = parsed.get("detail") or parsed.get("message") or parsed.get("error")
        message = detail if isinstance(detail, str) else orjson.dumps(parsed).decode()
    else:
        message = raw.decode("utf-8", "replace").strip() or f"upstream answered HTTP {status}"
    return orjson.dumps(error_body(message[:2000], _type_for(status), code=status))


def _complete(error: dict[str, Any]) -> bool:
    """Whether an upstream error object already has OpenAI's fields with the types clients expect."""
    param, code = error.get("param"), error.get("code")
    return (
        isinstance(error.get("message"), str)
        and isinstance(error.get("type"), str)
        and (param is None or isinstance(param, str))
        and (code is None or (isinstance(code, str | int) and not isinstance(code, bool)))
    )


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _type_for(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "upstream_error" if status >= 500 else "invalid_request_error")
