"""
The translating proxy: every client connection gets its own backend connection.

The Twisted protocols here adapt bytes and events to a pair's life, which is
kept in L{gateway.pair} (its phases, which event is legal when, the close
reason), and do what it decides.

Bytes are translated per read chunk, outside that machine: a protocol's
C{dataReceived} is its L{Direction}'s, which decodes the chunk into all the
messages it completes, encodes them for the other side and writes them with
one call. Each transport is the streaming producer of the other, so a side
that cannot keep up stops the gateway reading from the side that feeds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from gateway import progress, stats, writethrough
from gateway.addresses import describe
from gateway.admission import Admission, Refusal, Ticket
from gateway.backends import BackendConnection, BackendConnector
from gateway.codec import ChunkTranslator, Framing, FramingError, Translator, translator
from gateway.codec._base import MALFORMED
from gateway.codec.websocket import (
    DENIED,
    GOING_AWAY,
    INTERNAL_ERROR,
    NORMAL_CLOSURE,
    PROTOCOL_ERROR,
    Refused,
)
from gateway.pair import FIRST_BYTE, TLS_HANDSHAKE, WEBSOCKET_UPGRADE, Pair, Phase
from gateway.pair import PROXY_HEADER as PROXY_HEADER_STEP
from gateway.proxyprotocol import PROXY_HEADER, IProxyHeaderReceiver
from gateway.proxytlv import ClientTLS, clientTLS, v2SSLHeader
from gateway.refusals import RefusalLog
from gateway.tls import connectionInfo, failureReason, refusedClient

if TYPE_CHECKING:
    # gateway.websocketclient builds on this module.
    from gateway.websocketclient import WebSocketSettings

__all__ = [
    "CLOSED_FORMAT",
    "BackendFactory",
    "BackendProtocol",
    "ClientProtocol",
    "Connections",
    "Direction",
    "ProxyFactory",
    "Translator",
    "describeTLS",
    "noDelay",
    "prerendered",
]


def noDelay(transport: ITransport) -> None:
    """
    Turn Nagle's algorithm off on the TCP connection under C{transport}, if
    there is one. Each read chunk is already written in one go; Nagle would
    only hold a short reply back until the previous one is acknowledged.
    """
    try:
        transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        # A UNIX socket (under TLS or not), or another kind of transport.
        pass


# The reason a connection refused over the connection limit is counted
# (C{gateway_connections_rejected_total}) and logged under.
REFUSED_LIMIT = "limit"

# The close code of the gateway's Close frame to a WebSocket client, by the
# pair's close reason (SPEC section 10); a protocol error's code depends on
# the side that made it, and a client's error has sent its own already.
_CLOSE_CODES = {
    stats.CLIENT_CLOSED: NORMAL_CLOSURE,
    stats.BACKEND_CLOSED: NORMAL_CLOSURE,
    stats.IDLE_TIMEOUT: GOING_AWAY,
    stats.SHUTDOWN: GOING_AWAY,
    stats.BACKEND_UNAVAILABLE: INTERNAL_ERROR,
}
_PROTOCOL_ERROR_CODES = {stats.CLIENT: PROTOCOL_ERROR, stats.BACKEND: INTERNAL_ERROR}

# Builds the TLS part of a close line from the client's TLS transport,
# whether its handshake completed, and what ended the connection.
DescribeTLS = Callable[[ITransport, bool, "Failure | None"], str]


def describeTLS(
    transport: ITransport, handshakeDone: bool, lostBecause: Failure | None
) -> str:
    """
    The TLS part of a close line, starting with a space: C{" TLSv1.3
    TLS_AES_256_GCM_SHA384 sni=gw.example client="CN=alice"} after a
    handshake (L{gateway.tls.connectionInfo}), C{" (http request)"}
    (OpenSSL's reason, L{gateway.tls.failureReason}) after a failed one;
    empty when there is nothing to say.
    """
    if not handshakeDone:
        reason = failureReason(lostBecause)
        detail = f" ({reason})" if reason else ""
        # A certificate refused for its names (--tls-client-name).
        subject = refusedClient(transport)
        if subject is not None:
            detail += f' client="{subject}"'
        return detail
    info = connectionInfo(transport)
    return f" {info}" if info is not None else ""


# The close line, one per pair (SPEC section 6), as documented in
# docs/troubleshooting.rst.
CLOSED_FORMAT = (
    "closed {listener} {client} via {backend} after {duration:.3f}s:"
    " {messagesUp} messages ({bytesUp} bytes) up,"
    " {messagesDown} messages ({bytesDown} bytes) down,"
    " {reason}{closeCodeText}{tls}"
)


def prerendered(template: str, fields: dict[str, object]) -> str:
    """
    The log format of an event whose text is C{template} filled with
    C{fields}, rendered now: the text itself, its braces doubled, so that
    twisted.logger's formatting (a pure-Python PEP 3101 formatter, walking
    every field again for each observer) has no field left to fill. The
    fields still go on the event as keys, for the JSON log.

    The text is the one twisted.logger would render: C{str.format} applies
    the same format specs and the same C{format(value, spec)} per field.
    """
    return template.format_map(fields).replace("{", "{{").replace("}", "}}")


def _canHalfClose(transport: ITransport) -> bool:
    if isinstance(transport, TLSMemoryBIOProtocol):
        # Twisted's TLS layer has no loseWriteConnection of its own: the name
        # would reach past TLS to the socket under it, so such a connection
        # (a TLS backend) ends as a whole once what was written is sent.
        # gateway.tls's server side defines one that sends close_notify.
        return hasattr(type(transport), "loseWriteConnection")
    return hasattr(transport, "loseWriteConnection")


def _shutWrite(transport: ITransport) -> None:
    # Its producer must be gone first: a transport that drains its buffer
    # with a paused producer resumes that producer instead of shutting down.
    if _canHalfClose(transport):
        transport.loseWriteConnection()  # type: ignore[attr-defined]
    else:
        transport.loseConnection()


class Connections:
    """
    Every open client connection of the gateway, across all listeners.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: set[ClientProtocol] = set()
        self._emptyWaiters: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[ClientProtocol]:
        return iter(self._open)

    def full(self) -> bool:
        return len(self._open) >= self.limit

    def add(self, connection: ClientProtocol) -> None:
        self._open.add(connection)

    def remove(self, connection: ClientProtocol) -> None:
        self._open.discard(connection)
        if not self._open:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def whenEmpty(self) -> Deferred[None]:
        """
        A Deferred that fires once no connection is open.
        """
        if not self._open:
            return Deferred.fromCoroutine(_nothing())
        waiter: Deferred[None] = Deferred(self._emptyWaiters.remove)
        self._emptyWaiters.append(waiter)
        return waiter

    def closeAll(self, reason: str) -> None:
        """
        End every open connection now, for C{reason}.
        """
        for connection in list(self._open):
            connection.abort(reason)


