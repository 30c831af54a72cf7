"""
Tests for L{gateway.halfclosetls}: the pins on the private state of
Twisted's TLS layer it overrides and reads, its fall back to Twisted's own
TLS layer when that state is missing, and Twisted's own TLS tests run with
L{HalfCloseableTLSFactory} as their server side, so that everything Twisted
checks of its TLS layer (handshakes, writes before and after it, producers,
aborts, closes) still holds for protocols that do not half-close. (Its
half-close behaviour over real connections is tested in
C{tests.test_tls.HalfCloseTests}.)
"""

from __future__ import annotations

import hashlib
import inspect
import socket
import ssl
import textwrap

from OpenSSL import SSL
from twisted.internet import reactor, tcp
from twisted.internet.defer import DeferredList
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ServerFactory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.test import test_tls as twistedTLSTests
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway import halfclosetls
from gateway.halfclosetls import HalfCloseableTLSFactory, HalfCloseableTLSProtocol
from gateway.tls import loadServerTLS
from tests.test_tls import _PKI, _HalfCloseServer
from tests.tlsclient import CLOSE_NOTIFY, TLSClient

# SHA-256 of the source of Twisted's TLSMemoryBIOProtocol._flushReceiveBIO
# (dedented), of which HalfCloseableTLSProtocol._flushReceiveBIO is a copy
# with the close_notify case changed. Twisted 24.3 to 26.10 have this one.
# When it changes, compare the new method with the override, carry the
# change over, and put the new digest here.
FLUSH_RECEIVE_BIO_SHA256 = (
    "2105d14b4edd4c1de946ff49931adec36148b8d20f80c4702619c106d2749768"
)
# Likewise of its _flushSendBIO, copied with the write to the socket going
# through gateway.writethrough (Twisted 26.10's).
FLUSH_SEND_BIO_SHA256 = (
    "9b2043777ab2ef33ffb0becc7f18edd7b8203e5a40e34ca4a9f78d20912edc50"
)


class _Events:
    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def warnings(self) -> list[str]:
        return [
            formatEvent(event)
            for event in self.events
            if event.get("log_level") == LogLevel.warn
        ]


def _creator(case: SynchronousTestCase):
    pki = _PKI(case.mktemp())
    gw = pki.server("gw", "gw.example")
    return pki, loadServerTLS([gw.certFile], [gw.keyFile])


class PinTests(SynchronousTestCase):
    """
    The private names of L{TLSMemoryBIOProtocol} the override uses are still
    there, with the parameters it passes, and the method it copies is still
    the one it was copied from: a Twisted release that changes any of them
    fails here.
    """

    def test_nothingMissing(self) -> None:
        self.assertEqual(halfclosetls.missingPrivateState(), [])

    def test_signatures(self) -> None:
        for name, parameters in halfclosetls.PRIVATE_METHODS.items():
            signature = inspect.signature(getattr(TLSMemoryBIOProtocol, name))
            self.assertEqual(tuple(signature.parameters), ("self", *parameters), name)
        for name in halfclosetls.PRIVATE_FLAGS:
            self.assertIs(getattr(TLSMemoryBIOProtocol, name), False, name)

    def test_copiedMethodUnchanged(self) -> None:
        source = textwrap.dedent(
            inspect.getsource(TLSMemoryBIOProtocol._flushReceiveBIO)
        )
        self.assertEqual(
            hashlib.sha256(source.encode("utf-8")).hexdigest(),
            FLUSH_RECEIVE_BIO_SHA256,
            "Twisted's TLSMemoryBIOProtocol._flushReceiveBIO changed: carry the"
            " change over to gateway.halfclosetls",
        )

    def test_copiedSendUnchanged(self) -> None:
        source = textwrap.dedent(inspect.getsource(TLSMemoryBIOProtocol._flushSendBIO))
        self.assertEqual(
            hashlib.sha256(source.encode("utf-8")).hexdigest(),
            FLUSH_SEND_BIO_SHA256,
            "Twisted's TLSMemoryBIOProtocol._flushSendBIO changed: carry the"
            " change over to gateway.halfclosetls",
        )

    def test_instanceState(self) -> None:
        """
        C{makeConnection} leaves the OpenSSL connection in C{_tlsConnection}
        and the override is used.
        """
        pki, creator = _creator(self)
        factory = HalfCloseableTLSFactory(
            creator, ServerFactory.forProtocol(_HalfCloseServer), reactor
        )
        factory.wrappedFactory.connections = []
        protocol = factory.buildProtocol(None)
        self.assertIsInstance(protocol, HalfCloseableTLSProtocol)
        protocol.makeConnection(StringTransport())
        self.addCleanup(protocol.connectionLost, None)
        self.assertIsInstance(protocol.__dict__["_tlsConnection"], SSL.Connection)
        self.assertFalse(protocol._stock)
        self.assertFalse(protocol._lostTLSConnection)
        self.assertFalse(protocol._aborted)


