"""
Tests for L{gateway.headerfirst}: the PROXY header sent to a backend is the
first thing on the wire, in clear before a TLS backend's ClientHello, as
HAProxy and nginx read it.
"""

import os

import trustme
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    clientFromString,
)
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from gateway.headerfirst import (
    HeaderBeforeTLSUnavailable,
    HeaderFirstEndpoint,
    HeaderFirstProtocol,
    backendEndpoint,
    splitTLS,
    wrapEndpoint,
)
from tests.e2e import BackendFactory, UpperBackend, listenUntilClosed, runGateway
from tests.reliability import connect

HEADER = b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 7000\r\n"
# The first byte of a TLS record carrying a handshake message (ClientHello).
TLS_HANDSHAKE_RECORD = 0x16


class HeaderedFactory(Factory):
    """
    A backend connection's factory as the proxy makes it: its protocols,
    and the header of the one client it connects for.
    """

    def __init__(self, protocol: Protocol, proxyHeader: bytes = HEADER) -> None:
        self.built = protocol
        self.proxyHeader = proxyHeader

    def buildProtocol(self, addr):
        return self.built


@implementer(IHalfCloseableProtocol)
class HalfCloseable(Protocol):
    def __init__(self) -> None:
        self.events = []

    def connectionMade(self) -> None:
        self.events.append(("made", self.transport.value()))

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))

    def readConnectionLost(self) -> None:
        self.events.append(("readConnectionLost",))

    def writeConnectionLost(self) -> None:
        self.events.append(("writeConnectionLost",))

    def connectionLost(self, reason=None) -> None:
        self.events.append(("lost",))


def connectOverMemory(factory):
    """
    Connect C{factory} through a L{HeaderFirstEndpoint} around a TCP
    endpoint on a L{MemoryReactor}, the connection completing at once on a
    L{StringTransport}.

    @return: the Deferred C{connect} gave, and the transport.
    """
    memory = MemoryReactor()
    endpoint = HeaderFirstEndpoint(TCP4ClientEndpoint(memory, "127.0.0.1", 9000))
    attempt = endpoint.connect(factory)
    connectorFactory = memory.tcpClients[-1][2]
    protocol = connectorFactory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return attempt, transport


class PlainTests(SynchronousTestCase):
    def test_headerFirst(self):
        """
        On a plain connection the header is written before the protocol is
        connected, and the protocol gets the raw transport itself (so its
        writes go straight to the socket).
        """
        inner = HalfCloseable()
        attempt, transport = connectOverMemory(HeaderedFactory(inner))
        self.assertEqual(inner.events, [("made", HEADER)])
        self.assertIs(inner.transport, transport)
        self.assertIs(self.successResultOf(attempt), inner)

    def test_noHeader(self):
        """
        A factory without a header is connected as the wrapped endpoint
        would connect it: nothing comes between.
        """
        inner = HalfCloseable()
        attempt, transport = connectOverMemory(HeaderedFactory(inner, b""))
        self.assertEqual(inner.events, [("made", b"")])
        self.assertIs(self.successResultOf(attempt), inner)

    def test_eventsPassThrough(self):
        """
        Data, half-closes and the end reach the wrapped protocol; the
        wrapper is half-closeable exactly when the wrapped protocol is.
        """
        inner = HalfCloseable()
        wrapper = HeaderFirstProtocol(HEADER, inner)
        self.assertTrue(IHalfCloseableProtocol.providedBy(wrapper))
        plain = HeaderFirstProtocol(HEADER, Protocol())
        self.assertFalse(IHalfCloseableProtocol.providedBy(plain))
        wrapper.makeConnection(StringTransport())
        wrapper.dataReceived(b"x")
        wrapper.readConnectionLost()
        wrapper.writeConnectionLost()
        wrapper.connectionLost(None)
        self.assertEqual(
            inner.events,
            [
                ("made", HEADER),
                ("data", b"x"),
                ("readConnectionLost",),
                ("writeConnectionLost",),
                ("lost",),
            ],
        )