async def _nothing() -> None:
    return None


def _drop(data: bytes) -> None:
    """
    Where a side's bytes go once its pair has ended: nowhere.
    """


class Direction:
    """
    One direction of a pair: the bytes one side sends, translated for the
    other. A pair has two, upstream (client to backend) and downstream.

    L{dataReceived} is the per-chunk path: the receiving protocol's own
    C{dataReceived} is this bound method while the pair is open, so a chunk
    costs a call to it, the translation, one write and one count.

    @ivar peer: the side whose bytes this direction reads (L{stats.CLIENT}
        or L{stats.BACKEND}), blamed for a framing error.
    @ivar target: the transport the translation is written to; None until
        the backend is connected, when translations wait in C{pending}.
    @ivar messages: messages sent on so far. C{bytes}: their payload bytes.
    @ivar lastRead: when the last chunk was read (the clock's seconds).
    @ivar ended: whether the sending side has ended its stream.
    """

    # Two per open connection: slots keep them small.
    __slots__ = (
        "peer",
        "translator",
        "count",
        "seconds",
        "failed",
        "pending",
        "messages",
        "bytes",
        "lastRead",
        "target",
        "source",
        "feeding",
        "ended",
    )

    def __init__(
        self,
        peer: str,
        translator: ChunkTranslator,
        count: Callable[[int, int], None],
        seconds: Callable[[], float],
        failed: Callable[[str, FramingError], None],
    ) -> None:
        self.peer = peer
        self.translator = translator
        self.count = count
        self.seconds = seconds
        self.failed = failed
        self.pending: list[bytes] | None = None
        self.messages = self.bytes = 0
        self.lastRead = seconds()
        self.target: ITransport | None = None
        self.source: ITransport | None = None
        self.feeding = False
        self.ended = False

    def dataReceived(self, data: bytes) -> None:
        """
        Translate one chunk from the source and write it to the target (or
        keep it until there is one); a framing error goes to C{failed}.
        """
        out, messages, payload, error = self.translator.feed(data)
        if messages:
            target = self.target
            if target is None:
                self._wait(out)
            else:
                writethrough.write(target, out)
            self.messages += messages
            self.bytes += payload
            self.count(messages, payload)
        if error is None:
            self.lastRead = self.seconds()
        else:
            self.failed(self.peer, error)

    def finish(self) -> bool:
        """
        The sending side ended its stream: send on what is left of it.

        @return: False when what was left broke the framing (then reported
            through C{failed}).
        """
        self.ended = True
        out, messages, payload, error = self.translator.finish()
        if messages:
            if self.target is None:
                self._wait(out)
            else:
                writethrough.write(self.target, out)
            self.messages += messages
            self.bytes += payload
            self.count(messages, payload)
        if error is not None:
            self.failed(self.peer, error)
            return False
        return True

    def _wait(self, out: bytes) -> None:
        # Before the backend is connected: kept until L{link}.
        if self.pending is None:
            self.pending = []
        self.pending.append(out)

    def link(self, source: ITransport, target: ITransport) -> None:
        """
        Start writing to C{target} what is read from C{source}, which
        becomes C{target}'s streaming producer; send what waited (the
        first message of a client that sends at once, usually), through
        the same write-through path as every chunk after it.
        """
        self.source = source
        self.target = target
        target.registerProducer(source, True)  # type: ignore[attr-defined]
        self.feeding = True
        if self.pending:
            writethrough.write(target, b"".join(self.pending))
        self.pending = None

    def unlink(self) -> None:
        """
        The source stops being the target's producer: the target must not
        resume it any more (it will send nothing, or the pair is closing).
        """
        if self.feeding:
            self.feeding = False
            self.target.unregisterProducer()  # type: ignore[union-attr]

    def shut(self) -> None:
        """
        The source has ended: so does the target's write half, once what
        was written to it is sent.
        """
        self.unlink()
        _shutWrite(self.target)  # type: ignore[arg-type]


