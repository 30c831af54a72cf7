"""
What the proxy reports about its connections, and a recorder that keeps nothing.

The proxy calls these once per connection event or once per read chunk, never
once per message, so any implementation (see L{gateway.metrics}) stays off the
per-message hot path.
"""

from typing import Protocol

# Close reasons: every accepted connection that is not rejected ends with one.
CLIENT_CLOSED = "client_closed"
BACKEND_CLOSED = "backend_closed"
IDLE_TIMEOUT = "idle_timeout"
# The preamble (TLS handshake, PROXY header, ...) outlasted
# --handshake-timeout (SPEC section 9).
HANDSHAKE_TIMEOUT = "handshake_timeout"
PROTOCOL_ERROR = "protocol_error"
BACKEND_UNAVAILABLE = "backend_unavailable"
TLS_ERROR = "tls_error"
SHUTDOWN = "shutdown"

CLOSE_REASONS = (
    CLIENT_CLOSED,
    BACKEND_CLOSED,
    IDLE_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    PROTOCOL_ERROR,
    BACKEND_UNAVAILABLE,
    TLS_ERROR,
    SHUTDOWN,
)

# Which side sent the bytes that broke the rules.
CLIENT = "client"
BACKEND = "backend"


class ListenerStats(Protocol):
    """
    Events of the connections accepted by one listener.
    """

    def accepted(self) -> None:
        """
        A connection was accepted (it may still be rejected at once).
        """

    def rejected(self, reason: str = "limit") -> None:
        """
        An accepted connection was closed at once, for C{reason}: C{limit}
        (the connection limit), C{per_source_limit}, C{rate_limit} or
        C{denied}.
        """

    def closed(self, reason: str, duration: float) -> None:
        """
        A connection that was not rejected has ended, for C{reason}.
        """

    def upstream(self, messages: int, payloadBytes: int) -> None:
        """
        C{messages} client messages went to the backend in one chunk.
        """

    def downstream(self, messages: int, payloadBytes: int) -> None:
        """
        C{messages} backend messages went to the client in one chunk.
        """

    def protocolError(self, peer: str, reason: str) -> None:
        """
        C{peer} (L{CLIENT} or L{BACKEND}) sent bytes that broke the framing.
        """

    def tlsHandshakeFailed(self) -> None:
        """
        A TLS handshake failed or never completed.
        """


class BackendStats(Protocol):
    """
    Events of the connections made to one backend.
    """

    def connected(self, seconds: float) -> None:
        """
        A connection to the backend was established after C{seconds}.
        """

    def connectFailed(self) -> None:
        """
        A connection attempt to the backend failed or timed out.
        """

    def checked(self, result: str) -> None:
        """
        An active health check ended with C{result}, C{success} or
        C{failure} (L{gateway.health.HealthStats}).
        """

    def setUp(self, up: bool) -> None:
        """
        The backend's health checks say it is now up (C{True}) or down.
        """


class Recorder(Protocol):
    """
    Hands out the per-listener and per-backend event sinks.
    """

    def listener(self, name: str) -> ListenerStats: ...

    def backend(self, name: str) -> BackendStats: ...

    def setDraining(self, draining: bool) -> None:
        """
        The gateway has started draining (True), or is not draining.
        """


class _Nothing:
    """
    Every event of L{ListenerStats} and L{BackendStats}, ignored.

    Real methods rather than a catch-all C{__getattr__}: two of them are
    called per read chunk, and a failed attribute lookup that ends in
    C{__getattr__} costs several times an ordinary call.
    """

    def accepted(self) -> None:
        pass

    def rejected(self, reason: str = "limit") -> None:
        pass

    def closed(self, reason: str, duration: float) -> None:
        pass

    def upstream(self, messages: int, payloadBytes: int) -> None:
        pass

    def downstream(self, messages: int, payloadBytes: int) -> None:
        pass

    def protocolError(self, peer: str, reason: str) -> None:
        pass

    def tlsHandshakeFailed(self) -> None:
        pass

    def connected(self, seconds: float) -> None:
        pass

    def connectFailed(self) -> None:
        pass

    def checked(self, result: str) -> None:
        pass

    def setUp(self, up: bool) -> None:
        pass


_NOTHING = _Nothing()


class NoRecorder:
    """
    A L{Recorder} that keeps nothing, for when metrics are disabled.
    """

    def listener(self, name: str) -> ListenerStats:
        return _NOTHING

    def backend(self, name: str) -> BackendStats:
        return _NOTHING

    def setDraining(self, draining: bool) -> None:
        pass
