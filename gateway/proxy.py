"""
The translating proxy: every client connection gets its own backend connection.

Bytes are translated per read chunk: a chunk is decoded into all the messages
it completes, those are encoded for the other side and written with one call.
Each transport is the streaming producer of the other, so a side that cannot
keep up stops the gateway reading from the side that feeds it.
"""

from __future__ import annotations

from collections.abc import Callable

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

from gateway import stats, writethrough
from gateway.addresses import describe
from gateway.codec import Framing, FramingError
from gateway.proxyprotocol import PROXY_HEADER, IProxyHeaderReceiver


class Translator:
    """
    Turns one side's byte stream into the other side's, chunk by chunk.

    It keeps the bytes of a message that is not complete yet; nothing else.
    """

    def __init__(self, decoder: Framing, encoder: Framing) -> None:
        self._decoder = decoder
        self._encoder = encoder
        self._overhead = decoder.overhead
        self._rest = b""

    def feed(self, data: bytes) -> tuple[bytes, int, int]:
        """
        Translate one chunk.

        @return: the bytes for the other side, how many messages they hold
            and how many payload bytes.
        @raise FramingError: when the chunk breaks either framing; the error's
            C{salvage} holds the translation of the valid messages before it.
        """
        if self._rest:
            data = self._rest + data
        try:
            messages, rest = self._decoder.decode(data)
            count = len(messages)
            out = self._encoder.encode(messages, data) if count else b""
        except FramingError as error:
            raise self._salvaged(error)
        self._rest = rest
        if not count:
            return b"", 0, 0
        if self._overhead is None:
            payload = sum(map(len, messages))
        else:
            payload = len(data) - len(rest) - count * self._overhead
        return out, count, payload

    def finish(self) -> tuple[bytes, int, int]:
        """
        Translate what is left once the sending side has ended its stream.
        """
        rest, self._rest = self._rest, b""
        try:
            messages = self._decoder.finish(rest)
        except FramingError as error:
            raise self._salvaged(error)
        if not messages:
            return b"", 0, 0
        return self._encode(messages), len(messages), sum(map(len, messages))

    def _encode(self, messages: list[bytes]) -> bytes:
        try:
            return self._encoder.encode(messages)
        except FramingError as error:
            raise self._salvaged(error)

    def _salvaged(self, error: FramingError) -> FramingError:
        # Messages that came before the bad ones were accepted: deliver them.
        good = error.messages
        try:
            salvage = self._encoder.encode(good)
        except FramingError as inner:
            salvage = self._encoder.encode(inner.messages)
            good = inner.messages
        error.salvage = salvage  # type: ignore[attr-defined]
        error.salvageCounts = (len(good), sum(map(len, good)))  # type: ignore[attr-defined]
        return error


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


_ORDINARY = frozenset({stats.CLIENT_CLOSED, stats.BACKEND_CLOSED})


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


@implementer(IHalfCloseableProtocol)
class BackendProtocol(Protocol):
    """
    The backend end of a pair: hands every event to its client protocol.

    @ivar ready: fires with this protocol once the connection can carry
        messages: at once over TCP, once the backend's certificate is verified
        over TLS. It fails with the reason when the connection ends before,
        and the client never hears of that connection; cancelling it aborts
        the connection.
    """

    _ready = False

    def __init__(self, client: ClientProtocol, backendName: str) -> None:
        self.client = client
        self.backendName = backendName
        self.ready: Deferred[BackendProtocol] = Deferred(self._cancelReady)

    def _cancelReady(self, ready: Deferred[BackendProtocol]) -> None:
        self.transport.abortConnection()

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
        self._ready = True
        self.client.backendConnected(self)
        self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.client.backendDataReceived(data)

    def readConnectionLost(self) -> None:
        self.client.backendReadConnectionLost()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._ready:
            self.client.backendConnectionLost(reason)
        elif not self.ready.called:
            self.ready.errback(reason)


class BackendFactory(Factory):
    """
    Builds the one backend protocol of one client connection.
    """

    noisy = False

    def __init__(self, client: ClientProtocol) -> None:
        self.client = client
        self.backendName = ""
        self.proxyHeader = b""

    def buildProtocol(self, addr: IAddress) -> BackendProtocol:
        return BackendProtocol(self.client, self.backendName)


