"""The model side: chat completions through the gateway with the openai SDK, one call per turn.

Every request carries the run's identity (body `user` and `X-Session-Id`, `Origin`, `X-Client`), and every
answer's `X-Request-Id` is kept, so the run can be found in the gateway's logs. The openai SDK's exceptions
are mapped to ours here and nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from gateway.agent.errors import AgentError, KeyRefused, ModelCallFailed, ModelTimeout
from gateway.agent.replies import StreamedTurn, turn_from_completion
from gateway.agent.settings import RunSettings
from gateway.agent.turns import ModelTurn

CLIENT_NAME = "agent-runner"
REQUEST_ID_HEADER = "x-request-id"

OnText = Callable[[str], None]


class ModelClient:
    """Calls the model through the gateway; use as an async context manager."""

    def __init__(self, settings: RunSettings, tools: list[dict[str, Any]]) -> None:
        self._settings = settings
        self._tools = tools
        headers = {"X-Session-Id": settings.session_id, "X-Client": CLIENT_NAME}
        if settings.origin:
            headers["Origin"] = settings.origin
        # No SDK retries: a replay must put each turn in the logs once, exactly as the app would.
        self._client = openai.AsyncOpenAI(
            api_key=settings.api_key,
            base_url=settings.base_url,
            timeout=settings.timeout,
            max_retries=0,
            default_headers=headers,
        )

    async def __aenter__(self) -> ModelClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client.close()

    async def complete(self, messages: list[dict[str, Any]], on_text: OnText) -> ModelTurn:
        """One turn: send the conversation, return the model's answer (streamed text goes to `on_text`)."""
        started = time.monotonic()
        seen: list[str] = []  # the request id, once the response headers are in
        try:
            return await self._complete(messages, on_text, started, seen)
        except openai.APIError as exc:
            raise self._map_error(exc, seen[0] if seen else None) from exc

    async def _complete(
        self, messages: list[dict[str, Any]], on_text: OnText, started: float, seen: list[str]
    ) -> ModelTurn:
        raw = await self._client.chat.completions.with_raw_response.create(**self._body(messages))
        request_id = raw.headers.get(REQUEST_ID_HEADER)
        if request_id:
            seen.append(request_id)
        reply = raw.parse()
        if isinstance(reply, ChatCompletion):
            return turn_from_completion(reply, request_id, _elapsed_ms(started))
        folded = StreamedTurn()
        async for chunk in reply:
            text = folded.add(chunk)
            if text:
                on_text(text)
        return folded.build(request_id, _elapsed_ms(started))

    def _body(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._settings.model,
            "messages": messages,
            "user": self._settings.session_id,
            "stream": self._settings.stream,
        }
        if self._tools:
            body["tools"] = self._tools
        if self._settings.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _map_error(self, exc: openai.APIError, request_id: str | None) -> AgentError:
        if isinstance(exc, openai.APITimeoutError):
            return ModelTimeout(
                f"no answer from the model within {self._settings.timeout:g} s", request_id=request_id
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return ModelCallFailed(f"cannot reach the gateway at {self._settings.base_url}: {cause}")
        if isinstance(exc, openai.APIStatusError):
            return status_error(
                exc.status_code, error_message(exc), exc.response.headers.get(REQUEST_ID_HEADER)
            )
        return ModelCallFailed(f"the model's reply broke off: {exc.message}", request_id=request_id)


def status_error(status: int, message: str, request_id: str | None) -> AgentError:
    """The error for a gateway answer with an HTTP error status."""
    if status in (401, 403):
        return KeyRefused(f"the gateway refused the API key ({status}): {message}", request_id=request_id)
    if status in (408, 504):
        return ModelTimeout(
            f"the model timed out behind the gateway ({status}): {message}", request_id=request_id
        )
    return ModelCallFailed(f"the gateway answered {status}: {message}", request_id=request_id)


def error_message(exc: openai.APIStatusError) -> str:
    """The `message` of an OpenAI-shaped error body, else the SDK's own text."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return exc.message


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
