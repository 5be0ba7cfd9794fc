"""A lean HTTP/1.1 client for provider calls: a keep-alive pool of asyncio protocols parsed by llhttp.

aiohttp's client spends about four times the CPU of the rest of a proxied call's upstream leg on request
objects, tracing hooks, cookie handling and timers the gateway does not use. This client does what a
provider call needs and no more: one write per request, an answer parsed in the protocol's callbacks
(`httptools`, the llhttp parser Node.js uses), its body handed over as it arrives: to a reader awaiting
`readany()`, or (`pump`) to a sink called from the protocol's own callback, so relaying a stream wakes no
task per chunk.

Every byte from an upstream is hostile until proven small: the header section and trailers are capped, a
body is buffered only up to a high-water mark before the socket stops being read, compressed bodies are
inflated a bounded piece at a time as they are consumed, and nothing is ever redirected (a 3xx is just a
status). `Pool` (pool.py) owns the connections, `Connection` (connection.py) one socket and its parser,
`Response` (response.py) one answer's body, `EndPacer` (pacer.py) the wake-ups of relayed bodies that
end. The failures, all raised as the client's own:

    HTTPError            the connection or the protocol failed
    ├── ConnectFailed    no connection: refused, unresolvable, TLS, connect timeout, pool closed
    ├── ProtocolError    not valid (or not acceptably small) HTTP/1.1, a header that would split the head
    └── Disconnected     the upstream closed the connection before its answer was complete

`gateway.upstream` maps them, with timeouts, onto the gateway's own errors.
"""

from gateway.http1.errors import ConnectFailed, Disconnected, HTTPError, ProtocolError
from gateway.http1.pool import Pool
from gateway.http1.response import Response, Sink

__all__ = ["ConnectFailed", "Disconnected", "HTTPError", "Pool", "ProtocolError", "Response", "Sink"]