class TLSTests(SynchronousTestCase):
    def test_twistedTLSEndpointPin(self):
        """
        The private parts of Twisted's C{tls:} client endpoint this module
        reads are where it reads them: the TCP endpoint under it, and the
        function building its L{TLSMemoryBIOFactory}. If this fails, a new
        Twisted has moved them: L{backendEndpoint} then refuses a C{tls:}
        backend with PROXY headers at start-up (test_unsplittable).
        """
        endpoint = clientFromString(MemoryReactor(), "tls:example.com:443")
        inner, wrap = splitTLS(endpoint)
        self.assertIsInstance(inner, HostnameEndpoint)
        self.assertIsInstance(wrap(Factory()), TLSMemoryBIOFactory)
        self.assertIsNone(splitTLS(TCP4ClientEndpoint(MemoryReactor(), "h", 1)))

    def test_unsplittable(self):
        """
        A TLS endpoint that cannot be taken apart is refused, not used with
        the header inside TLS.
        """
        self.assertRaises(
            HeaderBeforeTLSUnavailable,
            wrapEndpoint,
            TCP4ClientEndpoint(MemoryReactor(), "h", 1),
            tls=True,
        )

    def test_backendEndpoint(self):
        """
        Without PROXY headers a backend's endpoint is Twisted's own; with
        them, wrapped, TLS or not.
        """
        memory = MemoryReactor()
        plain = backendEndpoint(memory, "tcp:host=127.0.0.1:port=9000", False)
        self.assertIsInstance(plain, TCP4ClientEndpoint)
        for description in ("tcp:host=127.0.0.1:port=9000", "tls:localhost:9443"):
            self.assertIsInstance(
                backendEndpoint(memory, description, True), HeaderFirstEndpoint
            )

    def test_headerBeforeClientHello(self):
        """
        Over a C{tls:} endpoint the header is written in clear, then the
        TLS layer starts its handshake: the next bytes are a TLS handshake
        record. The protocol returned is the factory's own, under TLS.
        """
        tls = clientFromString(MemoryReactor(), "tls:localhost:9443")
        _, wrapTLS = splitTLS(tls)
        # The TLS endpoint's own TCP part would resolve localhost; one on a
        # memory reactor stands in for it.
        memory = MemoryReactor()
        tcp = TCP4ClientEndpoint(memory, "127.0.0.1", 9443)
        inner = Protocol()
        attempt = HeaderFirstEndpoint(tls, (tcp, wrapTLS)).connect(
            HeaderedFactory(inner)
        )
        protocol = memory.tcpClients[-1][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        written = transport.value()
        self.assertTrue(written.startswith(HEADER))
        self.assertEqual(written[len(HEADER)], TLS_HANDSHAKE_RECORD)
        self.assertIsInstance(inner.transport, TLSMemoryBIOProtocol)
        self.assertIs(self.successResultOf(attempt), inner)


def readHeader(data: bytes):
    """
    Twisted's own parsers on the start of C{data}: the header's info and
    the rest, or C{None} while incomplete.
    """
    if data.startswith(b"PROXY"):
        if b"\r\n" not in data:
            return None
        line, rest = data.split(b"\r\n", 1)
        return V1Parser.parse(line), rest
    if len(data) < 16:
        return None
    end = 16 + int.from_bytes(data[14:16], "big")
    if len(data) < end:
        return None
    return V2Parser.parse(data[:end]), data[end:]


class HeaderThenTLS(Protocol):
    """
    A backend as HAProxy's C{accept-proxy} on an C{ssl} bind line, or
    nginx's C{listen ... ssl proxy_protocol}, reads: a PROXY header in clear,
    then TLS carrying int32 frames (L{UpperBackend}).
    """

    def connectionMade(self) -> None:
        self.factory.opened(self)
        self._buffer = b""
        self._tls = None

    def dataReceived(self, data: bytes) -> None:
        if self._tls is not None:
            self._tls.dataReceived(data)
            return
        self._buffer += data
        parsed = readHeader(self._buffer)
        if parsed is None:
            return
        info, rest = parsed
        self.factory.headers.append((info.source, info.destination))
        self.factory.afterHeader.append(rest[:1])
        self._tls = self.factory.tls.buildProtocol(self.transport.getPeer())
        self._tls.makeConnection(self.transport)
        if rest:
            self._tls.dataReceived(rest)

    def connectionLost(self, reason=None) -> None:
        if self._tls is not None:
            self._tls.connectionLost(reason)
        self.factory.closed(self)


class EndToEndTests(TestCase):
    def setUp(self) -> None:
        self.ca = trustme.CA()
        directory = self.mktemp()
        os.makedirs(directory)
        self.roots = os.path.join(directory, "roots")
        os.makedirs(self.roots)
        self.ca.cert_pem.write_to_path(os.path.join(self.roots, "ca.pem"))

    def listenHeaderThenTLS(self) -> tuple[BackendFactory, BackendFactory, int]:
        issued = self.ca.issue_cert("localhost")
        options = PrivateCertificate.loadPEM(
            issued.cert_chain_pems[0].bytes() + issued.private_key_pem.bytes()
        ).options()
        upper = BackendFactory(UpperBackend)
        outer = BackendFactory(HeaderThenTLS)
        outer.headers = []
        outer.afterHeader = []
        outer.tls = TLSMemoryBIOFactory(options, False, upper)
        return outer, upper, listenUntilClosed(self, outer)

    async def test_tlsBackend(self):
        """
        --backend tls:... --backend-proxy-protocol v1 or v2: the backend
        reads the header in clear, naming the client, then completes the
        TLS handshake (verified by the gateway) and gets the messages.
        """
        for version in ("v1", "v2"):
            outer, upper, port = self.listenHeaderThenTLS()
            gateway = await runGateway(
                self,
                ["--listen", "tcp:0:interface=127.0.0.1"]
                + ["--backend", f"tls:localhost:{port}:trustRoots={self.roots}"]
                + ["--backend-proxy-protocol", version],
            )
            client = await connect(gateway.port())
            client.send(b"hello\n")
            await client.untilLines(1)
            self.assertEqual(client.received, b"HELLO\n", version)
            ((source, destination),) = outer.headers
            self.assertEqual(
                (source.host, source.port), ("127.0.0.1", client.localPort), version
            )
            self.assertEqual(
                (destination.host, destination.port), ("127.0.0.1", gateway.port())
            )
            # What followed the header was TLS, not a frame in clear.
            self.assertEqual(outer.afterHeader, [bytes([TLS_HANDSHAKE_RECORD])])
            self.assertEqual(upper.received, [b"hello"])
            client.transport.loseConnection()
            await client.untilClosed()
            await gateway.logged("closed tcp:0 127.0.0.1:")
            await outer.allClosed()