@implementer(IHalfCloseableProtocol)
class BackendProtocol(Protocol):
    """
    The backend end of a pair: hands every event to its client protocol.

    Its bytes go straight to the pair's downstream L{Direction} once the pair
    has taken it (see L{ClientProtocol.relay}); before that, and if the pair
    ended while it was connecting, they are dropped.

    @ivar ready: fires with this protocol once the connection can carry
        messages: at once over TCP, once the backend's certificate is verified
        over TLS. It fails with the reason when the connection ends before,
        and the client never hears of that connection; cancelling it aborts
        the connection.
    """

    # Whether the pair took this connection: its events are the pair's.
    joined = False
    # Made when first asked for (a plain TCP backend's pool never asks,
    # and a Deferred is a few hundred bytes of every idle pair); until then
    # _readyResult says how it would have fired: None while it has not.
    _ready: Deferred[BackendProtocol] | None = None
    _readyResult: BackendProtocol | Failure | None = None

    def __init__(self, client: ClientProtocol, backendName: str) -> None:
        self.client = client
        self.backendName = backendName

    @property
    def ready(self) -> Deferred[BackendProtocol]:
        if self._ready is None:
            self._ready = Deferred(self._cancelReady)
            if self._readyResult is not None:
                self._ready.callback(self._readyResult)
        return self._ready

    def _cancelReady(self, ready: Deferred[BackendProtocol]) -> None:
        self.transport.abortConnection()

    def _fireReady(self, result: BackendProtocol | Failure) -> None:
        if self._ready is None:
            self._readyResult = result
        else:
            self._ready.callback(result)

    def connectionMade(self) -> None:
        noDelay(self.transport)
        if isinstance(self.transport, TLSMemoryBIOProtocol):
            # Nothing is written to a TLS backend before its handshake is
            # done, so one that fails verification never sees a message.
            # Declared here, not on the class: Twisted's endpoints keep only
            # one of IHalfCloseableProtocol and IHandshakeListener on the
            # protocol wrapper they put around one that provides both, and
            # a TCP backend's half-close would be lost.
            alsoProvides(self, IHandshakeListener)
        else:
            self.handshakeCompleted()

    def handshakeCompleted(self) -> None:
        self.client.backendConnected(self)
        self._fireReady(self)

    def dataReceived(self, data: bytes) -> None:
        # Replaced by the downstream direction's as the pair starts relaying,
        # within the connect's own event, before any byte can be read.
        pass

    def readConnectionLost(self) -> None:
        if self.joined:
            self.client.pair.streamEnded(stats.BACKEND)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.joined:
            self.client.pair.lost(stats.BACKEND)
        elif self._readyResult is None and not (self._ready and self._ready.called):
            self._fireReady(reason)


