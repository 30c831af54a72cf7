"""
Tests for L{gateway.proxyprotocol}: PROXY headers read from a load balancer
and written to a backend.
"""

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway import stats
from gateway.proxyprotocol import (
    PROXY_HEADER,
    V2_SIGNATURE,
    InvalidProxyHeader,
    IProxyHeaderReceiver,
    ProxyHeaderEndpoint,
    ProxyHeaderFactory,
    isBehindProxy,
    parseHeader,
    serverEndpoint,
    v1Header,
    v2Header,
)
from gateway.tap import Options, makeService
from tests.test_proxy import HalfCloseableTransport, Harness, frame

_UNMAPPED_IPV6 = st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None)

SOURCE = IPv4Address("TCP", "192.0.2.7", 4242)
DESTINATION = IPv4Address("TCP", "198.51.100.1", 7000)
SOURCE6 = IPv6Address("TCP", "2001:db8::7", 4242)
DESTINATION6 = IPv6Address("TCP", "2001:db8::1", 7000)
BALANCER = IPv4Address("TCP", "127.0.0.1", 50000)
LISTENER = IPv4Address("TCP", "127.0.0.1", 7000)
# The addresses of Harness.connectClient's transport.
SOURCE_PEER = IPv4Address("TCP", "192.0.2.1", 5000)
LOCAL_HOST = IPv4Address("TCP", "10.0.0.1", 12345)

V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 7000\r\n"
# The same addresses in version 2, written out from the specification:
# signature, version 2 + PROXY, TCP over IPv4, 12 address bytes, the two
# addresses, the two ports.
V2 = (
    b"\r\n\r\n\x00\r\nQUIT\n"
    + b"\x21\x11\x00\x0c"
    + bytes([192, 0, 2, 7])
    + bytes([198, 51, 100, 1])
    + b"\x10\x92\x1b\x58"
)


@implementer(IHalfCloseableProtocol, IProxyHeaderReceiver)
class Recorder(Protocol):
    """
    A protocol behind the header wrapper that notes everything it is told,
    with the peer address its transport gave at that moment.
    """

    def __init__(self):
        self.events = []

    def connectionMade(self):
        self.events.append(("connectionMade", self.transport.getPeer()))

    def proxyHeaderReceived(self, local):
        self.events.append(("header", self.transport.getPeer()))

    def proxyHeaderInvalid(self, detail):
        self.events.append(("invalid", detail))

    def dataReceived(self, data):
        self.events.append(("data", data))

    def readConnectionLost(self):
        self.events.append(("readConnectionLost",))

    def writeConnectionLost(self):
        self.events.append(("writeConnectionLost",))

    def received(self):
        return b"".join(event[1] for event in self.events if event[0] == "data")


class WrappedFactory:
    """
    The smallest factory a wrapping factory accepts.
    """

    def __init__(self, protocol):
        self.protocol = protocol

    def buildProtocol(self, addr):
        return self.protocol

    def doStart(self):
        pass

    def doStop(self):
        pass


def wrap(inner):
    wrapper = ProxyHeaderFactory(WrappedFactory(inner)).buildProtocol(BALANCER)
    transport = StringTransport(peerAddress=BALANCER, hostAddress=LISTENER)
    wrapper.makeConnection(transport)
    return wrapper, transport


