"""
HAProxy's PROXY protocol, both ways.

In: a listener given as C{haproxy:ENDPOINT} expects every connection to
start with a PROXY header (version 1 or 2) naming the client the load
balancer accepted; C{getPeer} and C{getHost} then give that client's
addresses, an IPv4-mapped one as IPv4 (L{gateway.addresses}). The header is
read strictly, rule by rule as HAProxy's C{doc/proxy-protocol.txt} states
them (SPEC section 3), and refused at the first byte that shows it cannot
become valid: a lone LF, a zone id, a port with leading zeroes, a version 2
version, command, family or transport byte, a length too short for the
family, a TLV running past the block, a CRC32C that does not match.

Out: L{HEADERS} build the header the gateway sends a backend before its
first frame (C{--backend-proxy-protocol}); L{gateway.headerfirst} writes it
first on the connection, under any TLS.

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
    ITransport,
)
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import Interface, implementer

from gateway.addresses import IP, normalize, parseHost

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
# Type-length-value extensions (section 2.2 of the specification).
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_SSL = 0x20
# PP2_TYPE_SSL's value starts with its client flags (1 byte) and verify
# result (4 bytes); sub-TLVs follow.
_PP2_SSL_FIXED = 5
_TLV_HEAD = 3
_CRC32C_LENGTH = 4

_V1_FAMILIES = {b"TCP4": 4, b"TCP6": 6}
_V1_UNKNOWN = b"UNKNOWN"
# What a TCP4 or TCP6 line may hold after "PROXY TCPn ": addresses in
# dotted decimal or hexadecimal with colons (and an embedded IPv4 address),
# decimal ports, single spaces. Everything else, a zone id's "%" included,
# can never become a valid line and is refused as soon as it arrives.
_V1_ADDRESS_CHARS = frozenset(b"0123456789abcdefABCDEF.: ")
_V1_IPV4_CHARS = frozenset(b"0123456789.")
_V1_IPV6_CHARS = frozenset(b"0123456789abcdefABCDEF:.")
_MAX_PORT = 65535
_MAX_PORT_DIGITS = 5

# The fourth byte of a version 2 header: the address family in the high
# nibble (AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX), the transport in the low
# nibble (UNSPEC, STREAM, DGRAM). Other values "must be rejected as invalid
# by receivers". Each family's addresses need this many bytes of the block.
_V2_ADDRESS_LENGTHS = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}
_V2_MAX_TRANSPORT = 0x2
# Stream families whose addresses the gateway uses; for the others (UNSPEC,
# UNIX, datagram) the connection's own addresses stand, as the
# specification allows.
_V2_FAMILIES = {V2_TCP4: (IPv4Address, 4), V2_TCP6: (IPv6Address, 16)}

_NOT_A_HEADER = "neither PROXY nor the version 2 signature"


class InvalidProxyHeader(Exception):
    """
    A connection behind C{haproxy:} did not start with a valid PROXY header.

    Its message names the rule that was broken, never the peer's bytes, so
    that it can go into a log line as it is.
    """


class IProxyHeaderReceiver(Interface):
    """
    A protocol behind L{ProxyHeaderProtocol} that wants to know when the
    header has been read: before that, its transport's C{getPeer} is the load
    balancer's address, not the client's.
    """

    def proxyHeaderReceived(local: bool) -> None:
        """
        The header has been read; C{getPeer} and C{getHost} now give the
        addresses it carries.

        @param local: whether it was a version 2 C{LOCAL} header: the load
            balancer's own connection (a health check), not a client's.
        """

    def proxyHeaderInvalid(detail: str) -> None:
        """
        The connection did not start with a valid header and must be closed.
        """


Addresses = tuple[IAddress | None, IAddress | None]


def _crc32cTable() -> tuple[int, ...]:
    # CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, as RFC 3720
    # (iSCSI) defines it and the PROXY specification names it.
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32cTable()


def crc32c(data: bytes) -> int:
    """
    The CRC-32C of C{data}, as an unsigned 32-bit integer.

    Pure Python, one table look-up per byte: it runs only over a PROXY header
    that carries a C{PP2_TYPE_CRC32C} TLV (at most 65,551 bytes, usually a
    few dozen), once per connection.
    """
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def parseHeader(data: bytes) -> tuple[IAddress | None, IAddress | None, int] | None:
    """
    Read the PROXY header at the start of C{data}, as HAProxy's
    C{doc/proxy-protocol.txt} defines it, strictly.

    C{data} is everything read so far: call again with more when this
    returns C{None}. Every rule that can be checked on a prefix is checked as
    soon as the bytes it needs have arrived, so a header that cannot become
    valid is refused at once rather than after the bytes it claims to have.

    @return: C{None} while C{data} may still become a valid header; else the
        source and destination it names (both C{None} for C{UNKNOWN} and
        C{LOCAL} headers and for families without a usable address, which
        mean "use the connection's own addresses"), with IPv4-mapped IPv6
        addresses given as IPv4 (L{gateway.addresses.normalize}), and how
        many bytes of C{data} the header took.
    @raise InvalidProxyHeader: when C{data} cannot start a valid header.
    """
    if not data:
        return None
    if data[:1] == V1_PREFIX[:1]:
        return _parseV1(data)
    return _parseV2(data)


def bytesNeeded(data: bytes) -> int:
    """
    How many bytes a stream that starts with C{data} must hold before
    L{parseHeader}, which returned C{None} for C{data}, can say more: the
    whole header once a version 2 length field has arrived (the rules on
    its first 16 bytes have then been checked), else one more byte.
    """
    if len(data) >= V2_FIXED_LENGTH and data.startswith(V2_SIGNATURE):
        length: int = struct.unpack_from("!H", data, 14)[0]
        return V2_FIXED_LENGTH + length
    return len(data) + 1


def _parseV1(data: bytes) -> tuple[IAddress | None, IAddress | None, int] | None:
    # "PROXY" SP ( "TCP4" | "TCP6" ) SP SRC SP DST SP SPORT SP DPORT CRLF,
    # or "PROXY" SP "UNKNOWN" followed by anything up to the CRLF; the whole
    # line at most 107 bytes.
    prefix = data[: len(V1_PREFIX)]
    if prefix != V1_PREFIX[: len(prefix)]:
        raise InvalidProxyHeader(_NOT_A_HEADER)
    window = data[:V1_MAX_LENGTH]
    cr = window.find(b"\r")
    lf = window.find(b"\n")
    if lf != -1 and (cr == -1 or lf < cr):
        raise InvalidProxyHeader("version 1 line ended by a lone LF, not CRLF")
    if cr == -1:
        if len(data) >= V1_MAX_LENGTH:
            raise InvalidProxyHeader(
                f"version 1 header longer than {V1_MAX_LENGTH} bytes"
            )
        _checkV1Prefix(data[len(V1_PREFIX) :])
        return None
    if cr + 1 >= V1_MAX_LENGTH:
        raise InvalidProxyHeader(f"version 1 header longer than {V1_MAX_LENGTH} bytes")
    if cr + 1 == len(data):
        _checkV1Prefix(data[len(V1_PREFIX) : cr])
        return None
    if lf != cr + 1:
        raise InvalidProxyHeader("version 1 line has a CR not followed by LF")
    if cr < len(V1_PREFIX):
        raise InvalidProxyHeader(_NOT_A_HEADER)
    source, destination = _parseV1Line(data[len(V1_PREFIX) : cr])
    return source, destination, cr + 2


def _checkV1Prefix(partial: bytes) -> None:
    # The rules a line cut short can already break: an unknown protocol
    # word, a character no address or port has, two spaces in a row.
    protocol, space, rest = partial.partition(b" ")
    if protocol == _V1_UNKNOWN:
        return
    if not space:
        words = (_V1_UNKNOWN, *_V1_FAMILIES)
        if not any(word.startswith(protocol) for word in words):
            raise InvalidProxyHeader("version 1 protocol is not TCP4, TCP6 or UNKNOWN")
        return
    if protocol not in _V1_FAMILIES:
        raise InvalidProxyHeader("version 1 protocol is not TCP4, TCP6 or UNKNOWN")
    if not _V1_ADDRESS_CHARS.issuperset(rest):
        raise InvalidProxyHeader("version 1 line holds a character no address has")
    if b"  " in rest or rest.startswith(b" ") or rest.count(b" ") > 3:
        raise InvalidProxyHeader("version 1 fields not separated by single spaces")


def _parseV1Line(line: bytes) -> Addresses:
    fields = line.split(b" ")
    if fields[0] == _V1_UNKNOWN:
        # "the receiver must ignore anything presented before the CRLF".
        return None, None
    version = _V1_FAMILIES.get(fields[0])
    if version is None:
        raise InvalidProxyHeader("version 1 protocol is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 5:
        raise InvalidProxyHeader(
            "version 1 line is not PROTOCOL SRC DST SPORT DPORT with single spaces"
        )
    source = _v1Address(version, fields[1], fields[3], "source")
    destination = _v1Address(version, fields[2], fields[4], "destination")
    return source, destination


def _v1Address(version: int, host: bytes, port: bytes, which: str) -> IAddress:
    # Addresses: IPv4 as four decimal numbers without leading zeroes, IPv6
    # in hexadecimal with colons; no zone id (it means nothing on another
    # host, and Python's ipaddress would keep any text after the "%").
    allowed = _V1_IPV4_CHARS if version == 4 else _V1_IPV6_CHARS
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    if host and allowed.issuperset(host):
        try:
            ip = ipaddress.ip_address(host.decode("ascii"))
        except ValueError:
            ip = None
    if ip is None or ip.version != version:
        raise InvalidProxyHeader(f"version 1 {which} address is not IPv{version}")
    # Ports: decimal, 0 to 65535, no leading zeroes (which read as octal).
    if not (
        port.isdigit()
        and len(port) <= _MAX_PORT_DIGITS
        and (port == b"0" or not port.startswith(b"0"))
        and int(port) <= _MAX_PORT
    ):
        raise InvalidProxyHeader(f"version 1 {which} port is not a port number")
    kind = IPv4Address if version == 4 else IPv6Address
    return normalize(kind("TCP", ip.compressed, int(port)))


def _parseV2(data: bytes) -> tuple[IAddress | None, IAddress | None, int] | None:
    if not V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
        raise InvalidProxyHeader(_NOT_A_HEADER)
    size = len(data)
    if size <= 12:
        return None
    versionCommand = data[12]
    if versionCommand & 0xF0 != V2_VERSION:
        # "The receiver must only accept this value and not try to parse
        # the rest of the header if it sees another value."
        raise InvalidProxyHeader("version 2 signature with another version")
    if versionCommand not in (V2_LOCAL, V2_PROXY):
        raise InvalidProxyHeader("version 2 command is neither LOCAL nor PROXY")
    if size <= 13:
        return None
    family = data[13]
    needed = _V2_ADDRESS_LENGTHS.get(family >> 4)
    if needed is None or family & 0x0F > _V2_MAX_TRANSPORT:
        raise InvalidProxyHeader("version 2 family or transport is not defined")
    if size < V2_FIXED_LENGTH:
        return None
    (length,) = struct.unpack_from("!H", data, 14)
    end = V2_FIXED_LENGTH + length
    if versionCommand == V2_LOCAL:
        # "the receiver must accept this connection as valid and must use
        # the real connection endpoints and discard the protocol block".
        if size < end:
            return None
        return None, None, end
    if length < needed:
        raise InvalidProxyHeader(
            "version 2 address block shorter than its family's addresses"
        )
    if size < end:
        return None
    header = data[:end]
    _checkTLVs(header, V2_FIXED_LENGTH + needed, end)
    if family not in _V2_FAMILIES:
        return None, None, end
    kind, width = _V2_FAMILIES[family]
    block = V2_FIXED_LENGTH
    sourceIP = ipaddress.ip_address(header[block : block + width]).compressed
    destinationIP = ipaddress.ip_address(
        header[block + width : block + 2 * width]
    ).compressed
    sourcePort, destinationPort = struct.unpack_from("!HH", header, block + 2 * width)
    source = normalize(kind("TCP", sourceIP, sourcePort))
    destination = normalize(kind("TCP", destinationIP, destinationPort))
    return source, destination, end


def _checkTLVs(header: bytes, start: int, end: int) -> None:
    """
    Walk the TLVs in C{header[start:end]}: each must fit in the block (a TLV
    running past it, or a partial TLV head at its end, is malformed), and a
    C{PP2_TYPE_CRC32C} must hold the CRC-32C of the whole header computed
    with its own value zeroed (section 2.2.5).
    """
    offset = start
    while offset < end:
        if end - offset < _TLV_HEAD:
            raise InvalidProxyHeader("version 2 TLV cut short by the block's end")
        kind = header[offset]
        (length,) = struct.unpack_from("!H", header, offset + 1)
        valueStart = offset + _TLV_HEAD
        valueEnd = valueStart + length
        if valueEnd > end:
            raise InvalidProxyHeader("version 2 TLV runs past the address block")
        if kind == PP2_TYPE_CRC32C:
            _checkCRC32C(header, valueStart, valueEnd)
        elif kind == PP2_TYPE_SSL:
            if length < _PP2_SSL_FIXED:
                raise InvalidProxyHeader("version 2 SSL TLV shorter than 5 bytes")
            _checkTLVs(header, valueStart + _PP2_SSL_FIXED, valueEnd)
        offset = valueEnd


def _checkCRC32C(header: bytes, valueStart: int, valueEnd: int) -> None:
    if valueEnd - valueStart != _CRC32C_LENGTH:
        raise InvalidProxyHeader("version 2 CRC32C TLV is not 4 bytes")
    (expected,) = struct.unpack_from("!I", header, valueStart)
    zeroed = header[:valueStart] + bytes(_CRC32C_LENGTH) + header[valueEnd:]
    if crc32c(zeroed) != expected:
        raise InvalidProxyHeader("version 2 CRC32C does not match the header")


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

    def __init__(
        self, factory: WrappingFactory[ProxyHeaderProtocol], wrappedProtocol: IProtocol
    ) -> None:
        super().__init__(factory, wrappedProtocol)
        # The bytes read so far while the header is incomplete; None after.
        # A bytearray, and parsed only once it holds what bytesNeeded()
        # asked for: a 64 KiB version 2 header sent a byte per segment costs
        # one parse and no quadratic copying.
        self._buffer: bytearray | None = bytearray()
        self._need = 1

    def dataReceived(self, data: bytes) -> None:
        if self._buffer is None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._failed:
            return
        self._buffer += data
        if len(self._buffer) < self._need:
            return
        buffered = bytes(self._buffer)
        try:
            parsed = parseHeader(buffered)
        except InvalidProxyHeader as error:
            self._invalid(str(error))
            return
        if parsed is None:
            self._need = bytesNeeded(buffered)
            return
        self._source, self._destination, length = parsed
        local = buffered.startswith(V2_SIGNATURE) and buffered[12] == V2_LOCAL
        rest, self._buffer = buffered[length:], None
        receiver = self._receiver()
        if receiver is not None:
            receiver.proxyHeaderReceived(local)
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def _invalid(self, detail: str) -> None:
        # Whatever else arrives is not the header either: it is dropped.
        self._failed = True
        self._buffer = bytearray()
        receiver = self._receiver()
        if receiver is not None:
            receiver.proxyHeaderInvalid(detail)
        else:
            self._transport().loseConnection()

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
                self._transport().loseConnection()
            return
        halfCloseable = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if halfCloseable is not None:
            halfCloseable.readConnectionLost()
        else:
            # What the transport itself does for a protocol that cannot
            # half-close: end the connection.
            self._transport().loseConnection()

    def writeConnectionLost(self) -> None:
        halfCloseable = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if halfCloseable is not None:
            halfCloseable.writeConnectionLost()

    def getPeer(self) -> IAddress:
        return self._source or normalize(self._transport().getPeer())

    def getHost(self) -> IAddress:
        return self._destination or normalize(self._transport().getHost())

    def _transport(self) -> ITransport:
        # Set by makeConnection before any event this wrapper handles.
        assert self.transport is not None
        return self.transport


class ProxyHeaderFactory(WrappingFactory[ProxyHeaderProtocol]):
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
        return self.wrapped.listen(ProxyHeaderFactory(factory))  # type: ignore[no-untyped-call]


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
    parse: Callable[[object, str], IStreamServerEndpoint] = serverFromString
    if isBehindProxy(description):
        inner = description.split(":", 1)[1] if ":" in description else ""
        return ProxyHeaderEndpoint(parse(reactor, inner))
    return parse(reactor, description)


def _ips(source: IAddress, destination: IAddress) -> tuple[IP, IP] | None:
    """
    The two IP addresses a header sent on names, in one family, an
    IPv4-mapped address counted as IPv4 (SPEC section 3, "Addresses");
    C{None} when either is not IP, or when one is IPv4 and the other IPv6,
    which no header can carry.
    """
    if getattr(source, "type", "TCP") != "TCP":
        return None
    if getattr(destination, "type", "TCP") != "TCP":
        return None
    sourceIP = parseHost(getattr(source, "host", None))
    destinationIP = parseHost(getattr(destination, "host", None))
    if sourceIP is None or destinationIP is None:
        return None
    if sourceIP.version != destinationIP.version:
        return None
    return sourceIP, destinationIP


def v1Header(source: IAddress, destination: IAddress) -> bytes:
    """
    C{PROXY TCP4 SRC DST SPORT DPORT\\r\\n} (C{TCP6} for IPv6), or
    C{PROXY UNKNOWN\\r\\n} when the addresses are not IP (a Unix socket).
    An IPv4 client seen on a dual-stack socket is sent as C{TCP4}.
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
    itself sends for families it cannot describe. An IPv4 client seen on a
    dual-stack socket is sent as C{AF_INET}.
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