class WriteThroughTests(SynchronousTestCase):
    """
    TLS records go out through L{gateway.writethrough}: sent during the call
    that made them when nothing is queued on the socket; and a write is not
    held back to be joined with later ones.
    """

    def test_handshakeFlightSentAtOnce(self) -> None:
        """
        The server's answer to a ClientHello is on the wire as soon as the
        ClientHello is read, and the socket does not wait to be writable.
        """
        pki, creator = _creator(self)
        clock = MemoryReactorClock()
        factory = HalfCloseableTLSFactory(
            creator, ServerFactory.forProtocol(_HalfCloseServer), clock
        )
        factory.wrappedFactory.connections = []
        factory.wrappedFactory.onHandshake = lambda server: None
        protocol = factory.buildProtocol(None)
        ours, peer = socket.socketpair()
        self.addCleanup(peer.close)
        self.addCleanup(ours.close)
        peer.setblocking(False)
        transport = tcp.Server(ours, protocol, ("127.0.0.1", 40000), None, 1, clock)
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = context.wrap_bio(incoming, outgoing, server_hostname="gw.example")
        with self.assertRaises(ssl.SSLWantReadError):
            client.do_handshake()
        protocol.dataReceived(outgoing.read())

        flight = peer.recv(65536)
        self.assertGreater(len(flight), 0)
        self.assertNotIn(transport, clock.getWriters())
        incoming.write(flight)
        client.do_handshake()
        self.assertEqual(client.version(), "TLSv1.3")
        protocol.dataReceived(outgoing.read())
        # Its session tickets, if any.
        try:
            incoming.write(peer.recv(65536))
        except BlockingIOError:
            pass

        # A write is a record on the wire during the call, with nothing
        # scheduled to join it with later writes.
        protocol.write(b"reply\n")
        self.assertEqual(clock.getDelayedCalls(), [])
        incoming.write(peer.recv(65536))
        self.assertEqual(client.read(), b"reply\n")


class MissingStateTests(SynchronousTestCase):
    """
    When L{TLSMemoryBIOProtocol} lacks what the override needs, the factory
    builds Twisted's own TLS protocol, with one warning.
    """

    def test_missingMethod(self) -> None:
        class Renamed(TLSMemoryBIOProtocol):
            _shutdownTLS = None

        self.assertEqual(halfclosetls.missingPrivateState(Renamed), ["_shutdownTLS"])

    def test_otherParameters(self) -> None:
        class Changed(TLSMemoryBIOProtocol):
            def _tlsShutdownFinished(self, reason, abort):
                pass

        self.assertEqual(
            halfclosetls.missingPrivateState(Changed),
            ["_tlsShutdownFinished(self, reason, abort)"],
        )

    def test_missingFlag(self) -> None:
        original = TLSMemoryBIOProtocol._aborted
        del TLSMemoryBIOProtocol._aborted
        self.addCleanup(setattr, TLSMemoryBIOProtocol, "_aborted", original)
        self.assertEqual(halfclosetls.missingPrivateState(), ["_aborted"])

    def test_factoryFallsBack(self) -> None:
        events = _Events(self)
        self.patch(halfclosetls._Fallback, "warned", False)
        self.patch(TLSMemoryBIOProtocol, "_tlsShutdownFinished", lambda self, why: None)
        pki, creator = _creator(self)
        wrapped = ServerFactory.forProtocol(_HalfCloseServer)
        for _ in range(2):
            factory = HalfCloseableTLSFactory(creator, wrapped, reactor)
            self.assertIs(factory.protocol, BufferingTLSTransport)
        [warning] = events.warnings()
        self.assertIn("_tlsShutdownFinished(self, why)", warning)
        self.assertIn("without half-close", warning)