class ParseHeaderTests(SynchronousTestCase):
    def test_v1(self):
        self.assertEqual(parseHeader(V1 + b"rest"), (SOURCE, DESTINATION, len(V1)))

    def test_v1IPv6(self):
        header = b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 7000\r\n"
        self.assertEqual(parseHeader(header), (SOURCE6, DESTINATION6, len(header)))

    def test_v1Unknown(self):
        """
        C{UNKNOWN} is valid and names no address: the connection's own are
        used. (Twisted's parser refuses it unless a space follows.)
        """
        self.assertEqual(parseHeader(b"PROXY UNKNOWN\r\nx"), (None, None, 15))

    def test_v2(self):
        self.assertEqual(parseHeader(V2 + b"rest"), (SOURCE, DESTINATION, len(V2)))

    def test_v2Local(self):
        """
        A C{LOCAL} header (a health check) names no address.
        """
        header = V2_SIGNATURE + b"\x20\x00\x00\x00"
        self.assertEqual(parseHeader(header), (None, None, 16))

    def test_v2OtherFamilies(self):
        """
        Unix and unspecified families are valid but give no address to use.
        """
        unix = V2_SIGNATURE + b"\x21\x31\x00\xd8" + b"\x00" * 216
        self.assertEqual(parseHeader(unix), (None, None, 16 + 216))
        unspec = V2_SIGNATURE + b"\x21\x00\x00\x00"
        self.assertEqual(parseHeader(unspec), (None, None, 16))

    def test_v2SkipsExtensions(self):
        """
        TLVs after the addresses are part of the header and are skipped.
        """
        tlv = b"\x04\x00\x03abc"
        header = V2[:14] + struct.pack("!H", 12 + len(tlv)) + V2[16:] + tlv
        self.assertEqual(parseHeader(header + b"x"), (SOURCE, DESTINATION, 28 + 6))

    def test_incomplete(self):
        """
        Every proper prefix of a header may still become one.
        """
        for header in (V1, V2):
            for end in range(len(header)):
                self.assertIsNone(parseHeader(header[:end]), (header, end))

    def test_notAHeader(self):
        """
        A stream that cannot start a header is refused from its first byte
        that shows it, without waiting for more.
        """
        for data in (b"G", b"GET / HTTP/1.1\r\n", b"PROXX", b"\r\n\r\n\x01", b"a\n"):
            self.assertRaises(InvalidProxyHeader, parseHeader, data)

    def test_v1TooLong(self):
        """
        A version 1 header has at most 107 bytes, CRLF included.
        """
        longest = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
        self.assertEqual(len(longest), 107)
        self.assertEqual(parseHeader(longest), (None, None, 107))
        self.assertIsNone(parseHeader(longest[:106]))
        self.assertRaises(InvalidProxyHeader, parseHeader, longest[:105] + b"xx")

    def test_malformed(self):
        """
        Headers that are complete but wrong are refused, never raise anything
        else.
        """
        for header in (
            b"PROXY TCP4 192.0.2.7 198.51.100.1 abc 7000\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 99999\r\n",
            b"PROXY TCP4 example.com 198.51.100.1 4242 7000\r\n",
            b"PROXY TCP4 192.0.2.7\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 7000 more\r\n",
            b"PROXY TCP4 2001:db8::7 2001:db8::1 4242 7000\r\n",
            b"PROXY TCP6 192.0.2.7 198.51.100.1 4242 7000\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 4242 7000\r\n",
            b"PROXY\r\n",
            V2_SIGNATURE + b"\x31\x11\x00\x0c" + V2[16:],
            V2_SIGNATURE + b"\x2f\x11\x00\x0c" + V2[16:],
            V2_SIGNATURE + b"\x21\x11\x00\x04" + V2[16:20],
        ):
            self.assertRaises(InvalidProxyHeader, parseHeader, header)


