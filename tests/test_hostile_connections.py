"""A client holding connections open, over real loopback sockets: past `server.max_connections` the longest
idle connection of the client holding the most is closed to take the new one in, and a connection whose call
is under way never is. Without the limit, enough silent connections leave a process no descriptor for anyone
else's calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from conftest import AUTH, CHAT, MakeGateway, RunningGateway, gateway_config, until
from fake_upstream import FakeUpstream, Reply
from test_hostile_protocol import connect, read_until_closed

from gateway import connections
from gateway.config import ConfigError, parse_config
from gateway.connections import MOST_BY_DEFAULT, RESERVED_FILES, Connections, client_of, default_limit

LIMIT = 4
Socket = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def small_gateway(make_gateway: MakeGateway, fake_upstream: FakeUpstream) -> RunningGateway:
    return await make_gateway(gateway_config(fake_upstream.url, server={"max_connections": LIMIT}))


async def opened(gateway: RunningGateway, count: int, source: str = "127.0.0.1") -> list[Socket]:
    """`count` connections from `source` that send nothing, each counted by the gateway before the next."""
    counted = gateway.gw.connections
    port = urlsplit(gateway.url).port
    sockets = []
    for _ in range(count):
        before = counted.open + counted.closed_idle  # a newcomer adds to one or the other, or to both
        sockets.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)))
        await until(lambda seen=before: counted.open + counted.closed_idle > seen, what="a newcomer counted")
    return sockets


async def is_closed(socket: Socket, within: float = 2.0) -> bool:
    """Whether the gateway closes the connection within `within` seconds."""
    try:
        await read_until_closed(socket[0], within)
    except TimeoutError:
        return False
    return True


def close_all(sockets: list[Socket]) -> None:
    for _, writer in sockets:
        writer.close()


async def test_past_the_limit_the_connection_idle_longest_is_closed_for_the_new_one(
    small_gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    sockets = await opened(small_gateway, LIMIT)
    try:
        async with http.post(small_gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
            assert response.status == 200
            assert (await response.json())["choices"][0]["message"]["content"]
        assert await is_closed(sockets[0])
        assert [await is_closed(s, 0.3) for s in sockets[1:]] == [False] * (LIMIT - 1)
        assert small_gateway.gw.connections.open == LIMIT
        async with http.get(small_gateway.url + "/health", headers=AUTH) as response:
            health = await response.json()
        assert health["connections"] == {"open": LIMIT, "limit": LIMIT, "closed_idle": 1}
        async with http.get(small_gateway.url + "/metrics") as response:
            metrics = await response.text()
        assert f"gateway_client_connections {LIMIT}.0" in metrics
        assert "gateway_client_connections_closed_idle_total 1.0" in metrics
    finally:
        close_all(sockets)


async def test_the_client_holding_the_most_connections_loses_one_first(
    small_gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """Another loopback address is another client: its newer connections go before this one's older one."""
    mine = await opened(small_gateway, 1)
    theirs = await opened(small_gateway, LIMIT - 1, source="127.0.0.2")
    try:
        async with http.get(small_gateway.url + "/livez") as response:
            assert response.status == 200
        assert await is_closed(theirs[0])
        assert [await is_closed(s, 0.3) for s in [*mine, *theirs[1:]]] == [False] * (LIMIT - 1)
    finally:
        close_all([*mine, *theirs])


