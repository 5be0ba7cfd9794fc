"""CORS as a browser sees it: headless Chromium loads a page from an origin and streams from the gateway.

Chromium maps every `*.localtest` host to 127.0.0.1, so one page server on loopback is reached under three
origins: the exact allowed `http://127.0.0.1:<port>`, `http://app.localtest:<port>` matching the pattern
`http://*.localtest:*`, and `http://localhost:<port>`, which is not allowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from browser import CHROMIUM, CHROMIUM_ARGS
from conftest import AUTH, CHAT, PROXY_KEY, MakeGateway, RunningGateway, gateway_config, serving
from fake_upstream import FakeUpstream
from playwright.async_api import Browser, Page, async_playwright

LAUNCH_ARGS = [*CHROMIUM_ARGS, "--host-resolver-rules=MAP *.localtest 127.0.0.1"]
STEP_S = 10

# The page's script: stream a chat answer with fetch() and read it chunk by chunk, keeping score in
# `window.progress` so the test can watch each chunk arrive.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>chat</title></head><body>
<script>
window.progress = {chunks: [], text: "", status: null, error: null, done: false, cors: null};
async function chat(url, key, body) {
  const p = window.progress;
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
      body: JSON.stringify(body),
    });
    p.status = response.status;
    p.requestId = response.headers.get("X-Request-Id");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      const piece = decoder.decode(value, {stream: true});
      p.chunks.push(piece);
      p.text += piece;
    }
  } catch (e) {
    p.error = e.name + ": " + e.message;
  }
  p.done = true;
  return p;
}
</script></body></html>
"""


@pytest.fixture
async def page_port() -> AsyncIterator[int]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    async with serving(app) as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.fixture
async def cors_gateway(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, page_port: int
) -> RunningGateway:
    cors = {"allow_origins": [f"http://127.0.0.1:{page_port}", "http://*.localtest:*"]}
    return await make_gateway(gateway_config(fake_upstream.url, cors=cors))


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def _open(browser: Browser, origin: str) -> Page:
    page = await browser.new_page()
    await page.goto(origin + "/")
    assert await page.evaluate("window.location.origin") == origin
    return page


async def _progress(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate("window.progress")
    return result


@pytest.mark.parametrize("host", ["127.0.0.1", "app.localtest"], ids=["exact-origin", "pattern-origin"])
async def test_an_allowed_page_streams_an_answer_chunk_by_chunk(
    host: str, browser: Browser, cors_gateway: RunningGateway, fake_upstream: FakeUpstream, page_port: int
) -> None:
    origin = f"http://{host}:{page_port}"
    page = await _open(browser, origin)
    fake_upstream.gate = asyncio.Queue()
    content = "one two three four five"
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "fake": {"content": content}}
    url = cors_gateway.url + "/v1/chat/completions"
    chat = asyncio.create_task(page.evaluate("([u, k, b]) => chat(u, k, b)", [url, PROXY_KEY, body]))
    # Release the upstream one event at a time; each must reach the page's reader before the next is sent.
    loop = asyncio.get_running_loop()
    while not chat.done():
        seen = len((await _progress(page))["chunks"])
        fake_upstream.gate.put_nowait(None)
        deadline = loop.time() + STEP_S
        while len((await _progress(page))["chunks"]) == seen and not chat.done():
            assert loop.time() < deadline, "a chunk did not reach the page"
            await asyncio.sleep(0.02)
    result = await chat
    assert result["error"] is None
    assert result["status"] == 200
    assert len(result["requestId"]) == 32
    sent = [event.decode() for event in fake_upstream.requests[0]["sent"]]
    assert result["text"] == "".join(sent)
    assert len(sent) == 9  # role, five words, finish, usage, [DONE]
    # Each word was read by the page in a read of its own, in order: nothing was held back and batched.
    reads = [
        next(i for i, c in enumerate(result["chunks"]) if f'"content":"{w}' in c) for w in content.split()
    ]
    assert reads == sorted(set(reads))
    assert cors_gateway.recorder.responses()[0].origin == origin


async def test_errors_reach_an_allowed_page_too(
    browser: Browser, cors_gateway: RunningGateway, fake_upstream: FakeUpstream, page_port: int
) -> None:
    page = await _open(browser, f"http://127.0.0.1:{page_port}")
    url = cors_gateway.url + "/v1/chat/completions"
    result = await page.evaluate("([u, k, b]) => chat(u, k, b)", [url, "wrong-key", CHAT])
    assert result["error"] is None  # readable, not blocked
    assert result["status"] == 401
    assert '"authentication_error"' in result["text"]
    result = await page.evaluate("([u, k, b]) => chat(u, k, b)", [url, PROXY_KEY, {**CHAT, "model": "nope"}])
    assert result["status"] == 404
    assert "model_not_found" in result["text"]
    assert fake_upstream.requests == []


async def test_a_page_from_another_origin_is_blocked(
    browser: Browser, cors_gateway: RunningGateway, fake_upstream: FakeUpstream, page_port: int
) -> None:
    page = await _open(browser, f"http://localhost:{page_port}")
    url = cors_gateway.url + "/v1/chat/completions"
    result = await page.evaluate("([u, k, b]) => chat(u, k, b)", [url, PROXY_KEY, {**CHAT, "stream": True}])
    assert result["error"] is not None and result["error"].startswith("TypeError")
    assert result["status"] is None
    assert fake_upstream.requests == []  # the preflight failed, so the call itself was never sent


async def test_preflight_and_headers_over_plain_http(
    cors_gateway: RunningGateway, page_port: int, http: aiohttp.ClientSession
) -> None:
    allowed = f"http://127.0.0.1:{page_port}"
    preflight = {
        "Origin": allowed,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-session-id",
    }
    async with http.options(cors_gateway.url + "/v1/chat/completions", headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == allowed
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
        assert int(response.headers["Access-Control-Max-Age"]) > 0
    for origin in (
        "http://localhost:1",
        "http://127.0.0.1:1",
        "https://app.localtest:1",
        "http://localtest:1",
    ):
        async with http.options(
            cors_gateway.url + "/v1/chat/completions", headers={**preflight, "Origin": origin}
        ) as response:
            assert "Access-Control-Allow-Origin" not in response.headers, origin
            assert "Access-Control-Allow-Headers" not in response.headers, origin
        async with http.post(
            cors_gateway.url + "/v1/chat/completions", json=CHAT, headers={**AUTH, "Origin": origin}
        ) as response:
            assert response.status == 200
            assert "Access-Control-Allow-Origin" not in response.headers, origin
    for path, method in (("/v1/chat/completions", "POST"), ("/nowhere", "GET"), ("/health", "GET")):
        headers = {"Origin": "http://x.localtest:9"}
        async with http.request(method, cors_gateway.url + path, headers=headers) as response:
            assert response.status in (401, 404, 200)
            assert response.headers["Access-Control-Allow-Origin"] == "http://x.localtest:9", path
            assert "X-Request-Id" in response.headers["Access-Control-Expose-Headers"]
