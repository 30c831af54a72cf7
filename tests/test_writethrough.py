"""
Tests for L{gateway.writethrough}: a real TCP transport over a real socket
pair, with a L{MemoryReactorClock} standing in for the reactor so that the test
decides when the transport's queued bytes are sent (C{doWrite}).
"""

import socket

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway import writethrough

# Small kernel buffers, so that a write of BIG bytes cannot be taken whole.
SMALL_BUFFER = 4096
BIG = 1024 * 1024
# More doWrite/recv rounds than moving BIG bytes through SMALL_BUFFER needs.
MAX_ROUNDS = 10000


@implementer(IPushProducer)
class Producer:
    """
    A streaming producer that remembers whether it was paused.
    """

    paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        pass


class WriteThroughTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        ours, self.peer = socket.socketpair()
        self.addCleanup(self.peer.close)
        self.addCleanup(ours.close)
        self.peer.setblocking(False)
        self.transport = tcp.Server(
            ours, Protocol(), ("127.0.0.1", 40000), None, 1, self.reactor
        )

    def received(self) -> bytes:
        """
        Everything the peer can read now.
        """
        chunks = []
        while True:
            try:
                chunk = self.peer.recv(65536)
            except BlockingIOError:
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def queued(self) -> bool:
        """
        Whether the transport holds bytes and waits to be writable.
        """
        return self.transport in self.reactor.getWriters()

    def drain(self) -> bytes:
        """
        Let the transport send everything it queued, reading as the peer.
        """
        data = [self.received()]
        for _ in range(MAX_ROUNDS):
            if not self.queued():
                return b"".join(data)
            self.assertIsNone(self.transport.doWrite())
            data.append(self.received())
        self.fail(f"still queued after {MAX_ROUNDS} rounds")

    def shrinkBuffers(self):
        self.transport.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER
        )
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)

    def fillKernelBuffers(self) -> bytes:
        """
        Send directly until the kernel takes no more; return what was sent.
        """
        self.shrinkBuffers()
        sent = []
        chunk = b"f" * SMALL_BUFFER
        for _ in range(MAX_ROUNDS):
            try:
                count = self.transport.socket.send(chunk)
            except BlockingIOError:
                return b"".join(sent)
            sent.append(chunk[:count])
        self.fail("the kernel kept taking bytes")

    def test_sentAtOnce(self):
        """
        The bytes for a transport with nothing queued are sent during the call, and the
        transport never waits to be writable.
        """
        writethrough.write(self.transport, b"hello")
        self.assertEqual(self.received(), b"hello")
        self.assertFalse(self.queued())
        self.assertTrue(writethrough.canSendNow(self.transport))

    def test_behindQueuedBytes(self):
        """
        Bytes already queued by the transport go first: new ones queue
        behind them rather than overtake them.
        """
        self.transport.write(b"first ")
        self.assertFalse(writethrough.canSendNow(self.transport))
        writethrough.write(self.transport, b"second")
        self.assertEqual(self.received(), b"")
        self.assertEqual(self.drain(), b"first second")
        self.assertTrue(writethrough.canSendNow(self.transport))

    def test_partialSend(self):
        """
        What the kernel does not take at once is queued by the transport,
        and everything arrives once, in order.
        """
        self.shrinkBuffers()
        payload = bytes(range(256)) * (BIG // 256)
        writethrough.write(self.transport, payload)
        self.assertTrue(self.queued())
        self.assertEqual(self.drain(), payload)

    def test_fullKernelBuffer(self):
        """
        When the kernel takes nothing (EAGAIN), the bytes are queued whole.
        """
        filler = self.fillKernelBuffers()
        writethrough.write(self.transport, b"after")
        self.assertTrue(self.queued())
        self.assertEqual(self.drain(), filler + b"after")

    def test_producerPaused(self):
        """
        A partial send leaves the rest to the transport, which pauses its
        streaming producer when that rest fills its buffer, as Twisted's
        own write does; while it is paused, writes are queued.
        """
        producer = Producer()
        self.transport.registerProducer(producer, True)
        self.shrinkBuffers()
        writethrough.write(self.transport, b"x" * BIG)
        self.assertTrue(producer.paused)
        writethrough.write(self.transport, b"y")
        self.assertEqual(self.received()[-1:], b"x")
        self.assertEqual(self.drain()[-2:], b"xy")
        self.assertFalse(producer.paused)

    def test_brokenConnection(self):
        """
        A send that fails leaves the bytes queued, for the transport to meet
        the error on its next send and report the connection lost.
        """
        writethrough.write(self.transport, b"unread")
        # Closing a socket with unread bytes resets the connection.
        self.peer.close()
        writethrough.write(self.transport, b"lost")
        self.assertTrue(self.queued())
        self.assertIsInstance(self.transport.doWrite(), ConnectionLost)

    def test_closing(self):
        """
        Once C{loseConnection} is called, bytes go through the transport's
        queue, which sends them before it closes.
        """
        self.transport.loseConnection()
        self.assertFalse(writethrough.canSendNow(self.transport))
        writethrough.write(self.transport, b"last")
        self.assertEqual(self.received(), b"")
        self.assertIsNotNone(self.transport.doWrite())
        self.assertEqual(self.received(), b"last")

    def test_halfClosing(self):
        """
        Once C{loseWriteConnection} is called, bytes go through the
        transport's queue, which sends them before it shuts its write side.
        """
        self.transport.loseWriteConnection()
        self.assertFalse(writethrough.canSendNow(self.transport))
        writethrough.write(self.transport, b"last")
        self.assertEqual(self.received(), b"")
        self.transport.doWrite()
        self.assertEqual(self.received(), b"last")

    def test_aborted(self):
        """
        Nothing is sent once the connection is aborted.
        """
        self.transport.abortConnection()
        self.assertFalse(writethrough.canSendNow(self.transport))
        writethrough.write(self.transport, b"dropped")
        self.assertEqual(self.received(), b"")

    def test_disconnected(self):
        """
        Nothing is sent once the connection is lost.
        """
        self.transport.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(writethrough.canSendNow(self.transport))
        writethrough.write(self.transport, b"dropped")
        self.assertEqual(self.received(), b"")

    def test_otherTransports(self):
        """
        A transport that is not a TCP connection is written to through its
        own C{write}.
        """
        transport = StringTransport()
        writethrough.write(transport, b"hello")
        self.assertEqual(transport.value(), b"hello")

    def test_transportKinds(self):
        """
        Both ends of a pair use the fast path: the gateway's client
        connections are accepted TCP (or UNIX) servers, its backend ones
        TCP (or UNIX) clients.
        """
        from twisted.internet import unix

        for kind in (tcp.Server, tcp.Client, unix.Server, unix.Client):
            self.assertTrue(issubclass(kind, tcp.Connection), kind)


class PinTests(SynchronousTestCase):
    """
    The private state of Twisted's TCP transports that L{writethrough}
    reads is still there, under those names: a Twisted release that changes
    it fails here.
    """

    def test_attributesOfAConnection(self):
        """
        A connected transport has every attribute read, with the values of
        one that has nothing queued. (TCP and UNIX clients and servers share
        them: L{WriteThroughTests.test_transportKinds}.)
        """
        ours, peer = socket.socketpair()
        self.addCleanup(peer.close)
        self.addCleanup(ours.close)
        transport = tcp.Server(
            ours, Protocol(), ("127.0.0.1", 1), None, 1, MemoryReactorClock()
        )
        for name in writethrough.PRIVATE_ATTRIBUTES:
            self.assertTrue(hasattr(transport, name), name)
        self.assertEqual(transport._tempDataLen, 0)
        self.assertEqual(transport.dataBuffer, b"")
        self.assertIs(transport._writeDisconnecting, False)
        self.assertIs(transport._aborting, False)
        self.assertIs(transport.TLS, False)
        self.assertTrue(writethrough.canSendNow(transport))

    def test_stateFollowsTheTransport(self):
        """
        The flags read move as the transport does: a queued write sets
        C{_tempDataLen}, C{loseWriteConnection} sets C{_writeDisconnecting},
        C{abortConnection} sets C{_aborting}.
        """
        ours, peer = socket.socketpair()
        self.addCleanup(peer.close)
        self.addCleanup(ours.close)
        reactor = MemoryReactorClock()
        transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1, reactor)
        transport.write(b"queued")
        self.assertEqual(transport._tempDataLen, len(b"queued"))
        transport.loseWriteConnection()
        self.assertTrue(transport._writeDisconnecting)
        transport.abortConnection()
        self.assertTrue(transport._aborting)


