"""
Server-side TLS where either side can end its own direction of the stream.

L{HalfCloseableTLSProtocol} is Twisted's TLS layer
(L{twisted.protocols.tls.TLSMemoryBIOProtocol}) changed so that a
client's close_notify ends only the client's direction (Twisted's answers
it at once and closes, losing the replies still on their way: its ticket
5341), and so that a close never waits forever for the client's
close_notify (Twisted's ticket 7926).

Twisted has no public way to do either, so this module overrides a private
method and reads private state of
L{twisted.protocols.tls.TLSMemoryBIOProtocol}:

  - C{_flushReceiveBIO()}, replaced by a copy that handles the client's
    close_notify (C{ZeroReturnError}) differently;
  - C{_flushSendBIO()}, replaced by a copy that sends through
    L{gateway.writethrough} (at once, when nothing is queued);
  - C{_shutdownTLS()} and C{_tlsShutdownFinished(reason)}, called as
    Twisted's own C{_flushReceiveBIO} calls them;
  - C{_tlsConnection} (the per-connection L{OpenSSL.SSL.Connection}, set by
    C{makeConnection}), C{_lostTLSConnection} and C{_aborted}, read;
  - C{makeConnection()}, done by a shorter copy that sets the same state
    (C{_tlsConnection} from the factory's C{_creatorCallable},
    C{_appSendBuffer}) and calls C{_checkHandshakeStatus()}.

The tests pin them (C{tests.test_halfclosetls.PinTests}): they check that
each name is there with the signature used here, and that Twisted's
C{_flushReceiveBIO} and C{_flushSendBIO}, of which the overrides are copies,
are still the ones they were copied from; and they run Twisted's own TLS
tests with this module's factory as the server side. A Twisted release that
changes any of them fails there, not in production. When one of the names is
missing at run time, the factory falls back to Twisted's own TLS layer (a
connection missing C{_tlsConnection}, to Twisted's own C{_flushReceiveBIO}
and C{_flushSendBIO}), with one warning: TLS connections then work as
Twisted makes them, without half-close and without the close timeout, rather
than every connection failing.
"""

from __future__ import annotations

import inspect

from OpenSSL import SSL
from OpenSSL.SSL import WantReadError, ZeroReturnError
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import writethrough

log = Logger(namespace="gateway.tls")

# Once the gateway has closed a TLS connection (sent its close_notify), how
# long the client has to answer with its own before the socket is closed
# without it, in seconds.  Twisted alone would wait for ever (its ticket 7926).
CLOSE_NOTIFY_TIMEOUT = 5.0

# The private methods of TLSMemoryBIOProtocol used here, with the parameters
# each is called with (self left out).
PRIVATE_METHODS: dict[str, tuple[str, ...]] = {
    "_flushReceiveBIO": (),
    "_flushSendBIO": (),
    "_checkHandshakeStatus": (),
    "_shutdownTLS": (),
    "_tlsShutdownFinished": ("reason",),
}
# Its private flags, class attributes that instances overwrite.
PRIVATE_FLAGS = ("_lostTLSConnection", "_aborted")
# Set on each instance by makeConnection.
PRIVATE_INSTANCE_ATTRIBUTES = ("_tlsConnection",)


def missingPrivateState(
    cls: type[TLSMemoryBIOProtocol] = TLSMemoryBIOProtocol,
) -> list[str]:
    """
    The private names this module needs that C{cls} lacks or has with other
    parameters: empty when the override can be used.  (The instance
    attributes can only be checked on a connection: see
    L{HalfCloseableTLSProtocol.makeConnection}.)
    """
    missing = []
    for name, parameters in PRIVATE_METHODS.items():
        method = getattr(cls, name, None)
        if not callable(method):
            missing.append(name)
            continue
        try:
            signature = inspect.signature(method)
        except (TypeError, ValueError):
            missing.append(name)
            continue
        if tuple(signature.parameters)[1:] != parameters:
            missing.append(f"{name}{signature}")
    missing.extend(name for name in PRIVATE_FLAGS if not hasattr(cls, name))
    return missing