class WrapperTests(SynchronousTestCase):
    def test_connectedAtOnce(self):
        """
        The wrapped protocol is connected at once, so that it can count and
        time out the connection; until the header is read its peer is the
        load balancer.
        """
        inner = Recorder()
        wrap(inner)
        self.assertEqual(inner.events, [("connectionMade", BALANCER)])

    def test_byteByByte(self):
        """
        A header fed one byte per read is read whole; the wrapped protocol
        is told once, sees the client's address from then on, and receives
        every byte after the header unchanged.
        """
        for header in (V1, V2):
            inner = Recorder()
            wrapper, transport = wrap(inner)
            for byte in header + b"a\nb\n":
                wrapper.dataReceived(bytes([byte]))
            self.assertEqual(inner.events[1], ("header", SOURCE))
            self.assertEqual([e[0] for e in inner.events].count("header"), 1)
            self.assertEqual(inner.received(), b"a\nb\n")
            self.assertEqual(wrapper.getPeer(), SOURCE)
            self.assertEqual(wrapper.getHost(), DESTINATION)
            self.assertTrue(transport.connected)

    def test_everySplit(self):
        """
        A header and data in two reads, split anywhere, come out the same.
        """
        for header in (V1, V2):
            stream = header + b"payload\n"
            for split in range(len(stream) + 1):
                inner = Recorder()
                wrapper, transport = wrap(inner)
                wrapper.dataReceived(stream[:split])
                wrapper.dataReceived(stream[split:])
                self.assertEqual(inner.events[1], ("header", SOURCE), split)
                self.assertEqual(inner.received(), b"payload\n", split)

    def test_unknownKeepsRealAddresses(self):
        inner = Recorder()
        wrapper, transport = wrap(inner)
        wrapper.dataReceived(b"PROXY UNKNOWN\r\n")
        self.assertEqual(inner.events[1], ("header", BALANCER))
        self.assertEqual(wrapper.getHost(), LISTENER)

    def test_invalid(self):
        """
        A bad header is reported once, and nothing after it is delivered.
        """
        inner = Recorder()
        wrapper, transport = wrap(inner)
        wrapper.dataReceived(b"GET / HTTP/1.1\r\n")
        wrapper.dataReceived(b"more")
        self.assertEqual(
            inner.events[1:], [("invalid", "neither PROXY nor the version 2 signature")]
        )

    def test_invalidWithoutReceiver(self):
        """
        A wrapped protocol that does not listen for the header (TLS) has its
        connection closed on a bad header.
        """
        inner = Protocol()
        wrapper, transport = wrap(inner)
        wrapper.dataReceived(b"nonsense")
        self.assertTrue(transport.disconnecting)

    def test_halfClose(self):
        """
        A half-close after the header is passed on, both ways: the wrapper
        is half-closeable itself, unlike Twisted's.
        """
        inner = Recorder()
        wrapper, transport = wrap(inner)
        self.assertTrue(IHalfCloseableProtocol.providedBy(wrapper))
        wrapper.dataReceived(V1 + b"a\nb")
        wrapper.readConnectionLost()
        wrapper.writeConnectionLost()
        self.assertEqual(
            inner.events[-2:], [("readConnectionLost",), ("writeConnectionLost",)]
        )
        self.assertFalse(transport.disconnecting)

    def test_halfCloseNotHalfCloseable(self):
        """
        A wrapped protocol that cannot half-close has the connection closed
        on a half-close, as the transport itself would do.
        """
        inner = Protocol()
        wrapper, transport = wrap(inner)
        wrapper.dataReceived(V1)
        wrapper.readConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_endedBeforeHeader(self):
        """
        A connection closed before its first byte (a load balancer's TCP
        health check) is closed quietly.
        """
        inner = Recorder()
        wrapper, transport = wrap(inner)
        wrapper.readConnectionLost()
        self.assertEqual(inner.events[1:], [])
        self.assertTrue(transport.disconnecting)

    def test_endedInsideHeader(self):
        inner = Recorder()
        wrapper, transport = wrap(inner)
        wrapper.dataReceived(V1[:10])
        wrapper.readConnectionLost()
        self.assertEqual(
            inner.events[1:], [("invalid", "stream ended inside the header")]
        )


def proxiedClient(harness):
    """
    A client of C{harness} behind the header wrapper, as C{haproxy:} builds it.
    """
    harness.factory.proxyHeader = True
    wrapper = ProxyHeaderFactory(harness.factory).buildProtocol(BALANCER)
    transport = HalfCloseableTransport(peerAddress=BALANCER, hostAddress=LISTENER)
    transport.protocol = wrapper
    wrapper.makeConnection(transport)
    return wrapper, wrapper.wrappedProtocol, transport