class _RenamedConnection(HalfCloseableTLSProtocol):
    """
    What a Twisted release that renamed C{_tlsConnection} would look like
    to the override: Twisted's own code finds the connection, the name the
    override reads is not there.
    """

    @property
    def _tlsConnection(self):
        return self.__dict__.get("_renamed")

    @_tlsConnection.setter
    def _tlsConnection(self, value):
        self.__dict__["_renamed"] = value


class MissingInstanceStateTests(TestCase):
    """
    A connection without C{_tlsConnection} after C{makeConnection} gets
    Twisted's own C{_flushReceiveBIO}: it works, without half-close.
    """

    async def test_twistedBehaviour(self) -> None:
        events = _Events(self)
        self.patch(halfclosetls._Fallback, "warned", False)
        pki, creator = _creator(self)
        wrapped = ServerFactory.forProtocol(_HalfCloseServer)
        wrapped.connections = []
        wrapped.onReadLost = lambda server: None
        wrapped.onHandshake = lambda server: None
        factory = HalfCloseableTLSFactory(creator, wrapped, reactor)
        factory.protocol = _RenamedConnection
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: DeferredList([c.lost for c in wrapped.connections]))

        context = ssl.create_default_context(
            cadata=pki.ca.cert_pem.bytes().decode("ascii")
        )
        client = await deferToThread(
            TLSClient, context, "gw.example", port.getHost().port
        )
        self.addCleanup(client.close)
        await deferToThread(client.handshake)
        await deferToThread(client.send, b"question")
        await deferToThread(client.closeNotify)
        # Twisted's behaviour: the close_notify is answered at once.
        received = await deferToThread(client.receiveAll)
        self.assertEqual(received, (b"", CLOSE_NOTIFY))
        [server] = wrapped.connections
        await server.lost
        self.assertEqual((server.received, server.readLost), (b"question", False))
        self.assertIsInstance(server.reason.value, ConnectionDone)
        self.assertTrue(server.transport._stock)
        [warning] = events.warnings()
        self.assertIn("_tlsConnection", warning)


def _serverSideOurs(
    contextFactory, isClient: bool, wrappedFactory, clock=None
) -> TLSMemoryBIOFactory:
    """
    Stands in for L{TLSMemoryBIOFactory} in Twisted's tests: the server side
    is the gateway's, the client side Twisted's.
    """
    if isClient:
        return TLSMemoryBIOFactory(contextFactory, True, wrappedFactory, clock)
    return HalfCloseableTLSFactory(contextFactory, wrappedFactory, clock)


# Twisted's tests that do not apply, with the reason.
_NOT_FOR_HALF_CLOSE = {
    "test_brokenContextFactoryErrors": (
        "checks which file a deprecation warning is attributed to: the factory"
        " is built in this module, not in Twisted's test module"
    ),
    "test_maximumCompatibilityWarning": (
        "checks which file a deprecation warning is attributed to: the factory"
        " is built in this module, not in Twisted's test module"
    ),
}


def _withOurServerSide(base: type) -> type:
    def setUp(self):
        self.patch(twistedTLSTests, "TLSMemoryBIOFactory", _serverSideOurs)
        return base.setUp(self)

    namespace: dict[str, object] = {"setUp": setUp}
    for name, reason in _NOT_FOR_HALF_CLOSE.items():
        if hasattr(base, name):

            def skipped(self):
                pass

            skipped.skip = reason
            namespace[name] = skipped
    # Named as the module attribute it is bound to, so that trial finds
    # each test by name (as it does in its --jobs workers).
    name = "Twisted" + base.__name__
    namespace.update(__module__=__name__, __qualname__=name)
    return type(name, (base,), namespace)


for _base in [
    twistedTLSTests.TLSMemoryBIOFactoryTests,
    twistedTLSTests.DeterministicTLSMemoryBIOTests,
    twistedTLSTests.TLSMemoryBIOTests,
    twistedTLSTests.TLSProducerTests,
    twistedTLSTests.NonStreamingProducerTests,
]:
    _case = _withOurServerSide(_base)
    globals()[_case.__name__] = _case
# Not left as module attributes, where trial would collect Twisted's own
# class as a test case of this module.
del _base, _case