class _Fallback:
    """
    Whether the override was found unusable, so that it is warned about once.
    """

    warned = False

    @classmethod
    def warn(cls, missing: list[str]) -> None:
        if cls.warned:
            return
        cls.warned = True
        log.warn(
            "Twisted's TLS layer lacks {missing}, which gateway.halfclosetls"
            " uses: TLS connections use Twisted's own, without half-close"
            " and without a close_notify timeout",
            missing=", ".join(missing),
        )


@implementer(IHalfCloseableProtocol)
class HalfCloseableTLSProtocol(TLSMemoryBIOProtocol):
    """
    Server-side TLS over one accepted connection, where either side can end
    its own direction of the stream and go on with the other.

    Changes to Twisted's TLS layer, for a wrapped protocol that provides
    L{IHalfCloseableProtocol}:

      - the client's close_notify ends only the client's direction: the
        wrapped protocol gets C{readConnectionLost} and may go on writing
        until it closes the connection itself;
      - C{loseWriteConnection} sends the gateway's close_notify (once what
        was written is sent) and goes on reading until the client's;
      - C{loseConnection} also sends close_notify, and closes the socket
        once the client has answered, or L{CLOSE_NOTIFY_TIMEOUT} seconds
        later without the answer (what was written is still sent first).

    Writes are not held back to be joined on the reactor's next iteration,
    as Twisted's default L{BufferingTLSTransport} does (a C{callLater(0)}
    and a copy per write): the gateway writes once per chunk it reads, so
    there is nothing to join, and the delay is a reactor pass on every
    reply.

    A TCP FIN with no close_notify before it cuts the TLS stream short: the
    connection ends as if it were lost (at once; or once what was written is
    sent, when the gateway was closing it anyway).  A wrapped protocol that
    cannot half-close gets Twisted's behaviour, apart from the close
    timeout.
    """

    factory: HalfCloseableTLSFactory
    _peerFinished = False
    _closing = False
    _closeTimer: IDelayedCall | None = None
    # Set when the connection lacks the private state the override reads.
    _stock = False

    def makeConnection(self, transport: ITransport) -> None:
        self._connect(transport)
        missing = [
            name
            for name in PRIVATE_INSTANCE_ATTRIBUTES
            if not isinstance(self.__dict__.get(name), SSL.Connection)
        ]
        if missing:
            _Fallback.warn(missing)
            self._stock = True

    def _connect(self, transport: ITransport) -> None:
        """
        Twisted's C{TLSMemoryBIOProtocol.makeConnection}, without its loop
        that declares the interfaces of C{transport} on this protocol one
        at a time: nine zope declarations per TCP connection (about 20 us),
        each replacing the one before, and all replaced by the one
        declaration C{ProtocolWrapper.makeConnection} makes of them at
        once, before anything can look at them.

        The same steps otherwise, with the same private state: the OpenSSL
        connection from the factory (C{_creatorCallable}, or
        C{_createConnection} in Twisted 24.3), C{_appSendBuffer}, the
        handshake started by C{_checkHandshakeStatus}. Twisted's own method
        runs when the factory has neither, or for a protocol that does not
        connect the one it wraps. The tests compare the two
        (C{tests.test_halfclosetls.MakeConnectionTests}).
        """
        factory = self.factory
        create = getattr(factory, "_creatorCallable", None) or getattr(
            factory, "_createConnection", None
        )
        if create is None or not getattr(self, "_connectWrapped", False):
            super().makeConnection(transport)
            return
        self._tlsConnection = create(self)
        self._appSendBuffer = []
        Protocol.makeConnection(self, transport)
        factory.registerProtocol(self)
        ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()

    def _halfCloseable(self) -> bool:
        return IHalfCloseableProtocol.providedBy(self.wrappedProtocol)

    def _flushSendBIO(self) -> None:
        # TLSMemoryBIOProtocol._flushSendBIO, but the TLS records go out
        # through gateway.writethrough: sent at once when nothing is queued
        # on the socket, instead of on the reactor's next iteration, which
        # costs two epoll registrations and one more pass of the loop per
        # flight (every handshake flight and every chunk written).
        if self._stock:
            super()._flushSendBIO()
            return
        try:
            data = self._tlsConnection.bio_read(2**15)
        except WantReadError:
            # There may be nothing in the send BIO right now.
            return
        writethrough.write(self.transport, data)

    def _flushReceiveBIO(self) -> None:
        # TLSMemoryBIOProtocol._flushReceiveBIO, but for what happens when the
        # client's close_notify arrives (the ZeroReturnError).
        if self._stock:
            super()._flushReceiveBIO()
            return
        if self._peerFinished:
            # Nothing can follow a close_notify.
            return
        while not self._lostTLSConnection:
            try:
                data = self._tlsConnection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:
                if self._halfCloseable() and not self._closing:
                    # Sent by loseWriteConnection, or not sent yet.
                    ourCloseNotifySent = self.disconnecting
                    self._peerFinished = True
                    self.wrappedProtocol.readConnectionLost()
                    if not ourCloseNotifySent:
                        # Keep the connection for the replies still to come.
                        break
                # Answer it and close, as Twisted does; or, when the gateway
                # had sent its own close_notify first, the close is complete.
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        self._flushSendBIO()

    def readConnectionLost(self) -> None:
        """
        The client's TCP FIN: expected after its close_notify, or once TLS is
        over. Without one, the TLS stream was cut short: when the gateway
        was closing anyway, the socket closes once what was written is sent;
        otherwise at once, as Twisted ends a connection that is lost.
        """
        if self._peerFinished or self._lostTLSConnection:
            return
        if self.disconnecting:
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()

    def writeConnectionLost(self) -> None:
        pass

    def loseWriteConnection(self) -> None:
        """
        End the gateway's direction: close_notify once everything written so
        far is sent. Reading goes on until the client's close_notify.
        """
        super().loseConnection()

    def loseConnection(self) -> None:
        """
        Close: close_notify once everything written is sent, then the socket,
        when the client answers or after L{CLOSE_NOTIFY_TIMEOUT}.
        """
        self._closing = True
        super().loseConnection()
        if not self.connected or self._aborted:
            return
        # The client's answer (or its FIN) must be read: the wrapped
        # protocol may have paused reading, as the proxy does while it
        # has no backend. (A transport that cannot pause was not paused.)
        resume = getattr(self.transport, "resumeProducing", None)
        if resume is not None:
            resume()
        if self._closeTimer is None:
            self._closeTimer = self.factory.clock.callLater(
                CLOSE_NOTIFY_TIMEOUT, self._closeNotifyTimedOut
            )

    def _closeNotifyTimedOut(self) -> None:
        self._closeTimer = None
        # An orderly close: whatever is still buffered is sent first.
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        if self._closeTimer is not None:
            self._closeTimer.cancel()
            self._closeTimer = None
        super().connectionLost(reason)


class HalfCloseableTLSFactory(TLSMemoryBIOFactory):
    """
    Server-side TLS with L{HalfCloseableTLSProtocol} under each connection,
    or Twisted's own TLS layer when the private state it needs is missing
    (see the module docstring).

    @ivar clock: where the close timeout is scheduled.
    """

    protocol: type[TLSMemoryBIOProtocol] = HalfCloseableTLSProtocol

    def __init__(
        self,
        creator: IOpenSSLServerConnectionCreator,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        super().__init__(creator, False, wrappedFactory, clock)
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        missing = missingPrivateState()
        if missing:
            _Fallback.warn(missing)
            self.protocol = BufferingTLSTransport