class ClientBehindProxyTests(SynchronousTestCase):
    def test_backendAfterHeader(self):
        """
        The backend is connected once the header is read, not before, and
        the client's address is then the header's source.
        """
        harness = Harness()
        wrapper, client, transport = proxiedClient(harness)
        self.assertEqual(harness.attempts, [])
        self.assertEqual(transport.producerState, "producing")
        wrapper.dataReceived(V2[:7])
        wrapper.dataReceived(V2[7:] + b"early\n")
        self.assertEqual(len(harness.attempts), 1)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(client.clientAddress, "192.0.2.7:4242")
        backend, backendTransport = harness.connectBackend()
        self.assertEqual(backendTransport.value(), frame(b"early"))

    def test_halfClose(self):
        """
        printf 'a\\nb' | nc -N through the wrapper: both messages are
        delivered and the replies still reach the client.
        """
        harness = Harness()
        wrapper, client, transport = proxiedClient(harness)
        wrapper.dataReceived(V1 + b"a\nb")
        backend, backendTransport = harness.connectBackend()
        wrapper.readConnectionLost()
        self.assertEqual(backendTransport.value(), frame(b"a") + frame(b"b"))
        self.assertTrue(backendTransport.writeClosed)
        backend.dataReceived(frame(b"A") + frame(b"B"))
        backend.readConnectionLost()
        self.assertEqual(transport.value(), b"A\nB\n")
        self.assertEqual(harness.stats.named("closed"), [(stats.CLIENT_CLOSED, 0.0)])

    def test_invalidHeader(self):
        """
        A bad header is the client's protocol error: counted, and the
        connection closed without a backend.
        """
        harness = Harness()
        wrapper, client, transport = proxiedClient(harness)
        wrapper.dataReceived(b"hello\n")
        self.assertEqual(harness.attempts, [])
        self.assertFalse(transport.connected)
        self.assertEqual(
            harness.stats.named("protocolError"), [(stats.CLIENT, PROXY_HEADER)]
        )
        self.assertEqual(harness.stats.named("closed"), [(stats.PROTOCOL_ERROR, 0.0)])

    def test_healthCheck(self):
        """
        A load balancer's health check (connect, close) is no protocol error.
        """
        harness = Harness()
        wrapper, client, transport = proxiedClient(harness)
        wrapper.readConnectionLost()
        self.assertFalse(transport.connected)
        self.assertEqual(harness.attempts, [])
        self.assertEqual(harness.stats.named("protocolError"), [])
        self.assertEqual(harness.stats.named("closed"), [(stats.CLIENT_CLOSED, 0.0)])

    def test_headerNeverCompletes(self):
        """
        The idle timeout also ends a connection whose header never completes.
        """
        harness = Harness(idleTimeout=5)
        wrapper, client, transport = proxiedClient(harness)
        wrapper.dataReceived(V1[:20])
        harness.clock.advance(5)
        self.assertFalse(transport.connected)
        self.assertEqual(harness.stats.named("closed"), [(stats.IDLE_TIMEOUT, 5.0)])


