"""
Tests for L{gateway.progress}: how many bytes a peer has taken, from the
kernel.
"""

import socket
import sys

from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from gateway.progress import delivered

SENT = b"x" * 1000


class DeliveredTests(SynchronousTestCase):
    def setUp(self):
        if sys.platform != "linux":
            raise SkipTest("TCP_INFO's tcpi_bytes_acked is Linux's")
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        self.peer = socket.create_connection(listener.getsockname())
        self.addCleanup(self.peer.close)
        self.ours, address = listener.accept()
        self.addCleanup(self.ours.close)
        self.transport = tcp.Server(
            self.ours, Protocol(), address, None, 1, MemoryReactorClock()
        )

    def exchange(self):
        """
        Send L{SENT} and have the peer read it and answer: the answer
        carries the acknowledgement of what was sent.
        """
        self.ours.sendall(SENT)
        received = b""
        while len(received) < len(SENT):
            received += self.peer.recv(len(SENT))
        self.peer.sendall(b"!")
        self.assertEqual(self.ours.recv(1), b"!")

    def test_tcp(self):
        """
        Over TCP, the count starts at 0 and grows by what the peer has
        acknowledged.
        """
        self.assertEqual(delivered(self.transport), 0)
        self.exchange()
        self.assertEqual(delivered(self.transport), len(SENT))

    def test_underWrappers(self):
        """
        Under protocol wrappers (TLS, the PROXY header reader), the socket
        under them is asked.
        """
        wrapper = ProtocolWrapper(WrappingFactory(Factory()), Protocol())
        wrapper.makeConnection(self.transport)
        self.exchange()
        self.assertEqual(delivered(wrapper), len(SENT))

    def test_unknown(self):
        """
        Not a socket, or not TCP: None.
        """
        self.assertIsNone(delivered(StringTransport()))
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)

        class Unix:
            def getHandle(self):
                return left

        self.assertIsNone(delivered(Unix()))
