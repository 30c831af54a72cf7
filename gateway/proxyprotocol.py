"""
HAProxy's PROXY protocol, both ways.

In: a listener given as C{haproxy:ENDPOINT} expects every connection to
start with a PROXY header (version 1 or 2) naming the client the load
balancer accepted; C{getPeer} and C{getHost} then give that client's
addresses. Out: L{HEADERS} build the header the gateway sends a backend
before its first frame (C{--backend-proxy-protocol}).

Twisted's own C{haproxy:} wrapper is not used, for reasons that tests pin
down: it connects the wrapped protocol before the header has been read, so
the peer address seen then is the load balancer's; it does not declare
L{IHalfCloseableProtocol}, so a client's half-close ends the whole
connection and loses the replies; it closes a connection whose first read
holds less than 8 (version 1) or 16 (version 2) bytes of header; and a
malformed port number escapes its parser as an unhandled C{ValueError}.
Its parsers also refuse a bare C{PROXY UNKNOWN}, which the specification
allows, so the header is parsed here too.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import Interface, implementer

# The reason a malformed incoming header is counted and logged under.
PROXY_HEADER = "proxy_header"

V1_PREFIX = b"PROXY "
# The longest version 1 header the specification allows, CRLF included.
V1_MAX_LENGTH = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Signature, version and command, family and transport, address length.
V2_FIXED_LENGTH = 16
V2_VERSION = 0x20
V2_PROXY = V2_VERSION | 0x1
V2_LOCAL = V2_VERSION | 0x0
V2_TCP4 = 0x11
V2_TCP6 = 0x21
V2_UNSPEC = 0x00
_V1_FAMILIES = {b"TCP4": 4, b"TCP6": 6}
_V2_FAMILIES = {V2_TCP4: (IPv4Address, 4), V2_TCP6: (IPv6Address, 16)}

_NOT_A_HEADER = "neither PROXY nor the version 2 signature"


class InvalidProxyHeader(Exception):
    """
    A connection behind C{haproxy:} did not start with a valid PROXY header.
    """


class IProxyHeaderReceiver(Interface):
    """
    A protocol behind L{ProxyHeaderProtocol} that wants to know when the
    header has been read: before that, its transport's C{getPeer} is the load
    balancer's address, not the client's.
    """

    def proxyHeaderReceived(local: bool = False) -> None:
        """
        The header has been read; C{getPeer} and C{getHost} now give the
        addresses it carries.

        @param local: whether it was a version 2 C{LOCAL} header: the load
            balancer's own connection (a health check), not a client's.
            Passed only when true, so receivers that do not care may omit it.
        """

    def proxyHeaderInvalid(detail: str) -> None:
        """
        The connection did not start with a valid header and must be closed.
        """


Addresses = tuple[IAddress | None, IAddress | None]


def parseHeader(data: bytes) -> tuple[IAddress | None, IAddress | None, int] | None:
    """
    Read the PROXY header at the start of C{data}.

    @return: C{None} while C{data} may still become a valid header; else the
        source and destination it names (both C{None} for C{UNKNOWN} and
        C{LOCAL} headers, which mean "use the connection's own addresses")
        and how many bytes of C{data} the header took.
    @raise InvalidProxyHeader: when C{data} cannot start a valid header.
    """
    if data[:1] == V1_PREFIX[:1]:
        end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
        if not data.startswith(V1_PREFIX) and not V1_PREFIX.startswith(data):
            raise InvalidProxyHeader(_NOT_A_HEADER)
        if end == -1:
            if len(data) >= V1_MAX_LENGTH:
                raise InvalidProxyHeader(
                    f"version 1 header longer than {V1_MAX_LENGTH} bytes"
                )
            return None
        return (*_parseV1(data[len(V1_PREFIX) : end]), end + 2)
    if not V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
        raise InvalidProxyHeader(_NOT_A_HEADER)
    if len(data) < V2_FIXED_LENGTH:
        return None
    (length,) = struct.unpack_from("!H", data, 14)
    end = V2_FIXED_LENGTH + length
    if len(data) < end:
        return None
    return (*_parseV2(data[12], data[13], data[V2_FIXED_LENGTH:end]), end)


def _parseV1(line: bytes) -> Addresses:
    # TCP4 SRC DST SPORT DPORT, TCP6 ..., or UNKNOWN followed by anything.
    fields = line.split(b" ")
    if fields[0] == b"UNKNOWN":
        return None, None
    if fields[0] not in _V1_FAMILIES or len(fields) != 5:
        raise InvalidProxyHeader(f"malformed version 1 header {line[:40]!r}")
    version = _V1_FAMILIES[fields[0]]
    source = _address(version, fields[1].decode("ascii", "replace"), fields[3])
    destination = _address(version, fields[2].decode("ascii", "replace"), fields[4])
    return source, destination


def _address(version: int, host: str, port: bytes) -> IAddress:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None or ip.version != version:
        raise InvalidProxyHeader(f"{host[:40]!r} is not an IPv{version} address")
    if not (port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        raise InvalidProxyHeader(f"{port[:10]!r} is not a port number")
    kind = IPv4Address if version == 4 else IPv6Address
    return kind("TCP", ip.compressed, int(port))


def _parseV2(command: int, family: int, block: bytes) -> Addresses:
    if command == V2_LOCAL:
        return None, None
    if command != V2_PROXY:
        raise InvalidProxyHeader(f"unknown version 2 command {command:#04x}")
    if family in _V2_FAMILIES:
        kind, size = _V2_FAMILIES[family]
        if len(block) < 2 * size + 4:
            raise InvalidProxyHeader(f"version 2 address block of {len(block)} bytes")
        sourceIP = ipaddress.ip_address(block[:size]).compressed
        destinationIP = ipaddress.ip_address(block[size : 2 * size]).compressed
        sourcePort, destinationPort = struct.unpack_from("!HH", block, 2 * size)
        source = kind("TCP", sourceIP, sourcePort)
        destination = kind("TCP", destinationIP, destinationPort)
        return source, destination
    if family >> 4 > 3 or family & 0x0F > 2:
        raise InvalidProxyHeader(f"unknown version 2 family {family:#04x}")
    # Unspecified, Unix or datagram: valid, but no address the gateway can
    # use, so the connection's own stand (as the specification allows).
    return None, None


@implementer(IHalfCloseableProtocol)
class ProxyHeaderProtocol(ProtocolWrapper):
    """
    Reads the PROXY header off a connection, then gets out of the way.

    The wrapped protocol is connected at once (so it is counted, limited and
    timed out like any other connection) and is told through
    L{IProxyHeaderReceiver} when the header has been read. A header may
    arrive in any number of reads. Half-closes pass through both ways.
    """

    _source: IAddress | None = None
    _destination: IAddress | None = None
    _failed = False

    def __init__(self, factory: WrappingFactory, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)
        # The bytes read so far while the header is incomplete; None after.
        self._buffer: bytes | None = b""

    def dataReceived(self, data: bytes) -> None:
        if self._buffer is None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._failed:
            return
        self._buffer += data
        try:
            parsed = parseHeader(self._buffer)
        except InvalidProxyHeader as error:
            self._invalid(str(error))
            return
        if parsed is None:
            return
        self._source, self._destination, length = parsed
        local = self._buffer.startswith(V2_SIGNATURE) and self._buffer[12] == V2_LOCAL
        rest, self._buffer = self._buffer[length:], None
        receiver = self._receiver()
        if receiver is not None:
            if local:
                receiver.proxyHeaderReceived(local=True)
            else:
                receiver.proxyHeaderReceived()
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def _invalid(self, detail: str) -> None:
        # Whatever else arrives is not the header either: it is dropped.
        self._failed = True
        self._buffer = b""
        receiver = self._receiver()
        if receiver is not None:
            receiver.proxyHeaderInvalid(detail)
        else:
            self.transport.loseConnection()

    def _receiver(self) -> IProxyHeaderReceiver | None:
        # The receiver may sit under other wrappers (TLS, when the header
        # comes in clear before the handshake): look through them.
        protocol: object = self.wrappedProtocol
        while protocol is not None:
            receiver = IProxyHeaderReceiver(protocol, None)
            if receiver is not None:
                return receiver
            protocol = getattr(protocol, "wrappedProtocol", None)
        return None

    def readConnectionLost(self) -> None:
        if self._buffer is not None:
            if self._failed:
                return
            if self._buffer:
                self._invalid("stream ended inside the header")
            else:
                # Closed before a single byte: a TCP health check or a port
                # probe, not a protocol error.
                self.transport.loseConnection()
            return
        halfCloseable = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if halfCloseable is not None:
            halfCloseable.readConnectionLost()
        else:
            # What the transport itself does for a protocol that cannot
            # half-close: end the connection.
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        halfCloseable = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if halfCloseable is not None:
            halfCloseable.writeConnectionLost()

    def getPeer(self) -> IAddress:
        return self._source or self.transport.getPeer()

    def getHost(self) -> IAddress:
        return self._destination or self.transport.getHost()


class ProxyHeaderFactory(WrappingFactory):
    """
    Wraps every connection of a factory in a L{ProxyHeaderProtocol}.
    """

    protocol = ProxyHeaderProtocol
    noisy = False


@implementer(IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """
    A server endpoint whose connections start with a PROXY header.
    """

    def __init__(self, wrapped: IStreamServerEndpoint) -> None:
        self.wrapped = wrapped

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self.wrapped.listen(ProxyHeaderFactory(factory))


def isBehindProxy(description: str) -> bool:
    """
    Whether a server endpoint description uses the C{haproxy:} wrapper.
    """
    return description.split(":", 1)[0].strip().lower() == "haproxy"


def serverEndpoint(reactor: object, description: str) -> IStreamServerEndpoint:
    """
    Like L{serverFromString}, with C{haproxy:} served by
    L{ProxyHeaderEndpoint} instead of Twisted's wrapper.
    """
    if isBehindProxy(description):
        inner = description.split(":", 1)[1] if ":" in description else ""
        return ProxyHeaderEndpoint(serverFromString(reactor, inner))
    return serverFromString(reactor, description)


def _ip(address: IAddress) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    host = getattr(address, "host", None)
    if not isinstance(host, str) or getattr(address, "type", "TCP") != "TCP":
        return None
    try:
        # A scope (fe80::1%eth0) means nothing to the receiving host.
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _ips(
    source: IAddress, destination: IAddress
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] | None:
    ips = (_ip(source), _ip(destination))
    if None in ips or ips[0].version != ips[1].version:  # type: ignore[union-attr]
        return None
    return ips  # type: ignore[return-value]


def v1Header(source: IAddress, destination: IAddress) -> bytes:
    """
    C{PROXY TCP4 SRC DST SPORT DPORT\\r\\n} (C{TCP6} for IPv6), or
    C{PROXY UNKNOWN\\r\\n} when the addresses are not IP (a Unix socket).
    """
    ips = _ips(source, destination)
    if ips is None:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP4" if ips[0].version == 4 else "TCP6"
    line = (
        f"PROXY {family} {ips[0].compressed} {ips[1].compressed}"
        f" {source.port} {destination.port}\r\n"  # type: ignore[attr-defined]
    )
    return line.encode("ascii")


def v2Header(source: IAddress, destination: IAddress) -> bytes:
    """
    The binary version 2 header: C{PROXY} over C{TCP4} or C{TCP6}, or
    C{LOCAL} with no address when the addresses are not IP, as HAProxy
    itself sends for families it cannot describe.
    """
    ips = _ips(source, destination)
    if ips is None:
        return V2_SIGNATURE + struct.pack("!BBH", V2_LOCAL, V2_UNSPEC, 0)
    family = V2_TCP4 if ips[0].version == 4 else V2_TCP6
    block = (
        ips[0].packed
        + ips[1].packed
        + struct.pack("!HH", source.port, destination.port)  # type: ignore[attr-defined]
    )
    return V2_SIGNATURE + struct.pack("!BBH", V2_PROXY, family, len(block)) + block


HEADERS: dict[str, Callable[[IAddress, IAddress], bytes]] = {
    "v1": v1Header,
    "v2": v2Header,
}