class SendHeaderTests(SynchronousTestCase):
    def test_v1(self):
        self.assertEqual(v1Header(SOURCE, DESTINATION), V1)

    def test_v1IPv6(self):
        """
        IPv6 addresses in their shortest form, and no scope.
        """
        self.assertEqual(
            v1Header(
                IPv6Address("TCP", "fe80::1%lo", 1),
                IPv6Address("TCP", "2001:db8:0:0:0:0:0:1", 7000),
            ),
            b"PROXY TCP6 fe80::1 2001:db8::1 1 7000\r\n",
        )

    def test_v1Unknown(self):
        """
        A client on a Unix socket has no address to send.
        """
        self.assertEqual(
            v1Header(UNIXAddress(None), UNIXAddress(b"/run/gw.sock")),
            b"PROXY UNKNOWN\r\n",
        )
        self.assertEqual(v1Header(SOURCE, DESTINATION6), b"PROXY UNKNOWN\r\n")

    def test_v2(self):
        self.assertEqual(v2Header(SOURCE, DESTINATION), V2)

    def test_v2IPv6(self):
        header = v2Header(SOURCE6, DESTINATION6)
        self.assertEqual(header[12:16], b"\x21\x21\x00\x24")
        self.assertEqual(header[16:32], b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x07")
        self.assertEqual(header[48:], b"\x10\x92\x1b\x58")
        self.assertEqual(len(header), 16 + 36)

    def test_v2Local(self):
        """
        Without IP addresses: C{LOCAL}, family unspecified, no address block.
        """
        self.assertEqual(
            v2Header(UNIXAddress(None), UNIXAddress(None)),
            V2_SIGNATURE + b"\x20\x00\x00\x00",
        )

    @given(
        st.one_of(
            st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
            # An IPv4-mapped address is an IPv4 client (SPEC section 3):
            # NormalizeTests covers those.
            st.tuples(_UNMAPPED_IPV6, _UNMAPPED_IPV6),
        ),
        st.integers(0, 65535),
        st.integers(0, 65535),
    )
    def test_twistedReadsThem(self, ips, sourcePort, destinationPort):
        """
        Twisted's own parsers read back the addresses in both versions.
        """
        kind = IPv4Address if ips[0].version == 4 else IPv6Address
        source = kind("TCP", str(ips[0]), sourcePort)
        destination = kind("TCP", str(ips[1]), destinationPort)
        for header, parser in ((v1Header, V1Parser), (v2Header, V2Parser)):
            info, rest = parser().feed(header(source, destination) + b"x")
            self.assertEqual(rest, b"x")
            # Twisted writes IPv6 addresses out in full.
            self.assertEqual(
                [
                    (ipaddress.ip_address(a.host), a.port)
                    for a in (info.source, info.destination)
                ],
                [(ips[0], sourcePort), (ips[1], destinationPort)],
            )
            self.assertEqual(
                parseHeader(header(source, destination)),
                (source, destination, len(header(source, destination))),
            )

    def test_beforeFirstFrame(self):
        """
        The header the backend connection starts with names the client's
        addresses: the PROXY source when there was one. It is handed to the
        backend endpoint with the factory, which writes it first, under any
        TLS (tests.test_headerfirst); the proxy writes only the frames.
        """
        harness = Harness()
        harness.factory.sendProxyHeader = v2Header
        wrapper, client, transport = proxiedClient(harness)
        wrapper.dataReceived(V1 + b"first\n")
        ((backendFactory, _),) = harness.attempts
        self.assertEqual(backendFactory.proxyHeader, V2)
        backend, backendTransport = harness.connectBackend()
        self.assertEqual(backendTransport.value(), frame(b"first"))

    def test_plainClient(self):
        """
        Without a PROXY header in, the client's TCP peer is sent.
        """
        harness = Harness()
        harness.factory.sendProxyHeader = v1Header
        client, clientTransport, backend, backendTransport = harness.pair()
        ((backendFactory, _),) = harness.attempts
        self.assertEqual(backendFactory.proxyHeader, v1Header(SOURCE_PEER, LOCAL_HOST))
        self.assertEqual(backendTransport.value(), b"")


class EndpointTests(SynchronousTestCase):
    def test_haproxyPrefix(self):
        reactor = MemoryReactor()
        endpoint = serverEndpoint(reactor, "haproxy:tcp:0:interface=127.0.0.1")
        self.assertIsInstance(endpoint, ProxyHeaderEndpoint)
        endpoint.listen(WrappedFactory(Protocol()))
        ((port, factory, backlog, interface),) = reactor.tcpServers
        self.assertEqual((port, interface), (0, "127.0.0.1"))
        self.assertIsInstance(factory, ProxyHeaderFactory)

    def test_otherEndpoints(self):
        self.assertNotIsInstance(
            serverEndpoint(MemoryReactor(), "tcp:0"), ProxyHeaderEndpoint
        )

    def test_isBehindProxy(self):
        self.assertTrue(isBehindProxy("haproxy:tcp:7000"))
        self.assertTrue(isBehindProxy("HAProxy:unix:/run/x"))
        self.assertFalse(isBehindProxy("tcp:7000"))
        self.assertFalse(isBehindProxy("systemd:domain=INET:name=haproxy"))


class OptionTests(SynchronousTestCase):
    def options(self, *args):
        options = Options()
        options.parseOptions(["--metrics", "none", *args])
        return options

    def test_default(self):
        self.assertIsNone(self.options()["backend-proxy-protocol"])

    def test_versions(self):
        for version in ("v1", "v2"):
            options = self.options("--backend-proxy-protocol", version)
            self.assertEqual(options["backend-proxy-protocol"], version)

    def test_unknownVersion(self):
        error = self.assertRaises(
            usage.UsageError, self.options, "--backend-proxy-protocol", "v3"
        )
        self.assertEqual(
            str(error), "--backend-proxy-protocol: 'v3' is not v1, v2 or v2-ssl"
        )

    def test_service(self):
        """
        A C{haproxy:} listener waits for the header; every listener sends
        the header chosen to the backend.
        """
        options = self.options(
            "--listen",
            "haproxy:tcp:0:interface=127.0.0.1",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--backend",
            "tcp:host=127.0.0.1:port=9",
            "--backend-proxy-protocol",
            "v2",
        )
        service = makeService(options, reactor=MemoryReactor())
        factories = {
            child.listenerName: child.factory
            for child in service
            if hasattr(child, "listenerName")
        }
        self.assertEqual(set(factories), {"proxy+tcp:0", "tcp:0"})
        self.assertTrue(factories["proxy+tcp:0"].proxyHeader)
        self.assertFalse(factories["tcp:0"].proxyHeader)
        for factory in factories.values():
            self.assertIs(factory.sendProxyHeader, v2Header)