class BackendFactory(Factory):
    """
    Builds the one backend protocol of one client connection; as a
    L{gateway.backends.BackendConnector}, one factory per backend tried.
    """

    noisy = False

    def __init__(
        self, client: ClientProtocol, backendName: str = "", proxyHeader: bytes = b""
    ) -> None:
        self.client = client
        self.backendName = backendName
        # Written first on the backend connection, under any TLS, by
        # gateway.headerfirst.HeaderFirstEndpoint.
        self.proxyHeader = proxyHeader

    def factoryFor(self, backendName: str) -> BackendFactory:
        return BackendFactory(self.client, backendName, self.proxyHeader)

    def buildProtocol(self, addr: IAddress) -> BackendProtocol:
        return BackendProtocol(self.client, self.backendName)


@implementer(IHalfCloseableProtocol, IHandshakeListener, IProxyHeaderReceiver)
class ClientProtocol(Protocol):
    """
    The client end of a pair: adapts Twisted's events to the pair's
    L{gateway.pair.Pair}, which holds its life, and does what the pair
    decides (L{gateway.pair.PairIO}).

    Admission (L{gateway.admission}) is asked as the connection is
    accepted, before anything is read or sent on it, or, behind a PROXY
    header, as soon as the header names the real client; a refused
    connection closes at once and counts only as rejected. The preamble's
    deadline (C{--handshake-timeout}) is the pair's.

    The idle timeout is checked lazily: a read chunk only writes down the
    time, and the timer, when it fires, either ends the pair or re-arms
    itself for the rest of the wait. (Moving a timer on every chunk, as
    L{twisted.protocols.policies.TimeoutMixin} does, costs a method call and
    the reactor's rescheduling per chunk.) Writes that made progress count
    too: the timer also asks each connection how many bytes its peer has
    taken (L{gateway.progress}), and more than the time before is activity,
    dated when the timer sees it: so a pair whose peers stop taking bytes
    ends between one and two idle timeouts after they stopped.
    """

    factory: ProxyFactory
    pair: Pair
    backend: BackendProtocol | None = None
    backendName = ""
    rejected = False
    # The client's hold on its source's per-source count (admission).
    _ticket: Ticket | None = None
    # The client's TLS session, for a v2-ssl PROXY header.
    _clientTLS: ClientTLS | None = None
    _connecting: Deferred[BackendConnection] | None = None
    _idleCall: IDelayedCall | None = None
    _lostBecause: Failure | None = None
    _tlsSession = ""
    # A WebSocket client's: its frames, the side whose protocol error ended
    # the pair (for the close code), and the timer that aborts a connection
    # whose Close frame has not gone out in time.
    websocket = None
    _errorPeer = stats.CLIENT
    _closeCall: IDelayedCall | None = None
    # What the client and the backend had taken (each connection's count
    # starts at 0) when the idle timer last saw either grow, and when.
    _delivered = (0, 0)
    _lastDelivery = 0.0

    def connectionMade(self) -> None:
        factory = self.factory
        self.stats = factory.stats
        self.stats.accepted()
        if factory.connections.full():
            self._refuseAtOnce(REFUSED_LIMIT)
            return
        if not factory.proxyHeader and factory.admission is not None:
            # Checked before anything else happens on the connection: under
            # TLS, nothing has been read or sent yet.
            decision = factory.admission.admit(self.transport.getPeer())
            if isinstance(decision, Refusal):
                self._refuseAtOnce(decision.reason)
                return
            self._ticket = decision
        factory.connections.add(self)
        noDelay(self.transport)
        clock = factory.clock
        self.clock = clock
        self.startedAt = clock.seconds()
        self.clientAddress = describe(self.transport.getPeer())
        # Bound methods made once per listener (each is an object per pair
        # otherwise), but for the one that names this pair.
        bound = factory.bound
        if bound is None:
            bound = factory.bound = (
                clock.seconds,
                self.stats.upstream,
                self.stats.downstream,
            )
        seconds, countUp, countDown = bound
        failed = self._protocolError
        steps = []
        if factory.proxyHeader:
            steps.append(PROXY_HEADER_STEP)
        if factory.tls:
            steps.append(TLS_HANDSHAKE)
        webSocket = factory.websocket
        if webSocket is None:
            self.upstream = Direction(
                stats.CLIENT,
                translator(factory.clientFraming, factory.backendFraming),
                countUp,
                seconds,
                failed,
            )
            self.downstream = Direction(
                stats.BACKEND,
                translator(factory.backendFraming, factory.clientFraming),
                countDown,
                seconds,
                failed,
            )
            # The per-chunk path, straight to the translation.
            self.dataReceived = self.upstream.dataReceived  # type: ignore[method-assign]
        else:
            self.websocket, self.upstream, self.downstream = webSocket.directions(
                self.transport,
                factory.backendFraming,
                countUp,
                countDown,
                seconds,
                failed,
                self._clientCloseFrame,
                self._sendClose,
            )
            self.dataReceived = self._upgradeBytes  # type: ignore[method-assign]
            steps.append(WEBSOCKET_UPGRADE)
        if factory.idleTimeout:
            self._idleCall = clock.callLater(factory.idleTimeout, self._idleCheck)
        self.pair = Pair(self, tuple(steps), clock, factory.handshakeTimeout)
        self.pair.start()

    def _refuseAtOnce(self, reason: str) -> None:
        """
        Refuse the connection as it is accepted, before any pair exists:
        counted as rejected only, logged by the refusal log, closed.
        """
        self.rejected = True
        self.stats.rejected(reason)
        factory = self.factory
        factory.refusals.refused(
            factory.name, reason, describe(self.transport.getPeer())
        )
        self.transport.loseConnection()

    # Twisted's events, handed to the pair.

    def dataReceived(self, data: bytes) -> None:
        # Replaced per connection (connectionMade); a rejected one's bytes
        # are dropped.
        pass

    def proxyHeaderReceived(self, local: bool) -> None:
        if self.rejected or self.pair.phase in (Phase.CLOSING, Phase.CLOSED):
            # Ended while the header arrived (a timer): nothing to admit.
            return
        admission = self.factory.admission
        # A LOCAL header is the load balancer's own health check, not a
        # client: the address rules are for clients.
        if admission is not None and not local:
            decision = admission.admit(self.transport.getPeer())
            if isinstance(decision, Refusal):
                self.factory.refusals.refused(
                    self.factory.name,
                    decision.reason,
                    describe(self.transport.getPeer()),
                )
                self.pair.refuse(decision.reason)
                return
            self._ticket = decision
        if local and self.websocket is None:
            # A load balancer's health check: no backend until a byte comes.
            # (A WebSocket client's upgrade request waits for bytes anyway.)
            self.dataReceived = self._firstBytes  # type: ignore[method-assign]
            self.pair.stepDone(PROXY_HEADER_STEP, then=(FIRST_BYTE,))
        else:
            self.pair.stepDone(PROXY_HEADER_STEP)

    def _firstBytes(self, data: bytes) -> None:
        self.dataReceived = self.upstream.dataReceived  # type: ignore[method-assign]
        self.upstream.dataReceived(data)
        # Unless those bytes already broke the framing.
        if self.pair.phase is Phase.PREAMBLE:
            self.pair.stepDone(FIRST_BYTE)

    def _upgradeBytes(self, data: bytes) -> None:
        # A WebSocket client's bytes while its upgrade request is read.
        upstream = self.upstream
        outcome = upstream.upgrade.feed(data)  # type: ignore[attr-defined]
        upstream.lastRead = self.clock.seconds()
        if outcome is None:
            return
        upstream.upgrade = None  # type: ignore[attr-defined]
        self.transport.write(outcome.response)
        if isinstance(outcome, Refused):
            if outcome.reason == DENIED:
                # An admission refusal: counted as rejected, nothing else.
                self.factory.refusals.refused(
                    self.factory.name, DENIED, describe(self.transport.getPeer())
                )
                self.pair.refuse(DENIED, abort=False)
            else:
                error = FramingError(
                    MALFORMED, f"WebSocket upgrade: {outcome.status}: {outcome.detail}"
                )
                self._protocolError(stats.CLIENT, error)
            return
        # From here on the client's bytes are frames: the per-chunk path.
        self.dataReceived = self.upstream.dataReceived  # type: ignore[method-assign]
        self.pair.stepDone(WEBSOCKET_UPGRADE)
        if outcome.extra:
            # Unless connecting already failed.
            self.dataReceived(outcome.extra)

    def _clientCloseFrame(self) -> None:
        # A WebSocket client's Close frame ends its stream (a half-close).
        self.pair.streamEnded(stats.CLIENT)

    def _sendClose(self, code: int) -> None:
        """
        Write the gateway's Close frame to the WebSocket client (once), and
        abort the connection if it has not gone out in time.
        """
        frame = self.websocket.close(code)  # type: ignore[union-attr]
        if frame:
            self.transport.write(frame)
        if self._closeCall is None:
            self._closeCall = self.clock.callLater(
                self.factory.websocket.closeTimeout,  # type: ignore[union-attr]
                self._closeTimedOut,
            )

    def _closeTimedOut(self) -> None:
        self._closeCall = None
        # Open (the backend ended; the client never answered): ended by the
        # backend. Closing: the close is hurried.
        self.pair.abort(stats.BACKEND_CLOSED)

    def _webSocketOpen(self) -> bool:
        return self.websocket is not None and WEBSOCKET_UPGRADE not in self.pair.steps

    def proxyHeaderInvalid(self, detail: str) -> None:
        if not self.rejected and self.pair.phase is Phase.PREAMBLE:
            error = FramingError(PROXY_HEADER, f"PROXY header: {detail}")
            self._protocolError(stats.CLIENT, error)

    def handshakeCompleted(self) -> None:
        if self.rejected:
            return
        if self.factory.describeTLS is not None:
            # Now: Twisted forgets the TLS connection when it is lost.
            self._tlsSession = self.factory.describeTLS(self.transport, True, None)
        if self.factory.sendProxySSL:
            # A certificate is asked for only with --tls-client-ca, and then
            # the handshake fails unless it verified: one presented here was
            # verified.
            self._clientTLS = clientTLS(
                self.transport.getHandle(),  # type: ignore[attr-defined]
                verified=True,
            )
        self.pair.stepDone(TLS_HANDSHAKE)

    def readConnectionLost(self) -> None:
        # A WebSocket client's stream may have ended with its Close frame.
        if not self.rejected and not self.upstream.ended:
            self.pair.streamEnded(stats.CLIENT)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.rejected:
            # Kept for the close line: a failed TLS handshake's reason.
            self._lostBecause = reason
            self.pair.lost(stats.CLIENT)

    def backendConnected(self, backend: BackendProtocol) -> bool:
        """
        C{backend}'s connection is up.

        @return: whether the pair took it; if not, it is aborted.
        """
        self.backendName = backend.backendName
        self.backend = backend
        # Joined first: relaying may already end it.
        backend.joined = True
        if self.pair.backendConnected():
            return True
        self.backend = None
        backend.joined = False
        backend.transport.abortConnection()
        return False

    def abort(self, reason: str) -> None:
        """
        End the pair now, dropping whatever is not yet sent, for C{reason}.
        """
        self.pair.abort(reason)

    def _idleCheck(self) -> None:
        now = self.clock.seconds()
        delivered = self.factory.delivered
        backend = self.backend
        taken = (
            delivered(self.transport),
            None if backend is None else delivered(backend.transport),
        )
        before = self._delivered
        # Compared with the counts when progress was last seen, not when the
        # timer last looked: a timer re-armed for a short rest of the wait
        # would otherwise look at too short a time to see any.
        if any(
            count is not None and count > then
            for count, then in zip(taken, before, strict=True)
        ):
            self._lastDelivery = now
            self._delivered = (
                before[0] if taken[0] is None else taken[0],
                before[1] if taken[1] is None else taken[1],
            )
        last = max(self.upstream.lastRead, self.downstream.lastRead, self._lastDelivery)
        remaining = self.factory.idleTimeout - (now - last)
        if remaining > 0:
            self._idleCall = self.clock.callLater(remaining, self._idleCheck)
        else:
            self._idleCall = None
            self.pair.abort(stats.IDLE_TIMEOUT)

    def _protocolError(self, peer: str, error: FramingError) -> None:
        self._errorPeer = peer
        self.stats.protocolError(peer, error.reason)
        # The field is errorReason: in the JSON log, reason is always a
        # closed event's close reason.
        self.factory.log.warn(
            "protocol error from {peer} {client} on {listener}: {errorReason}: {error}",
            peer=peer,
            client=self.clientAddress,
            listener=self.factory.name,
            errorReason=error.reason,
            error=error.detail,
        )
        self.pair.protocolError()

    def _attemptDone(self, protocol: BackendConnection) -> None:
        self._connecting = None

    def _attemptFailed(self, failure: Failure) -> None:
        self._connecting = None
        if failure.check(CancelledError) or self.pair.phase is not Phase.CONNECTING:
            return
        self.factory.log.warn(
            "no backend for {client} on {listener}: {error}",
            listener=self.factory.name,
            client=self.clientAddress,
            error=failure.getErrorMessage(),
        )
        self.pair.backendUnavailable()

    # What the pair decides (PairIO).

    def connectBackend(self) -> None:
        # Behind a PROXY header, the client's address is known only now.
        self.clientAddress = describe(self.transport.getPeer())
        # Don't read anything until there is somewhere to send it.
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        header = b""
        if self.factory.sendProxyHeader is not None:
            header = self.factory.sendProxyHeader(
                self.transport.getPeer(), self.transport.getHost()
            )
            if self.factory.sendProxySSL:
                header = v2SSLHeader(header, self._clientTLS)
        self._connecting = self.factory.connectBackend(
            BackendFactory(self, proxyHeader=header)
        )
        self._connecting.addCallbacks(self._attemptDone, self._attemptFailed)

    def abandonConnect(self) -> None:
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()

    def relay(self) -> None:
        backend = self.backend
        assert backend is not None
        backendTransport = backend.transport
        self.downstream.link(backendTransport, self.transport)
        self.upstream.link(self.transport, backendTransport)
        backend.dataReceived = self.downstream.dataReceived  # type: ignore[method-assign]
        if self.upstream.ended:
            self.upstream.shut()
        else:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def finishStream(self, side: str) -> None:
        direction = self.upstream if side == stats.CLIENT else self.downstream
        # Only this direction ends: the other side can still hold its
        # sender back while it reads what is left for it.
        if direction.finish() and direction.target is not None:
            direction.shut()

    def dropInput(self) -> None:
        self.dataReceived = _drop  # type: ignore[method-assign]
        if self.backend is not None:
            self.backend.dataReceived = _drop  # type: ignore[method-assign]

    def closeTransports(self, sides: frozenset[str], abort: bool) -> None:
        self.upstream.unlink()
        self.downstream.unlink()
        transports = []
        if stats.CLIENT in sides:
            # A WebSocket client is told why, unless it has been already.
            if not (self._webSocketOpen() and self._closeWebSocket(abort)):
                transports.append(self.transport)
        if stats.BACKEND in sides and self.backend is not None:
            transports.append(self.backend.transport)
        for transport in transports:
            if abort:
                transport.abortConnection()  # type: ignore[attr-defined]
            else:
                transport.loseConnection()

    def _closeWebSocket(self, abort: bool) -> bool:
        """
        Close the WebSocket client's connection: its Close frame first,
        when the gateway has not sent one yet, and then the connection
        once what is written is sent (or after the close timeout).

        @return: whether this closed the connection; False when C{abort}
            and the Close was sent before (so the caller aborts it).
        """
        websocket = self.websocket
        assert websocket is not None and self.pair.reason is not None
        if abort and websocket.closeSent:
            return False
        code = _CLOSE_CODES.get(self.pair.reason)
        if code is None:
            code = _PROTOCOL_ERROR_CODES[self._errorPeer]
        self._sendClose(code)
        self.transport.loseConnection()
        return True

    def handshakeFailed(self) -> None:
        self.stats.tlsHandshakeFailed()

    def ended(self, reason: str, quiet: bool) -> None:
        if self._idleCall is not None:
            self._idleCall.cancel()
            self._idleCall = None
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            ticket.release()
        if self._closeCall is not None:
            self._closeCall.cancel()
            self._closeCall = None
        if self.pair.refused:
            # Refused, not closed: counted as a refusal only (SPEC section
            # 5), already told to the refusal log.
            self.stats.rejected(reason)
            self.factory.connections.remove(self)
            return
        duration = self.clock.seconds() - self.startedAt
        self.stats.closed(reason, duration)
        upstream = self.upstream
        downstream = self.downstream
        fields = {
            "listener": self.factory.name,
            "client": self.clientAddress,
            "backend": self.backendName or "none",
            "duration": duration,
            "messagesUp": upstream.messages,
            "bytesUp": upstream.bytes,
            "messagesDown": downstream.messages,
            "bytesDown": downstream.bytes,
            "reason": reason,
            "closeCode": self.websocket and self.websocket.closeCode,
            "closeCodeText": self._closeCodeText(),
            "tls": self._tlsDetail(),
        }
        log = self.factory.log
        (log.debug if quiet else log.info)(prerendered(CLOSED_FORMAT, fields), **fields)
        self.factory.connections.remove(self)

    def _closeCodeText(self) -> str:
        # A WebSocket client's close line names the code of the gateway's
        # Close frame.
        websocket = self.websocket
        if websocket is None or websocket.closeCode is None:
            return ""
        return f" (WebSocket close {websocket.closeCode})"

    def _tlsDetail(self) -> str:
        """
        The hook where a TLS connection's close line gets its TLS details:
        the session (version, cipher, SNI, client certificate) after a
        handshake, OpenSSL's reason after a failed one. Empty without TLS.
        """
        factory = self.factory
        if not factory.tls or factory.describeTLS is None:
            return ""
        if TLS_HANDSHAKE not in self.pair.steps:
            return self._tlsSession
        return factory.describeTLS(self.transport, False, self._lostBecause)