@implementer(IHalfCloseableProtocol, IHandshakeListener, IProxyHeaderReceiver)
class ClientProtocol(Protocol):
    """
    The client end of a pair, and the owner of the pair's life.

    It opens the backend connection, translates in both directions, keeps
    the pair's counts and chooses the one reason the pair ended for.

    The idle timeout is checked lazily: a read chunk only writes down the
    time, and the timer, when it fires, either ends the pair or re-arms
    itself for the rest of the wait. (Moving a timer on every chunk, as
    L{twisted.protocols.policies.TimeoutMixin} does, costs a method call and
    the reactor's rescheduling per chunk.)
    """

    factory: ProxyFactory
    backend: BackendProtocol | None = None
    backendName = ""
    closeReason: str | None = None
    rejected = False
    _connecting: Deferred[BackendProtocol] | None = None
    _clientReadDone = False
    _backendReadDone = False
    _clientGone = False
    _backendGone = True
    _handshakeDone = False
    _broken = False
    _reported = False
    _backendFeedsClient = False
    _clientFeedsBackend = False
    _idleCall: IDelayedCall | None = None
    _lastActivity = 0.0

    def connectionMade(self) -> None:
        factory = self.factory
        self.stats = factory.stats
        self.stats.accepted()
        if factory.connections.full():
            self.rejected = True
            self.stats.rejected()
            self.transport.loseConnection()
            return
        factory.connections.add(self)
        noDelay(self.transport)
        self.clock = factory.clock
        self.callLater = factory.clock.callLater
        self.startedAt = factory.clock.seconds()
        self.clientAddress = describe(self.transport.getPeer())
        self.upstream = Translator(factory.clientFraming, factory.backendFraming)
        self.downstream = Translator(factory.backendFraming, factory.clientFraming)
        self.messagesUp = self.bytesUp = self.messagesDown = self.bytesDown = 0
        self._pending: list[bytes] = []
        if factory.idleTimeout:
            self._lastActivity = self.startedAt
            self._idleCall = self.callLater(factory.idleTimeout, self._idleCheck)
        if not factory.tls and not factory.proxyHeader:
            self._connectBackend()

    def proxyHeaderReceived(self) -> None:
        if not (self.rejected or self._clientGone or self._broken):
            self._connectBackend()

    def proxyHeaderInvalid(self, detail: str) -> None:
        if not (self.rejected or self._clientGone or self._broken):
            error = FramingError(PROXY_HEADER, f"PROXY header: {detail}")
            self._protocolError(stats.CLIENT, error)

    def handshakeCompleted(self) -> None:
        self._handshakeDone = True
        # Behind haproxy: the client's address is known once the PROXY header
        # is read, which is after connectionMade and before the handshake.
        self.clientAddress = describe(self.transport.getPeer())
        if not self._clientGone and not self._broken:
            self._connectBackend()

    def _connectBackend(self) -> None:
        # Behind a PROXY header, the client's address is known only now.
        self.clientAddress = describe(self.transport.getPeer())
        # Don't read anything until there is somewhere to send it.
        self.transport.pauseProducing()
        backendFactory = BackendFactory(self)
        if self.factory.sendProxyHeader is not None:
            # Written first on each backend connection, under any TLS, by
            # gateway.headerfirst.HeaderFirstEndpoint.
            backendFactory.proxyHeader = self.factory.sendProxyHeader(
                self.transport.getPeer(), self.transport.getHost()
            )
        self._connecting = self.factory.connectBackend(backendFactory)
        self._connecting.addCallbacks(self._backendAttemptDone, self._backendFailed)

    def _backendAttemptDone(self, protocol: BackendProtocol) -> None:
        self._connecting = None

    def _backendFailed(self, failure: Failure) -> None:
        self._connecting = None
        if failure.check(CancelledError) or self._clientGone:
            return
        self.factory.log.warn(
            "no backend for {client} on {listener}: {error}",
            listener=self.factory.name,
            client=self.clientAddress,
            error=failure.getErrorMessage(),
        )
        self._noteReason(stats.BACKEND_UNAVAILABLE)
        self._closeBoth(abort=False)

    def backendConnected(self, backend: BackendProtocol) -> None:
        """
        The backend connection is up: start the flow both ways.
        """
        self.backendName = backend.backendName
        if self._clientGone or self._broken:
            backend.transport.abortConnection()
            return
        self.backend = backend
        self._backendGone = False
        backendTransport = backend.transport
        self.transport.registerProducer(backendTransport, True)
        self._backendFeedsClient = True
        backendTransport.registerProducer(self.transport, True)
        self._clientFeedsBackend = True
        if self._pending:
            backendTransport.write(b"".join(self._pending))
            self._pending = []
        if self._clientReadDone:
            self._stopFeedingBackend()
            _shutWrite(backendTransport)
        else:
            self.transport.resumeProducing()

    def _stopFeedingBackend(self) -> None:
        """
        The client will send nothing more: it stops being the producer of
        the backend's transport, which must not resume it, and can shut.
        """
        if self._clientFeedsBackend:
            self._clientFeedsBackend = False
            if not self._backendGone:
                self.backend.transport.unregisterProducer()

    def _stopFeedingClient(self) -> None:
        """
        The backend will send nothing more: the mirror of the above.
        """
        if self._backendFeedsClient:
            self._backendFeedsClient = False
            self.transport.unregisterProducer()

    def _unlink(self) -> None:
        """
        Undo both producer registrations, as the pair closes.
        """
        self._stopFeedingBackend()
        self._stopFeedingClient()

    def dataReceived(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            out, messages, payload = self.upstream.feed(data)
        except FramingError as error:
            self._sendUpstream(error.salvage, *error.salvageCounts)
            self._protocolError(stats.CLIENT, error)
            return
        if messages:
            self._sendUpstream(out, messages, payload)
        self._lastActivity = self.clock.seconds()

    def _sendUpstream(self, out: bytes, messages: int, payload: int) -> None:
        if not messages:
            return
        if self.backend is None:
            self._pending.append(out)
        else:
            writethrough.write(self.backend.transport, out)
        self.messagesUp += messages
        self.bytesUp += payload
        self.stats.upstream(messages, payload)

    def backendDataReceived(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            out, messages, payload = self.downstream.feed(data)
        except FramingError as error:
            self._sendDownstream(error.salvage, *error.salvageCounts)
            self._protocolError(stats.BACKEND, error)
            return
        if messages:
            self._sendDownstream(out, messages, payload)
        self._lastActivity = self.clock.seconds()

    def _sendDownstream(self, out: bytes, messages: int, payload: int) -> None:
        if not messages:
            return
        writethrough.write(self.transport, out)
        self.messagesDown += messages
        self.bytesDown += payload
        self.stats.downstream(messages, payload)

    def readConnectionLost(self) -> None:
        """
        The client shut its write side: deliver the rest, then pass it on.
        """
        self._noteReason(stats.CLIENT_CLOSED)
        self._clientReadDone = True
        if self._broken:
            return
        try:
            out, messages, payload = self.upstream.finish()
        except FramingError as error:
            self._sendUpstream(error.salvage, *error.salvageCounts)
            self._protocolError(stats.CLIENT, error)
            return
        self._sendUpstream(out, messages, payload)
        if self.backend is not None:
            # Only this direction ends: the client can still hold the
            # backend back while it reads the replies.
            self._stopFeedingBackend()
            _shutWrite(self.backend.transport)
        self._endIfBothDone()

    def backendReadConnectionLost(self) -> None:
        """
        The backend shut its write side: deliver the rest, then pass it on.
        """
        self._noteReason(stats.BACKEND_CLOSED)
        self._backendReadDone = True
        if self._broken:
            return
        try:
            out, messages, payload = self.downstream.finish()
        except FramingError as error:
            self._sendDownstream(error.salvage, *error.salvageCounts)
            self._protocolError(stats.BACKEND, error)
            return
        self._sendDownstream(out, messages, payload)
        self._stopFeedingClient()
        _shutWrite(self.transport)
        self._endIfBothDone()

    def writeConnectionLost(self) -> None:
        pass

    def _endIfBothDone(self) -> None:
        if self._clientReadDone and self._backendReadDone:
            self._closeBoth(abort=False)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.rejected:
            return
        # The idle timeout keeps running until both sides are gone: a
        # backend that never takes what is left for it is not waited for
        # forever.
        self._clientGone = True
        if self.factory.tls and not self._handshakeDone:
            self.stats.tlsHandshakeFailed()
            self._noteReason(stats.TLS_ERROR)
        self._noteReason(stats.CLIENT_CLOSED)
        if self._connecting is not None:
            self._connecting.cancel()
        self._unlink()
        if self.backend is not None and not self._backendGone:
            self.backend.transport.loseConnection()
        self._maybeReport()

    def backendConnectionLost(self, reason: Failure) -> None:
        self._unlink()
        self._backendGone = True
        self._noteReason(stats.BACKEND_CLOSED)
        if not self._clientGone:
            self.transport.loseConnection()
        self._maybeReport()

    def _idleCheck(self) -> None:
        remaining = self.factory.idleTimeout - (
            self.clock.seconds() - self._lastActivity
        )
        if remaining > 0:
            self._idleCall = self.callLater(remaining, self._idleCheck)
        else:
            self._idleCall = None
            self.abort(stats.IDLE_TIMEOUT)

    def abort(self, reason: str) -> None:
        """
        End the pair now, dropping whatever is not yet sent, for C{reason}.
        """
        self._noteReason(reason)
        self._closeBoth(abort=True)

    def _protocolError(self, peer: str, error: FramingError) -> None:
        self.stats.protocolError(peer, error.reason)
        self.factory.log.warn(
            "protocol error from {peer} {client} on {listener}: {error}",
            peer=peer,
            client=self.clientAddress,
            listener=self.factory.name,
            reason=error.reason,
            error=error.detail,
        )
        self._noteReason(stats.PROTOCOL_ERROR)
        self._closeBoth(abort=False)

    def _noteReason(self, reason: str) -> None:
        # A side closing is where the end usually starts; anything that goes
        # wrong afterwards while the client is still there (a failed backend,
        # a bad frame, a timeout) says more about why the pair ended, so it
        # takes precedence. Once the client is gone, its leaving is the reason.
        current = self.closeReason
        if current is None or (
            current in _ORDINARY and reason not in _ORDINARY and not self._clientGone
        ):
            self.closeReason = reason

    def _closeBoth(self, abort: bool) -> None:
        # Whatever either side sends from now on is not translated.
        self._broken = True
        if self._connecting is not None:
            self._connecting.cancel()
        self._unlink()
        transports = [self.transport]
        if self.backend is not None and not self._backendGone:
            transports.append(self.backend.transport)
        for transport in transports:
            if abort:
                transport.abortConnection()
            else:
                transport.loseConnection()

    def _maybeReport(self) -> None:
        if self._reported or not (self._clientGone and self._backendGone):
            return
        self._reported = True
        if self._idleCall is not None:
            self._idleCall.cancel()
            self._idleCall = None
        duration = self.clock.seconds() - self.startedAt
        reason = self.closeReason or stats.CLIENT_CLOSED
        self.stats.closed(reason, duration)
        self.factory.log.info(
            "closed {listener} {client} via {backend} after {duration:.3f}s:"
            " {messagesUp} messages ({bytesUp} bytes) up,"
            " {messagesDown} messages ({bytesDown} bytes) down, {reason}",
            listener=self.factory.name,
            client=self.clientAddress,
            backend=self.backendName or "none",
            duration=duration,
            messagesUp=self.messagesUp,
            bytesUp=self.bytesUp,
            messagesDown=self.messagesDown,
            bytesDown=self.bytesDown,
            reason=reason,
        )
        self.factory.connections.remove(self)


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
    """

    protocol = ClientProtocol
    noisy = False
    log = Logger(namespace="gateway.proxy")

    def __init__(
        self,
        name: str,
        clientFraming: Framing,
        backendFraming: Framing,
        connectBackend: Callable[[BackendFactory], Deferred[BackendProtocol]],
        connections: Connections,
        clock: IReactorTime,
        stats: stats.ListenerStats,
        idleTimeout: float = 0,
        tls: bool = False,
        proxyHeader: bool = False,
        sendProxyHeader: Callable[[IAddress, IAddress], bytes] | None = None,
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