async def test_a_connection_sending_its_headers_slowly_is_idle_and_goes_first(
    small_gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    slow = await connect(small_gateway.url)
    slow[1].write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nX-Slow: a")
    sockets = [slow, *await opened(small_gateway, LIMIT - 1)]
    try:
        async with http.get(small_gateway.url + "/livez") as response:
            assert response.status == 200
        assert await is_closed(slow)
        assert not await is_closed(sockets[1], 0.3)
    finally:
        close_all(sockets)


async def test_a_keep_alive_connection_is_idle_again_once_answered(
    small_gateway: RunningGateway,
) -> None:
    kept = await connect(small_gateway.url)
    kept[1].write(b"GET /livez HTTP/1.1\r\nHost: gateway\r\n\r\n")
    assert (await kept[0].readuntil(b"ok")).startswith(b"HTTP/1.1 200")
    others = await opened(small_gateway, LIMIT)  # the last of them takes the answered one's place
    try:
        assert await is_closed(kept)
        assert [await is_closed(s, 0.3) for s in others] == [False] * LIMIT
    finally:
        close_all([kept, *others])


async def test_a_stream_under_way_is_never_closed_for_a_new_connection(
    small_gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.gate = asyncio.Queue()
    fake_upstream.gate.put_nowait(None)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    sockets: list[Socket] = []
    try:
        async with http.post(small_gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
            first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
            # Twice the limit in silent connections: each new one takes the place of the one idle longest.
            sockets = await opened(small_gateway, 2 * LIMIT)
            await until(lambda: small_gateway.gw.connections.open == LIMIT)
            assert small_gateway.gw.connections.closed_idle == LIMIT + 1
            for _ in range(50):
                fake_upstream.gate.put_nowait(None)
            rest = await asyncio.wait_for(response.read(), 5)
        assert first + rest == b"".join(fake_upstream.requests[0]["sent"])
        assert rest.endswith(b"data: [DONE]\n\n")
        closed = [await is_closed(s, 0.3) for s in sockets]
        assert closed == [True] * (LIMIT + 1) + [False] * (LIMIT - 1)
    finally:
        close_all(sockets)


async def test_when_every_other_connection_is_busy_the_new_one_is_closed(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(gateway_config(fake_upstream.url, server={"max_connections": 1}))
    fake_upstream.gate = asyncio.Queue()
    fake_upstream.gate.put_nowait(None)
    body = {**CHAT, "stream": True}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        newcomer = await connect(gateway.url)
        try:
            newcomer[1].write(b"GET /livez HTTP/1.1\r\nHost: gateway\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                await newcomer[1].drain()
            assert await is_closed(newcomer)
        finally:
            newcomer[1].close()
        for _ in range(50):
            fake_upstream.gate.put_nowait(None)
        assert (await asyncio.wait_for(response.read(), 5)).endswith(b"data: [DONE]\n\n")
    assert gateway.gw.connections.closed_idle == 1


async def test_a_connection_with_an_answer_in_its_write_buffer_is_passed_over(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    """A client reading a large answer slowly: its connection is not closed for another while the answer
    waits in the write buffer."""
    gateway = await make_gateway(gateway_config(fake_upstream.url, server={"max_connections": 2}))
    text = "word " * 2_400_000  # 12 MB: more than the socket buffers on both sides hold
    fake_upstream.queue(Reply(content=text))
    body = orjson.dumps(CHAT)
    slow = await connect(gateway.url)
    slow[1].write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        + f"Authorization: {AUTH['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = await asyncio.wait_for(slow[0].readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await until(lambda: gateway.recorder.responses(), what="the handler's end")
    await asyncio.sleep(0.1)  # its answer handed to aiohttp, most of it waiting in the write buffer
    others = await opened(gateway, 3)  # two of them closed in turn, the answer's connection passed over
    try:
        assert gateway.gw.connections.closed_idle == 2
        received = b""
        while len(received) < length:
            received += await asyncio.wait_for(slow[0].read(1 << 20), 5)
        assert orjson.loads(received)["choices"][0]["message"]["content"] == text
        # The two connections truly idle went: closing the answer's would have freed nothing before it left.
        assert [await is_closed(s, 0.3) for s in others] == [True, True, False]
    finally:
        close_all([slow, *others])


@pytest.mark.parametrize(
    ("soft", "limit"),
    [
        (20_000, (20_000 - RESERVED_FILES) // 2),
        (1_024, (1_024 - RESERVED_FILES) // 2),
        (1_048_576, MOST_BY_DEFAULT),
        (resource.RLIM_INFINITY, MOST_BY_DEFAULT),
        (300, 22),
        (100, 1),
    ],
)
def test_the_default_limit_follows_the_open_files_limit(
    soft: int, limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connections.resource, "getrlimit", lambda _: (soft, resource.RLIM_INFINITY))
    assert default_limit() == limit


async def test_the_limit_defaults_to_the_open_files_limit_and_a_negative_one_is_refused(
    gateway: RunningGateway,
) -> None:
    assert gateway.gw.connections.limit == default_limit()
    with pytest.raises(ConfigError, match=r"server\.max_connections"):
        parse_config(gateway_config("http://127.0.0.1:1", server={"max_connections": -1}))


class FakeTransport:
    def __init__(self, peer: object, buffered: int = 0) -> None:
        self.peer, self.buffered = peer, buffered

    def get_extra_info(self, name: str) -> object:
        return self.peer if name == "peername" else None

    def get_write_buffer_size(self) -> int:
        return self.buffered


class FakeHandler:
    """What `Connections` reads of aiohttp's connection handler."""

    def __init__(self, peer: object, buffered: int = 0) -> None:
        self.transport: FakeTransport | None = FakeTransport(peer, buffered)
        self.closed = False

    def force_close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        (("10.0.0.7", 51000), "10.0.0.7"),
        (("::ffff:10.0.0.7", 51000, 0, 0), "::ffff:10.0.0.7"),  # IPv4 seen through IPv6: the address
        (("2001:db8:1:2::7", 51000, 0, 0), bytes.fromhex("20010db800010002")),  # IPv6: its /64
        (("2001:db8:1:2:ffff:ffff:ffff:ffff", 1, 0, 0), bytes.fromhex("20010db800010002")),
        (("fe80::1%eth0", 51000, 0, 2), bytes.fromhex("fe80000000000000")),
        ("/run/gateway.sock", ""),  # a Unix socket
        (None, ""),
    ],
)
def test_a_client_is_an_address_or_an_ipv6_64(peer: object, client: str | bytes) -> None:
    assert client_of(FakeHandler(peer)) == client


def test_connections_are_counted_by_client_and_the_heaviest_loses_its_longest_idle() -> None:
    closed: list[int] = []
    counted = Connections(limit=5, on_close=lambda: closed.append(1))
    a = [FakeHandler(("10.0.0.1", port)) for port in range(2)]
    b = [FakeHandler(("10.0.0.2", port)) for port in range(3)]
    for handler in [*a, *b]:
        counted.opened(handler)
    idle = counted.busy(b[0])
    b[1].transport.buffered = 100  # an answer still being written
    newcomer = FakeHandler(("10.0.0.1", 9))
    counted.opened(newcomer)
    assert [h.closed for h in [*a, *b, newcomer]] == [False, False, False, False, True, False]
    assert (counted.open, counted.closed_idle, closed) == (6, 1, [1])
    counted.lost(b[2])
    # b holds 2 now, a 3: a's longest idle goes next.
    counted.opened(FakeHandler(("10.0.0.3", 1)))
    assert [h.closed for h in a] == [True, False]
    for handler in [*a, *b[:2], newcomer]:
        counted.lost(handler)
    assert counted.open == 1 and closed == [1, 1]
    assert idle == {}  # what the server would put b[0] back in: b's idle connections, none left
