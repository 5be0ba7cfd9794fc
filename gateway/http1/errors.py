"""The client's failures (the tree is drawn in the package's docstring)."""


class HTTPError(Exception):
    """The connection or the protocol failed; nothing is said about what the upstream did with the call."""


class ConnectFailed(HTTPError):
    """No connection could be made (refused, unresolvable, TLS handshake, connect timeout)."""


class ProtocolError(HTTPError):
    """The upstream's bytes are not a valid (or acceptably small) HTTP/1.1 answer."""


class Disconnected(HTTPError):
    """The upstream closed the connection before its answer was complete."""


class Stale(Exception):
    """A kept-alive connection was closed by its peer before it read the request: send it on a new one."""
