"""
Tests for L{gateway.proxy}: one client/backend pair driven by hand.
"""

import socket
from ipaddress import ip_address

from twisted.internet import tcp, unix
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.logger import (
    LogLevel,
    capturedLogs,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway import stats
from gateway.admission import Admission, AdmissionSettings, parseNetworks
from gateway.codec import Translator, accelerated, framing, translator
from gateway.proxy import CLOSED_FORMAT, Connections, Direction, ProxyFactory

LIMIT = 100


class HalfCloseableTransport(StringTransportWithDisconnection):
    """
    A string transport that remembers a shut write side.
    """

    writeClosed = False

    def loseWriteConnection(self):
        self.writeClosed = True


class RecordingStats:
    """
    A L{stats.ListenerStats} that writes down every event.
    """

    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        return lambda *args: self.events.append((name, *args))

    def named(self, name):
        return [event[1:] for event in self.events if event[0] == name]


class Harness:
    """
    A proxy factory whose backend connections the test completes by hand.
    """

    def __init__(self, limit=10, idleTimeout=0, clientFraming="lf", **options):
        self.clock = Clock()
        self.stats = RecordingStats()
        self.connections = Connections(limit)
        self.attempts = []
        self.cancelled = []
        self.factory = ProxyFactory(
            "tcp:7000",
            framing(clientFraming, LIMIT),
            framing("int32", LIMIT),
            self._connectBackend,
            self.connections,
            self.clock,
            self.stats,
            idleTimeout=idleTimeout,
            **options,
        )

    def _connectBackend(self, backendFactory):
        backendFactory.backendName = "tcp:backend:9000"
        attempt = Deferred(lambda d: self.cancelled.append(backendFactory))
        self.attempts.append((backendFactory, attempt))
        return attempt

    def connectClient(self, source="192.0.2.1"):
        protocol = self.factory.buildProtocol(IPv4Address("TCP", source, 5000))
        transport = HalfCloseableTransport(peerAddress=IPv4Address("TCP", source, 5000))
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def connectBackend(self, index=0):
        backendFactory, attempt = self.attempts[index]
        protocol = backendFactory.buildProtocol(None)
        transport = HalfCloseableTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        attempt.callback(protocol)
        return protocol, transport

    def pair(self):
        client, clientTransport = self.connectClient()
        backend, backendTransport = self.connectBackend(len(self.attempts) - 1)
        return client, clientTransport, backend, backendTransport


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def tcpServerTransport(testCase, protocol):
    """
    A real Twisted TCP transport for C{protocol} over a real loopback
    connection, on a L{MemoryReactorClock}; and the socket under it.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    testCase.addCleanup(listener.close)
    peer = socket.create_connection(listener.getsockname())
    testCase.addCleanup(peer.close)
    ours, address = listener.accept()
    testCase.addCleanup(ours.close)
    ours.setblocking(False)
    transport = tcp.Server(ours, protocol, address, None, 1, MemoryReactorClock())
    return transport, ours


def noDelay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class NoDelayTests(SynchronousTestCase):
    """
    Nagle's algorithm is off on both connections of a pair: the gateway
    already writes once per read chunk, and a short reply held back until
    the previous segment is acknowledged is only latency.
    """

    def test_clientAndBackend(self):
        harness = Harness()
        client = harness.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        clientTransport, clientSocket = tcpServerTransport(self, client)
        self.assertFalse(noDelay(clientSocket))
        client.makeConnection(clientTransport)
        self.assertTrue(noDelay(clientSocket))

        backendFactory, attempt = harness.attempts[0]
        backend = backendFactory.buildProtocol(None)
        backendTransport, backendSocket = tcpServerTransport(self, backend)
        self.assertFalse(noDelay(backendSocket))
        backend.makeConnection(backendTransport)
        attempt.callback(backend)
        self.assertTrue(noDelay(backendSocket))

    def test_underTLS(self):
        """
        A backend reached over TLS has Nagle off on its TCP connection from
        the start, for the handshake too.
        """
        harness = Harness()
        harness.connectClient()
        backendFactory, attempt = harness.attempts[0]
        tlsFactory = TLSMemoryBIOFactory(
            optionsForClientTLS("backend.example"), True, backendFactory, harness.clock
        )
        tlsProtocol = tlsFactory.buildProtocol(None)
        transport, backendSocket = tcpServerTransport(self, tlsProtocol)
        self.assertFalse(noDelay(backendSocket))
        tlsProtocol.makeConnection(transport)
        self.assertTrue(noDelay(backendSocket))

    def test_notTCP(self):
        """
        A client on a UNIX socket is served as any other.
        """
        harness = Harness()
        client = harness.factory.buildProtocol(None)
        ours, peer = socket.socketpair()
        self.addCleanup(peer.close)
        self.addCleanup(ours.close)
        transport = unix.Server(ours, client, "", None, 1, MemoryReactorClock())
        client.makeConnection(transport)
        self.assertEqual(len(harness.attempts), 1)
        self.assertTrue(transport.connected)


class ConnectTests(SynchronousTestCase):
    def test_pausedUntilBackendConnected(self):
        """
        The client is not read until the backend exists; then both transports
        are registered as each other's streaming producers.
        """
        harness = Harness()
        client, clientTransport = harness.connectClient()
        self.assertEqual(clientTransport.producerState, "paused")
        self.assertEqual(len(harness.attempts), 1)
        backend, backendTransport = harness.connectBackend()
        self.assertEqual(clientTransport.producerState, "producing")
        self.assertIs(clientTransport.producer, backendTransport)
        self.assertTrue(clientTransport.streaming)
        self.assertIs(backendTransport.producer, clientTransport)
        self.assertTrue(backendTransport.streaming)

    def test_earlyDataDelivered(self):
        """
        Bytes that arrive before the backend is connected are sent once it is.
        """
        harness = Harness()
        client, clientTransport = harness.connectClient()
        client.dataReceived(b"early\n")
        backend, backendTransport = harness.connectBackend()
        self.assertEqual(backendTransport.value(), frame(b"early"))

    def test_backendUnavailable(self):
        """
        A failed backend connection closes the client, with that reason.
        """
        harness = Harness()
        client, clientTransport = harness.connectClient()
        harness.attempts[0][1].errback(ConnectionRefusedError())
        self.assertFalse(clientTransport.connected)
        self.assertEqual(
            harness.stats.named("closed"), [(stats.BACKEND_UNAVAILABLE, 0.0)]
        )
        self.assertEqual(len(harness.connections), 0)

    def test_halfClosedThenBackendUnavailable(self):
        """
        A client that sends and shuts its side before the backend connect
        fails: the reason is the backend, not the client's half-close.
        """
        harness = Harness()
        client, clientTransport = harness.connectClient()
        client.dataReceived(b"x")
        client.readConnectionLost()
        harness.attempts[0][1].errback(ConnectionRefusedError())
        self.assertEqual(
            harness.stats.named("closed"), [(stats.BACKEND_UNAVAILABLE, 0.0)]
        )

    def test_clientGoneWhileConnecting(self):
        """
        A client that leaves before its backend connects cancels the attempt.
        """
        harness = Harness()
        client, clientTransport = harness.connectClient()
        clientTransport.loseConnection()
        self.assertEqual(harness.cancelled, [harness.attempts[0][0]])
        self.assertEqual(harness.stats.named("closed"), [(stats.CLIENT_CLOSED, 0.0)])

    def test_readyAskedLate(self):
        """
        A backend protocol's C{ready} (L{gateway.backends.BackendConnection})
        is made only when asked for; asked after the connection is up, it
        has fired with the protocol, and asked after a connection lost
        before it was up, it has failed with the reason.
        """
        harness = Harness()
        harness.connectClient()
        backend, backendTransport = harness.connectBackend()
        self.assertIs(self.successResultOf(backend.ready), backend)

        harness.connectClient()
        backendFactory = harness.attempts[1][0]
        lost = backendFactory.buildProtocol(None)
        lost.connectionLost(Failure(ConnectionRefusedError()))
        self.failureResultOf(lost.ready, ConnectionRefusedError)

    def test_readyAskedEarly(self):
        """
        Asked for before the connection is up, C{ready} fires once it is,
        and fails if the connection is lost first.
        """
        harness = Harness()
        harness.connectClient()
        backend = harness.attempts[0][0].buildProtocol(None)
        ready = backend.ready
        self.assertNoResult(ready)
        backend.makeConnection(HalfCloseableTransport())
        self.assertIs(self.successResultOf(ready), backend)

        harness.connectClient()
        lost = harness.attempts[1][0].buildProtocol(None)
        ready = lost.ready
        lost.connectionLost(Failure(ConnectionRefusedError()))
        self.failureResultOf(ready, ConnectionRefusedError)

    def test_connectionLimit(self):
        """
        Past the limit, a connection is accepted, counted and closed at once,
        and never reaches a backend.
        """
        harness = Harness(limit=1)
        harness.connectClient()
        client, clientTransport = harness.connectClient()
        self.assertFalse(clientTransport.connected)
        self.assertEqual(len(harness.attempts), 1)
        self.assertEqual(
            [event[0] for event in harness.stats.events],
            ["accepted", "accepted", "rejected"],
        )
        self.assertEqual(len(harness.connections), 1)


class TLSBackendTests(SynchronousTestCase):
    """
    A backend reached over TLS joins its pair only once its handshake is
    done.
    """

    def connectTLSBackend(self, harness):
        backendFactory, attempt = harness.attempts[0]
        tlsFactory = TLSMemoryBIOFactory(
            optionsForClientTLS("backend.example"),
            True,
            backendFactory,
            harness.clock,
        )
        tlsProtocol = tlsFactory.buildProtocol(None)
        tlsProtocol.makeConnection(StringTransport())
        return tlsProtocol, tlsProtocol.wrappedProtocol

    def test_readyAfterHandshake(self):
        """
        The client stays paused until the handshake is done; then the pair
        is joined and C{ready} fires. Nothing is sent in clear.
        """
        harness = Harness()
        client, clientTransport = harness.connectClient()
        client.dataReceived(b"early\n")
        tlsProtocol, backend = self.connectTLSBackend(harness)
        self.assertNoResult(backend.ready)
        self.assertIsNone(client.backend)
        self.assertEqual(clientTransport.producerState, "paused")
        backend.handshakeCompleted()
        self.assertIs(self.successResultOf(backend.ready), backend)
        self.assertIs(client.backend, backend)
        self.assertEqual(clientTransport.producerState, "producing")
        harness.clock.advance(0)
        self.assertNotIn(b"early", tlsProtocol.transport.value())

    def test_failedHandshake(self):
        """
        A connection lost before its handshake is done fails C{ready} with
        the reason, and the client does not hear of it (the backend pool
        goes on to the next backend).
        """
        harness = Harness()
        client, clientTransport = harness.connectClient()
        tlsProtocol, backend = self.connectTLSBackend(harness)
        tlsProtocol.connectionLost(Failure(ConnectionLost("cut")))
        self.failureResultOf(backend.ready, ConnectionLost)
        self.assertTrue(clientTransport.connected)
        self.assertEqual(harness.stats.named("closed"), [])

    def test_cancelAborts(self):
        """
        Cancelling C{ready} (the connect timeout) aborts the connection.
        """
        harness = Harness()
        harness.connectClient()
        tlsProtocol, backend = self.connectTLSBackend(harness)
        backend.ready.cancel()
        self.failureResultOf(backend.ready, CancelledError)
        self.assertTrue(tlsProtocol.transport.disconnecting)


class TranslationTests(SynchronousTestCase):
    def test_bothWays(self):
        """
        Each direction is translated per chunk and counted once per chunk.
        """
        harness = Harness()
        client, clientTransport, backend, backendTransport = harness.pair()
        client.dataReceived(b"a\n\nbc\n")
        self.assertEqual(
            backendTransport.value(), frame(b"a") + frame(b"") + frame(b"bc")
        )
        backend.dataReceived(frame(b"x") + frame(b"yz")[:3])
        backend.dataReceived(frame(b"yz")[3:])
        self.assertEqual(clientTransport.value(), b"x\nyz\n")
        self.assertEqual(harness.stats.named("upstream"), [(3, 3)])
        self.assertEqual(harness.stats.named("downstream"), [(1, 1), (1, 2)])

    def test_clientProtocolError(self):
        """
        An oversized client message closes the pair; the messages before it
        in the same chunk are still delivered.
        """
        harness = Harness()
        client, clientTransport, backend, backendTransport = harness.pair()
        client.dataReceived(b"ok\n" + b"x" * (LIMIT + 1) + b"\n")
        self.assertEqual(backendTransport.value(), frame(b"ok"))
        self.assertFalse(clientTransport.connected)
        self.assertFalse(backendTransport.connected)
        self.assertEqual(
            harness.stats.named("protocolError"), [(stats.CLIENT, "too_long")]
        )
        self.assertEqual(harness.stats.named("closed"), [(stats.PROTOCOL_ERROR, 0.0)])

    def test_backendProtocolError(self):
        """
        A backend payload the client framing cannot carry is the backend's
        protocol error.
        """
        harness = Harness()
        client, clientTransport, backend, backendTransport = harness.pair()
        backend.dataReceived(frame(b"fine") + frame(b"two\nlines"))
        self.assertEqual(clientTransport.value(), b"fine\n")
        self.assertEqual(
            harness.stats.named("protocolError"), [(stats.BACKEND, "unencodable")]
        )
        self.assertEqual(harness.stats.named("closed"), [(stats.PROTOCOL_ERROR, 0.0)])

    def test_compiledTranslatorWhenBuilt(self):
        """
        Both directions translate with the compiled translator when it is
        built and not switched off (C{GATEWAY_NO_EXTENSIONS}), else with the
        reference.
        """
        harness = Harness()
        client, _, _, _ = harness.pair()
        expected = accelerated.speedups.Translator if accelerated.ACCELERATED else None
        for direction in (client.upstream, client.downstream):
            if expected is None:
                self.assertIsInstance(direction.translator, Translator)
            else:
                self.assertIsInstance(direction.translator, expected)

    def test_otherPairsUntouched(self):
        """
        A protocol error on one pair leaves another pair working.
        """
        harness = Harness()
        bad = harness.pair()
        good = harness.pair()
        bad[0].dataReceived(b"x" * (LIMIT + 1))
        good[0].dataReceived(b"still\n")
        self.assertTrue(good[1].connected)
        self.assertEqual(good[3].value(), frame(b"still"))


class HalfCloseTests(SynchronousTestCase):
    def test_clientHalfClose(self):
        """
        A client that shuts its write side has its unterminated last line
        delivered, the backend's write side shut, and still gets the replies.
        """
        harness = Harness()
        client, clientTransport, backend, backendTransport = harness.pair()
        client.dataReceived(b"a\nb")
        client.readConnectionLost()
        self.assertEqual(backendTransport.value(), frame(b"a") + frame(b"b"))
        self.assertTrue(backendTransport.writeClosed)
        self.assertIsNone(backendTransport.producer)
        # A client slow to read the replies still holds the backend back.
        self.assertIs(clientTransport.producer, backendTransport)
        backend.dataReceived(frame(b"A") + frame(b"B"))
        backend.readConnectionLost()
        self.assertEqual(clientTransport.value(), b"A\nB\n")
        self.assertFalse(clientTransport.connected)
        self.assertFalse(backendTransport.connected)
        self.assertEqual(harness.stats.named("closed"), [(stats.CLIENT_CLOSED, 0.0)])

    def test_backendHalfClose(self):
        """
        A backend that shuts its write side: the client's write side is shut
        and the client's remaining messages still reach the backend.
        """
        harness = Harness()
        client, clientTransport, backend, backendTransport = harness.pair()
        backend.dataReceived(frame(b"bye"))
        backend.readConnectionLost()
        self.assertEqual(clientTransport.value(), b"bye\n")
        self.assertTrue(clientTransport.writeClosed)
        self.assertIsNone(clientTransport.producer)
        self.assertIs(backendTransport.producer, clientTransport)
        client.dataReceived(b"late\n")
        self.assertEqual(backendTransport.value(), frame(b"late"))
        client.readConnectionLost()
        self.assertFalse(clientTransport.connected)
        self.assertEqual(harness.stats.named("closed"), [(stats.BACKEND_CLOSED, 0.0)])

    def test_halfCloseBeforeBackendConnected(self):
        """
        A client that sends and shuts its side before the backend is connected
        still has everything delivered, then the backend's side shut.
        """
        harness = Harness()
        client, clientTransport = harness.connectClient()
        client.dataReceived(b"quick")
        client.readConnectionLost()
        backend, backendTransport = harness.connectBackend()
        self.assertEqual(backendTransport.value(), frame(b"quick"))
        self.assertTrue(backendTransport.writeClosed)

    def test_truncatedBackendFrame(self):
        """
        A backend that ends inside a frame has broken the framing.
        """
        harness = Harness()
        client, clientTransport, backend, backendTransport = harness.pair()
        backend.dataReceived(frame(b"whole") + frame(b"partial")[:6])
        backend.readConnectionLost()
        self.assertEqual(clientTransport.value(), b"whole\n")
        self.assertEqual(
            harness.stats.named("protocolError"), [(stats.BACKEND, "truncated")]
        )


class TimeoutTests(SynchronousTestCase):
    def test_idle(self):
        """
        No bytes either way for the idle timeout closes the pair; a byte in
        either direction starts the wait again.
        """
        harness = Harness(idleTimeout=10)
        client, clientTransport, backend, backendTransport = harness.pair()
        harness.clock.advance(9)
        backend.dataReceived(frame(b"x"))
        harness.clock.advance(9)
        client.dataReceived(b"y\n")
        harness.clock.advance(9)
        self.assertTrue(clientTransport.connected)
        harness.clock.advance(1)
        self.assertFalse(clientTransport.connected)
        self.assertFalse(backendTransport.connected)
        self.assertEqual(harness.stats.named("closed"), [(stats.IDLE_TIMEOUT, 28.0)])

    def test_idleAfterLastChunk(self):
        """
        The pair closes exactly the idle timeout after the last chunk, not
        before, however the chunks fell.
        """
        harness = Harness(idleTimeout=10)
        client, clientTransport, backend, backendTransport = harness.pair()
        harness.clock.advance(2.5)
        client.dataReceived(b"a\n")
        harness.clock.advance(7)
        backend.dataReceived(frame(b"a"))
        harness.clock.advance(9.75)
        self.assertTrue(clientTransport.connected)
        harness.clock.advance(0.25)
        self.assertFalse(clientTransport.connected)
        self.assertEqual(harness.stats.named("closed"), [(stats.IDLE_TIMEOUT, 19.5)])

    def test_idleTimerCancelled(self):
        """
        A pair that closes leaves no timer behind.
        """
        harness = Harness(idleTimeout=10)
        client, clientTransport, backend, backendTransport = harness.pair()
        client.dataReceived(b"a\n")
        self.assertEqual(len(harness.clock.getDelayedCalls()), 1)
        clientTransport.loseConnection()
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_idleWhileConnecting(self):
        """
        The idle timeout also ends a client whose backend never answers.
        """
        harness = Harness(idleTimeout=5)
        client, clientTransport = harness.connectClient()
        harness.clock.advance(5)
        self.assertFalse(clientTransport.connected)
        self.assertEqual(harness.cancelled, [harness.attempts[0][0]])
        self.assertEqual(harness.stats.named("closed"), [(stats.IDLE_TIMEOUT, 5.0)])


class ConnectionsTests(SynchronousTestCase):
    def test_closeAllWhileConnecting(self):
        """
        The end of a drain abandons a backend connect under way.
        """
        harness = Harness()
        harness.connectClient()
        harness.connections.closeAll(stats.SHUTDOWN)
        self.assertEqual(harness.cancelled, [harness.attempts[0][0]])
        self.assertEqual(harness.stats.named("closed"), [(stats.SHUTDOWN, 0.0)])

    def test_closeAll(self):
        """
        Closing all ends every pair with the reason given, and L{whenEmpty}
        fires once they are gone.
        """
        harness = Harness()
        first = harness.pair()
        harness.connectClient()
        emptied = harness.connections.whenEmpty()
        self.assertNoResult(emptied)
        harness.connections.closeAll(stats.SHUTDOWN)
        self.successResultOf(emptied)
        self.assertFalse(first[3].connected)
        self.assertEqual(
            [reason for reason, _ in harness.stats.named("closed")],
            [stats.SHUTDOWN, stats.SHUTDOWN],
        )

    def test_whenEmptyCancelled(self):
        """
        A cancelled wait is forgotten, so emptying later does not fail.
        """
        harness = Harness()
        client, clientTransport, _, _ = harness.pair()
        waiting = harness.connections.whenEmpty()
        waiting.cancel()
        self.failureResultOf(waiting)
        clientTransport.loseConnection()
        self.assertEqual(len(harness.connections), 0)


class StuckTransport(HalfCloseableTransport):
    """
    A transport whose peer never reads: a polite close never completes,
    only an abort ends it.
    """

    def loseConnection(self):
        self.disconnecting = True

    def abortConnection(self):
        StringTransportWithDisconnection.loseConnection(self)


class StuckPeerTests(SynchronousTestCase):
    def test_backendStuckAfterClientLeft(self):
        """
        When the client has gone and the backend never takes what is left
        for it, the idle timeout still ends the pair instead of leaving the
        backend connection open for ever.
        """
        harness = Harness(idleTimeout=10)
        client, clientTransport = harness.connectClient()
        backendFactory, attempt = harness.attempts[0]
        backend = backendFactory.buildProtocol(None)
        backendTransport = StuckTransport()
        backendTransport.protocol = backend
        backend.makeConnection(backendTransport)
        attempt.callback(backend)
        client.dataReceived(b"unread\n")
        clientTransport.loseConnection()
        self.assertTrue(backendTransport.disconnecting)
        self.assertEqual(len(harness.connections), 1)
        harness.clock.advance(10)
        self.assertFalse(backendTransport.connected)
        self.assertEqual(len(harness.connections), 0)
        self.assertEqual(harness.stats.named("closed"), [(stats.CLIENT_CLOSED, 10.0)])


class WriteProgressTests(SynchronousTestCase):
    """
    Writes that make progress (a peer taking bytes) are activity for the
    idle timeout, seen when its timer fires.
    """

    def slowReader(self, side):
        """
        A pair under a 10 s idle timeout, one chunk read at the start, whose
        C{side} ("client" or "backend") transport's peer takes 200 more
        bytes each second until 25 s; run to 25 s, one second at a time.
        """
        harness = Harness(idleTimeout=10)
        taken = {}
        harness.factory.delivered = taken.get
        client, clientTransport, backend, backendTransport = harness.pair()
        transport = clientTransport if side == "client" else backendTransport
        backend.dataReceived(frame(b"x" * 50))
        for seconds in range(1, 26):
            harness.clock.advance(1)
            taken[transport] = seconds * 200
        return harness, clientTransport

    def test_download(self):
        """
        A client that goes on reading keeps the pair open; once it stops,
        the pair ends within two idle timeouts: the timer, firing at 10, 20
        and 30 s, saw progress each time, and none at 40 s.
        """
        harness, clientTransport = self.slowReader("client")
        harness.clock.pump([1] * 14)
        self.assertTrue(clientTransport.connected)
        harness.clock.advance(1)
        self.assertFalse(clientTransport.connected)
        self.assertEqual(harness.stats.named("closed"), [(stats.IDLE_TIMEOUT, 40.0)])

    def test_upload(self):
        """
        The same for a backend that goes on reading.
        """
        harness, clientTransport = self.slowReader("backend")
        harness.clock.pump([1] * 15)
        self.assertEqual(harness.stats.named("closed"), [(stats.IDLE_TIMEOUT, 40.0)])

    def test_unknown(self):
        """
        A transport whose progress cannot be known: reads only count.
        """
        harness = Harness(idleTimeout=10)
        harness.factory.delivered = lambda transport: None
        client, clientTransport, backend, backendTransport = harness.pair()
        harness.clock.advance(10)
        self.assertEqual(harness.stats.named("closed"), [(stats.IDLE_TIMEOUT, 10.0)])

    def test_stalledFromStart(self):
        """
        A peer that never takes a byte: the pair ends one idle timeout after
        the last read, as before.
        """
        harness = Harness(idleTimeout=10)
        harness.factory.delivered = lambda transport: 0
        client, clientTransport, backend, backendTransport = harness.pair()
        harness.clock.advance(3)
        backend.dataReceived(frame(b"x"))
        harness.clock.pump([1] * 10)
        self.assertEqual(harness.stats.named("closed"), [(stats.IDLE_TIMEOUT, 13.0)])


class ProxyLocalTests(SynchronousTestCase):
    """
    A PROXY version 2 C{LOCAL} header (a load balancer's health check)
    opens no backend connection until the client sends a byte.
    """

    def test_noBackendUntilFirstByte(self):
        harness = Harness(proxyHeader=True)
        client, clientTransport = harness.connectClient()
        client.proxyHeaderReceived(local=True)
        self.assertEqual(harness.attempts, [])
        client.dataReceived(b"first\n")
        self.assertEqual(len(harness.attempts), 1)
        backend, backendTransport = harness.connectBackend()
        self.assertEqual(backendTransport.value(), frame(b"first"))
        self.assertEqual(clientTransport.producerState, "producing")

    def test_closedQuietly(self):
        """
        A LOCAL connection that ends without a byte is counted as closed
        but logged at debug level only.
        """
        harness = Harness(proxyHeader=True)
        client, clientTransport = harness.connectClient()
        client.proxyHeaderReceived(local=True)
        with capturedLogs() as events:
            client.readConnectionLost()
        self.assertEqual(harness.attempts, [])
        self.assertEqual(harness.stats.named("closed"), [(stats.CLIENT_CLOSED, 0.0)])
        closed = [e for e in events if e["log_format"].startswith("closed ")]
        self.assertEqual([e["log_level"] for e in closed], [LogLevel.debug])

    def test_notLocalLogged(self):
        """
        Any other connection's close is logged at info level.
        """
        harness = Harness(proxyHeader=True)
        client, clientTransport = harness.connectClient()
        client.proxyHeaderReceived(local=False)
        with capturedLogs() as events:
            clientTransport.loseConnection()
        closed = [e for e in events if e["log_format"].startswith("closed ")]
        self.assertEqual([e["log_level"] for e in closed], [LogLevel.info])

    def test_localBadFirstBytes(self):
        """
        First bytes that break the framing end the pair before any backend.
        """
        harness = Harness(proxyHeader=True)
        client, clientTransport = harness.connectClient()
        client.proxyHeaderReceived(local=True)
        client.dataReceived(b"x" * (LIMIT + 1))
        self.assertEqual(harness.attempts, [])
        self.assertEqual(harness.stats.named("closed"), [(stats.PROTOCOL_ERROR, 0.0)])


class CloseLineTests(SynchronousTestCase):
    """
    The close line's event: its text is L{CLOSED_FORMAT} filled with the
    event's own fields, which are all on the event for the JSON log.
    """

    def closedEvent(self, name="tcp:7000"):
        harness = Harness()
        harness.factory.name = name
        client, clientTransport, backend, backendTransport = harness.pair()
        client.dataReceived(b"hello\n")
        backend.dataReceived(frame(b"hi") + frame(b"there"))
        harness.clock.advance(1.25)
        with capturedLogs() as events:
            clientTransport.loseConnection()
        [closed] = [e for e in events if "messagesUp" in e]
        return closed

    def test_text(self):
        """
        The line reads as the documented template renders the fields.
        """
        event = self.closedEvent()
        text = formatEvent(event)
        self.assertEqual(
            text,
            "closed tcp:7000 192.0.2.1:5000 via tcp:backend:9000 after 1.250s:"
            " 1 messages (5 bytes) up, 2 messages (7 bytes) down, client_closed",
        )
        self.assertEqual(text, CLOSED_FORMAT.format(**event))
        self.assertEqual(event["log_level"], LogLevel.info)

    def test_fields(self):
        """
        Every field is on the event as a value, in the JSON log too.
        """
        event = eventFromJSON(eventAsJSON(self.closedEvent()))
        self.assertEqual(
            {key: event[key] for key in CLOSE_FIELDS},
            {
                "listener": "tcp:7000",
                "client": "192.0.2.1:5000",
                "backend": "tcp:backend:9000",
                "duration": 1.25,
                "messagesUp": 1,
                "bytesUp": 5,
                "messagesDown": 2,
                "bytesDown": 7,
                "reason": stats.CLIENT_CLOSED,
                "closeCode": None,
                "closeCodeText": "",
                "tls": "",
            },
        )

    def test_braces(self):
        """
        A field's braces are text, not a format: a listener named with
        braces is printed as named, and so is the line read back from the
        JSON log.
        """
        event = self.closedEvent("tcp:{0}:{listener}")
        prefix = "closed tcp:{0}:{listener} 192.0.2.1:5000 via "
        self.assertTrue(formatEvent(event).startswith(prefix), formatEvent(event))
        again = formatEvent(eventFromJSON(eventAsJSON(event)))
        self.assertEqual(again, formatEvent(event))


CLOSE_FIELDS = (
    "listener",
    "client",
    "backend",
    "duration",
    "messagesUp",
    "bytesUp",
    "messagesDown",
    "bytesDown",
    "reason",
    "closeCode",
    "closeCodeText",
    "tls",
)


class RefusalTests(SynchronousTestCase):
    def test_refusedLogged(self):
        """
        Connections refused over the limit are logged, rate-limited: the
        first at once, the rest of the second in one line with their count.
        """
        harness = Harness(limit=1)
        harness.connectClient()
        with capturedLogs() as events:
            for _ in range(3):
                harness.connectClient()
            harness.clock.advance(1)
        refused = [
            (e["listener"], e["refusal"], e["count"], e["client"])
            for e in events
            if e["log_format"].startswith("refused")
        ]
        self.assertEqual(
            refused,
            [
                ("tcp:7000", "limit", 1, "192.0.2.1:5000"),
                ("tcp:7000", "limit", 2, "192.0.2.1:5000"),
            ],
        )


def admitting(**settings):
    """
    A harness whose listener has these admission rules.
    """
    harness = Harness(limit=100, proxyHeader=settings.pop("proxyHeader", False))
    harness.factory.admission = Admission(AdmissionSettings(**settings), harness.clock)
    return harness


def refusals(events):
    return [
        (e["refusal"], e["count"], e["client"])
        for e in events
        if e["log_format"].startswith("refused")
    ]


class AdmissionTests(SynchronousTestCase):
    """
    The accept path asks admission before anything else happens; a refusal
    is closed at once, counted as rejected only, logged rate-limited.
    """

    def test_deniedAtAccept(self):
        harness = admitting(
            allow=parseNetworks("--allow", ["192.0.2.0/24"]),
            deny=parseNetworks("--deny", ["192.0.2.128/25"]),
        )
        with capturedLogs() as events:
            client, transport = harness.connectClient("192.0.2.200")
            other, otherTransport = harness.connectClient("198.51.100.1")
        self.assertFalse(transport.connected)
        self.assertFalse(otherTransport.connected)
        self.assertEqual(harness.attempts, [])
        self.assertEqual(harness.stats.named("rejected"), [("denied",), ("denied",)])
        self.assertEqual(harness.stats.named("closed"), [])
        self.assertEqual(len(harness.connections), 0)
        self.assertEqual(refusals(events), [("denied", 1, "192.0.2.200:5000")])
        allowed, allowedTransport = harness.connectClient("192.0.2.1")
        self.assertTrue(allowedTransport.connected)
        self.assertEqual(len(harness.attempts), 1)

    def test_perSourceReleasedOnce(self):
        """
        The per-source count is taken at accept and given back once when
        the pair ends, whichever way.
        """
        harness = admitting(maxConnectionsPerSource=2)
        first = harness.connectClient()
        second = harness.connectClient()
        harness.connectClient()
        self.assertEqual(harness.stats.named("rejected"), [("per_source_limit",)])
        self.assertEqual(harness.factory.admission.concurrency.count(int(IPV4)), 2)
        first[1].loseConnection()
        self.assertEqual(harness.factory.admission.concurrency.count(int(IPV4)), 1)
        second[0].abort(stats.SHUTDOWN)
        self.assertEqual(len(harness.factory.admission.concurrency), 0)

    def test_rateLimited(self):
        harness = admitting(maxConnectionRatePerSource=2)
        for _ in range(3):
            client, transport = harness.connectClient()
            transport.loseConnection()
        self.assertEqual(harness.stats.named("rejected"), [("rate_limit",)])
        harness.clock.advance(0.5)
        client, transport = harness.connectClient()
        self.assertTrue(transport.connected)

    def test_unixExempt(self):
        harness = admitting(allow=parseNetworks("--allow", ["10.0.0.0/8"]))
        protocol = harness.factory.buildProtocol(None)
        transport = HalfCloseableTransport(peerAddress=UNIXAddress(b"/gw.sock"))
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.assertTrue(transport.connected)
        self.assertEqual(harness.stats.named("rejected"), [])

    def test_behindProxyHeader(self):
        """
        Behind a PROXY header, the address the header names is checked once
        the header is read: refused, the pair ends at once without a
        backend, counted as rejected only, with no close line.
        """
        harness = admitting(
            proxyHeader=True, deny=parseNetworks("--deny", ["203.0.113.0/24"])
        )
        # The load balancer's own address is allowed.
        client, transport = harness.connectClient("192.0.2.1")
        self.assertTrue(transport.connected)
        transport.peerAddr = IPv4Address("TCP", "203.0.113.9", 4000)
        with capturedLogs() as events:
            client.proxyHeaderReceived(local=False)
        self.assertFalse(transport.connected)
        self.assertEqual(harness.attempts, [])
        self.assertEqual(harness.stats.named("rejected"), [("denied",)])
        self.assertEqual(harness.stats.named("closed"), [])
        self.assertEqual(harness.stats.named("tlsHandshakeFailed"), [])
        self.assertEqual(len(harness.connections), 0)
        self.assertEqual(refusals(events), [("denied", 1, "203.0.113.9:4000")])
        self.assertEqual(
            [e for e in events if e["log_format"].startswith("closed")], []
        )

    def test_behindProxyHeaderCounted(self):
        """
        Behind a PROXY header, the per-source count is the named source's,
        taken after the header and released when the pair ends.
        """
        harness = admitting(proxyHeader=True, maxConnectionsPerSource=1)
        named = IPv4Address("TCP", "203.0.113.9", 4000)
        first, firstTransport = harness.connectClient()
        firstTransport.peerAddr = named
        first.proxyHeaderReceived(local=False)
        second, secondTransport = harness.connectClient()
        secondTransport.peerAddr = named
        second.proxyHeaderReceived(local=False)
        self.assertFalse(secondTransport.connected)
        self.assertEqual(harness.stats.named("rejected"), [("per_source_limit",)])
        firstTransport.loseConnection()
        self.assertEqual(len(harness.factory.admission.concurrency), 0)

    def test_localHeaderExempt(self):
        """
        A LOCAL header is the load balancer's health check: no rule applies.
        """
        harness = admitting(
            proxyHeader=True, allow=parseNetworks("--allow", ["10.0.0.0/8"])
        )
        client, transport = harness.connectClient()
        client.proxyHeaderReceived(local=True)
        self.assertTrue(transport.connected)
        self.assertEqual(harness.stats.named("rejected"), [])


IPV4 = ip_address("192.0.2.1")


class HandshakeTimeoutTests(SynchronousTestCase):
    """
    C{--handshake-timeout} over the preamble, through the client protocol.
    """

    def test_tls(self):
        """
        A TLS handshake not done in time: closed C{handshake_timeout},
        counted as a failed handshake, no backend.
        """
        harness = Harness(tls=True, handshakeTimeout=2, idleTimeout=300)
        client, transport = harness.connectClient()
        harness.clock.advance(2)
        self.assertFalse(transport.connected)
        self.assertEqual(harness.attempts, [])
        self.assertEqual(
            harness.stats.named("closed"), [(stats.HANDSHAKE_TIMEOUT, 2.0)]
        )
        self.assertEqual(harness.stats.named("tlsHandshakeFailed"), [()])
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_proxyHeader(self):
        harness = Harness(proxyHeader=True, handshakeTimeout=2)
        client, transport = harness.connectClient()
        harness.clock.advance(2)
        self.assertEqual(
            harness.stats.named("closed"), [(stats.HANDSHAKE_TIMEOUT, 2.0)]
        )
        self.assertEqual(harness.stats.named("tlsHandshakeFailed"), [])

    def test_doneInTime(self):
        """
        A preamble done in time is not timed any more.
        """
        harness = Harness(tls=True, handshakeTimeout=2)
        client, transport = harness.connectClient()
        harness.clock.advance(1.9)
        client.handshakeCompleted()
        harness.clock.advance(10)
        self.assertTrue(transport.connected)
        self.assertEqual(len(harness.attempts), 1)

    def test_idleFirst(self):
        """
        An idle timeout shorter than the handshake timeout ends it first,
        and names the reason.
        """
        harness = Harness(tls=True, handshakeTimeout=10, idleTimeout=3)
        client, transport = harness.connectClient()
        harness.clock.advance(3)
        self.assertEqual(harness.stats.named("closed"), [(stats.IDLE_TIMEOUT, 3.0)])
        self.assertEqual(harness.clock.getDelayedCalls(), [])


class DescribeTLSTests(SynchronousTestCase):
    def test_failedHandshake(self):
        """
        After a failed handshake: OpenSSL's reason.
        """
        from OpenSSL import SSL

        from gateway.proxy import describeTLS

        failure = Failure(SSL.Error([("SSL routines", "", "http request")]))
        self.assertEqual(
            describeTLS(StringTransport(), False, failure), " (http request)"
        )
        lost = Failure(ConnectionLost())
        self.assertEqual(describeTLS(StringTransport(), False, lost), "")

    def test_notTLS(self):
        """
        A transport with no TLS connection under it: nothing.
        """
        from gateway.proxy import describeTLS

        self.assertEqual(describeTLS(StringTransport(), True, None), "")


class LinkTests(SynchronousTestCase):
    """
    What a client sent before its backend was connected goes out as every
    chunk after it does.
    """

    def test_pendingSentAtOnce(self):
        """
        Linking a direction sends what waited during the call, over a real
        TCP transport with nothing queued, without waiting to be writable.
        """
        reactor = MemoryReactorClock()
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        ours.setblocking(False)
        peer.setblocking(False)
        target = tcp.Server(ours, Protocol(), ("127.0.0.1", 40000), None, 1, reactor)
        direction = Direction(
            stats.CLIENT,
            translator(framing("lf", LIMIT), framing("int32", LIMIT)),
            lambda messages, payload: None,
            reactor.seconds,
            lambda peer, error: None,
        )
        direction.dataReceived(b"early\n")
        direction.link(StringTransport(), target)
        self.assertEqual(peer.recv(100), frame(b"early"))
        self.assertNotIn(target, reactor.getWriters())
