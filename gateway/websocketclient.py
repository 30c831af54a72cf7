"""
WebSocket clients (SPEC section 10) in a pair: the settings, and the
directions that carry a WebSocket client's frames.

The frames themselves are L{gateway.codec.websocket}'s; this module adapts
them to the pair's per-chunk path in L{gateway.proxy}:

  - L{WebSocketUpstream} reads a chunk of client frames into every message
    it completes, writes them to the backend with one call, writes the
    pongs (or the Close of an error) owed to the client with another, and
    reports a client's Close frame as the end of its stream (a half-close).
  - L{WebSocketDownstream} is an ordinary L{Direction} whose encoder is the
    client's L{ClientWebSocket}; when the backend ends its stream, the
    client gets a Close frame (1000) where a TCP client gets a FIN.

Backpressure: besides the usual pair of producers, the client's own
writes hold back its reading. The gateway answers every ping, so a client
that pings without reading its pongs would otherwise grow the gateway's
buffer for it without bound; instead, once the client's transport is full,
the gateway stops reading the client until it has taken the bytes. Reading
the client is paused while either holds (the backend is full, the client
is full), which L{ReadGate} keeps apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IPushProducer, ITransport
from zope.interface import implementer

from gateway import stats, writethrough
from gateway.codec import Framing, FramingError, Translator
from gateway.codec.websocket import (
    MESSAGE_TYPES,
    NORMAL_CLOSURE,
    ClientClosed,
    ClientWebSocket,
    WebSocketUpgrade,
)
from gateway.proxy import Direction

__all__ = [
    "CLOSE_TIMEOUT",
    "MESSAGE_TYPES",
    "ReadGate",
    "WebSocketDownstream",
    "WebSocketSettings",
    "WebSocketUpstream",
    "checkOrigin",
    "checkPath",
]

# Seconds the gateway's Close and what was written before it may take to
# reach the client before the connection is aborted: websockets' own
# close_timeout, and long enough for a browser on a slow link.
CLOSE_TIMEOUT = 10.0

# RFC 6454 section 6.2: an origin is scheme "://" host [":" port], which is
# what browsers send as Origin (lower case), or "null".
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?")


def checkOrigin(origin: str) -> str | None:
    """
    What is wrong with C{origin} as an allowed C{Origin} value, or None.

    The gateway compares a request's C{Origin} with the allowed ones
    exactly, so a value a browser never sends (a path, a trailing slash,
    upper case, a port out of range) could never match.
    """
    if origin == "null":
        return None
    match = _ORIGIN.fullmatch(origin)
    if match is None:
        return (
            "an origin is scheme://host or scheme://host:port in lower case,"
            " with no path, as a browser sends it (https://app.example.com)"
        )
    port = match.group(2)
    if port is not None and not 0 < int(port[1:]) < 65536:
        return f"port {port[1:]} is not 1 to 65535"
    return None


def checkPath(path: str) -> str | None:
    """
    What is wrong with C{path} as the upgraded request path, or None.
    """
    if not path.startswith("/"):
        return "a request path starts with /"
    if any(c in path for c in "?# ") or not path.isprintable():
        return "a request path has no query, fragment, space or control character"
    return None


@dataclass(frozen=True)
class WebSocketSettings:
    """
    How a listener's WebSocket clients are served (SPEC section 10).

    @ivar path: the request path that is upgraded.
    @ivar origins: the allowed C{Origin} values; empty allows any.
    @ivar messageType: C{"binary"} or C{"text"}, for messages to clients.
    @ivar maxSize: the longest whole message, in bytes.
    """

    path: str = "/"
    origins: tuple[str, ...] = ()
    messageType: str = "binary"
    maxSize: int = 65536
    closeTimeout: float = CLOSE_TIMEOUT

    def upgrade(self) -> WebSocketUpgrade:
        """
        A new client's upgrade request reader.
        """
        return WebSocketUpgrade(self.path, self.origins or None)

    def directions(
        self,
        client: ITransport,
        backendFraming: Framing,
        upstream: Callable[[int, int], None],
        downstream: Callable[[int, int], None],
        seconds: Callable[[], float],
        failed: Callable[[str, FramingError], None],
        clientClosed: Callable[[], None],
        sendClose: Callable[[int], None],
    ) -> tuple[ClientWebSocket, WebSocketUpstream, WebSocketDownstream]:
        """
        A new client's frames and its pair's two directions.

        @param client: the client's transport.
        @param upstream: counts messages and payload bytes sent upstream
            (as C{downstream} does downstream), once per chunk.
        @param failed: called with the peer and the error when a side
            breaks the rules.
        @param clientClosed: called when the client's Close frame arrives.
        @param sendClose: writes the gateway's Close frame with a code.
        """
        websocket = ClientWebSocket(self.maxSize, self.messageType)
        up = WebSocketUpstream(
            websocket, backendFraming, client, upstream, seconds, failed, clientClosed
        )
        down = WebSocketDownstream(
            websocket, backendFraming, up.gate, downstream, seconds, failed, sendClose
        )
        up.upgrade = self.upgrade()
        return websocket, up, down


class ReadGate:
    """
    Reading one transport, paused while any of several reasons holds.

    A Twisted transport's C{pauseProducing} and C{resumeProducing} do not
    count: the first resume would resume reading while another reason to
    pause still holds.
    """

    __slots__ = ("transport", "reasons")

    def __init__(self, transport: ITransport) -> None:
        self.transport = transport
        # A tuple rather than a set: one per open connection, and empty
        # (the shared empty tuple) nearly always.
        self.reasons: tuple[str, ...] = ()

    def pause(self, reason: str) -> None:
        reasons = self.reasons
        if reason in reasons:
            return
        if not reasons:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.reasons = (*reasons, reason)

    def resume(self, reason: str) -> None:
        reasons = self.reasons
        if reason in reasons:
            self.reasons = tuple(r for r in reasons if r != reason)
            if not self.reasons:
                self.transport.resumeProducing()  # type: ignore[attr-defined]


@implementer(IPushProducer)
class _HoldsReading:
    """
    The client's reading, as the producer of a transport it feeds.
    """

    __slots__ = ("gate", "reason")

    def __init__(self, gate: ReadGate, reason: str) -> None:
        self.gate = gate
        self.reason = reason

    def pauseProducing(self) -> None:
        self.gate.pause(self.reason)

    def resumeProducing(self) -> None:
        self.gate.resume(self.reason)

    def stopProducing(self) -> None:
        self.gate.transport.stopProducing()  # type: ignore[attr-defined]


@implementer(IPushProducer)
class _HoldsBoth:
    """
    The producer of the client's transport: the backend's reading, as for
    any client, and the client's own reading (its pongs).
    """

    __slots__ = ("backend", "gate")

    def __init__(self, backend: ITransport, gate: ReadGate) -> None:
        self.backend = backend
        self.gate = gate

    def pauseProducing(self) -> None:
        self.backend.pauseProducing()  # type: ignore[attr-defined]
        self.gate.pause(stats.CLIENT)

    def resumeProducing(self) -> None:
        self.backend.resumeProducing()  # type: ignore[attr-defined]
        self.gate.resume(stats.CLIENT)

    def stopProducing(self) -> None:
        self.backend.stopProducing()  # type: ignore[attr-defined]


class WebSocketUpstream(Direction):
    """
    The client's WebSocket frames, translated for the backend.

    L{dataReceived} is the per-chunk path, as L{Direction}'s: one chunk of
    client frames gives one write to the backend (every message it
    completes), and at most one write to the client (the pongs it owes, or
    the Close frame of an error).

    @ivar websocket: the client's frames (shared with the downstream).
    @ivar closedByFrame: whether the client's Close frame has arrived.
    @ivar upgrade: the client's upgrade request reader until the upgrade
        has ended, then None (kept here, in a slot, rather than on the
        client protocol, whose attributes are a dict).
    """

    __slots__ = (
        "upgrade",
        "websocket",
        "encoder",
        "client",
        "gate",
        "clientClosed",
        "closedByFrame",
    )

    def __init__(
        self,
        websocket: ClientWebSocket,
        encoder: Framing,
        client: ITransport,
        count: Callable[[int, int], None],
        seconds: Callable[[], float],
        failed: Callable[[str, FramingError], None],
        clientClosed: Callable[[], None],
    ) -> None:
        # The translator is not used: the frames are read here.
        super().__init__(stats.CLIENT, None, count, seconds, failed)
        self.websocket = websocket
        self.encoder = encoder
        self.client = client
        self.gate = ReadGate(client)
        self.clientClosed = clientClosed
        self.closedByFrame = False
        self.upgrade: WebSocketUpgrade | None = None

    def dataReceived(self, data: bytes) -> None:
        """
        Read one chunk of client frames: messages to the backend, replies
        to the client, and the client's Close or error to the pair.
        """
        messages, reply, end = self.websocket.feed(data)
        if messages:
            try:
                out = self.encoder.encode(messages)
            except FramingError as error:
                # A message the backend's framing cannot carry is the
                # client's; the ones before it are delivered.
                messages = error.messages
                out = self.encoder.encode(messages)
                end = error
            target = self.target
            if target is None:
                self._wait(out)
            else:
                writethrough.write(target, out)
            count = len(messages)
            payload = sum(map(len, messages))
            self.messages += count
            self.bytes += payload
            self.count(count, payload)
        if reply:
            # A full client transport pauses its producer (_HoldsBoth),
            # which pauses reading the client too.
            writethrough.write(self.client, reply)
        if end is None:
            self.lastRead = self.seconds()
        elif isinstance(end, ClientClosed):
            self.lastRead = self.seconds()
            self.closedByFrame = True
            self.clientClosed()
        else:
            self.failed(self.peer, end)

    def finish(self) -> bool:
        """
        The client's stream has ended: by its Close frame, or by its TCP
        stream ending (then inside a frame is an error).
        """
        self.ended = True
        if self.closedByFrame:
            return True
        error = self.websocket.finish()
        if error is not None:
            self.failed(self.peer, error)
            return False
        return True

    def link(self, source: ITransport, target: ITransport) -> None:
        """
        As L{Direction.link}, with the client's reading held back through
        the gate rather than paused directly.
        """
        self.source = source
        self.target = target
        target.registerProducer(  # type: ignore[attr-defined]
            _HoldsReading(self.gate, stats.BACKEND), True
        )
        self.feeding = True
        if self.pending:
            writethrough.write(target, b"".join(self.pending))
        self.pending = None


class WebSocketDownstream(Direction):
    """
    The backend's messages, sent to the client as WebSocket frames.

    @ivar websocket: the client's frames (the translator's encoder).
    @ivar gate: the client's reading (the upstream's gate).
    @ivar sendClose: writes the gateway's Close frame with a close code.
    """

    __slots__ = ("websocket", "gate", "sendClose")

    def __init__(
        self,
        websocket: ClientWebSocket,
        decoder: Framing,
        gate: ReadGate,
        count: Callable[[int, int], None],
        seconds: Callable[[], float],
        failed: Callable[[str, FramingError], None],
        sendClose: Callable[[int], None],
    ) -> None:
        super().__init__(
            stats.BACKEND, Translator(decoder, websocket), count, seconds, failed
        )
        self.websocket = websocket
        self.gate = gate
        self.sendClose = sendClose

    def link(self, source: ITransport, target: ITransport) -> None:
        """
        As L{Direction.link}, with a producer that also holds back reading
        the client while the client's transport is full.
        """
        self.source = source
        self.target = target
        target.registerProducer(  # type: ignore[attr-defined]
            _HoldsBoth(source, self.gate), True
        )
        self.feeding = True
        if self.pending:
            writethrough.write(target, b"".join(self.pending))
        self.pending = None

    def shut(self) -> None:
        """
        The backend has ended its stream: the client gets the gateway's
        Close (1000) after what was written, and answers with its own.
        """
        self.unlink()
        self.sendClose(NORMAL_CLOSURE)