class ProxyFactory(Factory):
    """
    The client connections of one listener.

    @ivar name: the listener's label in metrics and logs (C{tcp:7000}).
    @ivar tls: whether connections arrive through TLS, in which case the
        backend is connected only once the handshake has completed.
    @ivar proxyHeader: whether connections start with a PROXY header (the
        C{haproxy:} wrapper), in which case the backend is connected only
        once it has been read.
    @ivar sendProxyHeader: when given, builds the PROXY header written to
        the backend before anything else, from the client's source and
        destination addresses.
    @ivar refusals: where refused connections are logged, rate-limited.
    @ivar describeTLS: gives the TLS details of a TLS connection's close
        line (see L{describeTLS}); None for none.
    @ivar delivered: how many bytes a connection's peer has taken, or None
        when that is not known (L{gateway.progress.delivered}).
    @ivar admission: the service's admission rules and per-source tables
        (L{gateway.admission.Admission}), shared by its listeners; None
        for none.
    @ivar handshakeTimeout: seconds a connection's preamble (PROXY header,
        TLS handshake, WebSocket upgrade) may take, from accept; C{0} is no limit.
    @ivar sendProxySSL: whether the PROXY header sent to the backend (a
        version 2 one) carries the client's TLS details (C{v2-ssl}).
    @ivar websocket: for WebSocket clients (SPEC section 10), their
        settings (a L{gateway.websocketclient.WebSocketSettings}), and
        C{clientFraming} is not used; None for others.
    """

    protocol = ClientProtocol
    noisy = False
    log = Logger(namespace="gateway.proxy")
    # The clock's and the stats' bound methods every pair calls, made by
    # the first connection (see ClientProtocol.connectionMade).
    bound: (
        tuple[
            Callable[[], float], Callable[[int, int], None], Callable[[int, int], None]
        ]
        | None
    ) = None

    def __init__(
        self,
        name: str,
        clientFraming: Framing,
        backendFraming: Framing,
        connectBackend: Callable[[BackendConnector], Deferred[BackendConnection]],
        connections: Connections,
        clock: IReactorTime,
        stats: stats.ListenerStats,
        idleTimeout: float = 0,
        tls: bool = False,
        proxyHeader: bool = False,
        sendProxyHeader: Callable[[IAddress, IAddress], bytes] | None = None,
        delivered: Callable[[ITransport], int | None] = progress.delivered,
        refusals: RefusalLog | None = None,
        describeTLS: DescribeTLS | None = describeTLS,
        admission: Admission | None = None,
        handshakeTimeout: float = 0,
        sendProxySSL: bool = False,
        websocket: WebSocketSettings | None = None,
    ) -> None:
        self.name = name
        self.clientFraming = clientFraming
        self.backendFraming = backendFraming
        self.connectBackend = connectBackend
        self.connections = connections
        self.clock = clock
        self.stats = stats
        self.idleTimeout = idleTimeout
        self.tls = tls
        self.proxyHeader = proxyHeader
        self.sendProxyHeader = sendProxyHeader
        self.delivered = delivered
        self.refusals = refusals or RefusalLog(self.log, clock)
        self.describeTLS = describeTLS
        self.admission = admission
        self.handshakeTimeout = handshakeTimeout
        self.sendProxySSL = sendProxySSL
        self.websocket = websocket