class _Renamed(tcp.Server):
    """
    A TCP transport as a Twisted release that renamed C{_aborting} would
    make it: its own code works, the name L{writethrough} reads is gone.
    """

    @property
    def _aborting(self):
        raise AttributeError("'_Renamed' object has no attribute '_aborting'")


class FallbackTests(SynchronousTestCase):
    """
    A TCP transport lacking the private state L{writethrough} reads is
    written to through its own C{write}, and the gateway warns once.
    """

    def setUp(self):
        self.patch(writethrough, "_enabled", True)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        ours, self.peer = socket.socketpair()
        self.addCleanup(self.peer.close)
        self.addCleanup(ours.close)
        self.peer.setblocking(False)
        self.reactor = MemoryReactorClock()
        self.transport = _Renamed(
            ours, Protocol(), ("127.0.0.1", 40000), None, 1, self.reactor
        )

    def received(self) -> bytes:
        return WriteThroughTests.received(self)

    def warnings(self) -> list[str]:
        return [
            formatEvent(event)
            for event in self.events
            if event.get("log_level") == LogLevel.warn
        ]

    def test_missingAttribute(self):
        """
        Without C{_aborting}, the bytes are queued by the transport instead
        of sent at once, and arrive once it sends them.
        """
        writethrough.write(self.transport, b"hello")
        self.assertIn(self.transport, self.reactor.getWriters())
        self.assertFalse(writethrough._enabled)
        self.assertIsNone(self.transport.doWrite())
        self.assertEqual(self.received(), b"hello")
        [warning] = self.warnings()
        self.assertIn("_aborting", warning)
        self.assertIn("transport.write", warning)

    def test_warnedOnce(self):
        """
        Once it has fallen back, every write goes through the transport's
        own C{write}, with no further warning, even to a transport that has
        every attribute.
        """
        writethrough.write(self.transport, b"one")
        writethrough.write(self.transport, b"two")
        ours, peer = socket.socketpair()
        self.addCleanup(peer.close)
        self.addCleanup(ours.close)
        whole = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1, self.reactor)
        writethrough.write(whole, b"three")
        self.assertIn(whole, self.reactor.getWriters())
        self.assertEqual(len(self.warnings()), 1)
