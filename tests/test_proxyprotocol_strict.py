"""
Tests for the strictness of L{gateway.proxyprotocol}'s PROXY header parser,
rule by rule from HAProxy's C{doc/proxy-protocol.txt}: every vector is fed
whole, byte by byte and split in two at every boundary, and a header that
cannot become valid must be refused as soon as the byte that shows it has
arrived.
"""

import re
import struct

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase

from gateway import proxyprotocol
from gateway.addresses import describe
from gateway.proxyprotocol import (
    PP2_TYPE_CRC32C,
    V2_SIGNATURE,
    InvalidProxyHeader,
    crc32c,
    parseHeader,
)
from tests.test_proxyprotocol import BALANCER, Recorder, wrap

SIG = V2_SIGNATURE
# 192.0.2.7:4242 -> 198.51.100.1:7000 as a version 2 address block.
INET_BLOCK = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack("!HH", 4242, 7000)
# The same addresses IPv4-mapped, as AF_INET6: source, destination, ports.
_MAPPED = bytes(10) + b"\xff\xff"
MAPPED_BLOCK = _MAPPED + INET_BLOCK[:4] + _MAPPED + INET_BLOCK[4:8] + INET_BLOCK[8:]
SOURCE = IPv4Address("TCP", "192.0.2.7", 4242)
DESTINATION = IPv4Address("TCP", "198.51.100.1", 7000)


def v2(command: int, family: int, block: bytes) -> bytes:
    return SIG + struct.pack("!BBH", command, family, len(block)) + block


def withCRC(block: bytes, command: int = 0x21, family: int = 0x11) -> bytes:
    """
    A version 2 header whose block is C{block} plus a CRC32C TLV, with the
    checksum computed as section 2.2.5 says: over the whole header, the
    checksum field zeroed.
    """
    zeroed = v2(command, family, block + bytes([PP2_TYPE_CRC32C, 0, 4, 0, 0, 0, 0]))
    return zeroed[:-4] + struct.pack("!I", crc32c(zeroed))


# (header, how many of its bytes suffice to refuse it). The second number
# is the rule under test: nothing after that byte may be waited for.
REFUSED = [
    # Version 1: zone ids (the second one would put a newline and text of
    # the peer's choosing into the closed log line), refused at the "%".
    (b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n", 19),
    (b"PROXY TCP6 ::1%\nFORGED ::1 1 2\r\n", 15),
    # Ports: leading zeroes (octal-looking), too large, signed, empty.
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 080 0443\r\n", 46),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 80 0443\r\n", 45),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 00 443\r\n", 44),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 80 65536\r\n", 46),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 80 999999\r\n", 47),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 +80 443\r\n", 37),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n", 37),
    # Addresses: leading zeroes, wrong family, not an address.
    (b"PROXY TCP4 192.168.0.01 192.168.0.11 80 443\r\n", 46),
    (b"PROXY TCP4 ::1 ::2 80 443\r\n", 27),
    (b"PROXY TCP6 192.168.0.1 192.168.0.11 80 443\r\n", 45),
    (b"PROXY TCP4 192.168.0.1/24 192.168.0.11 80 443\r\n", 23),
    (b"PROXY TCP6 ::1 ::g 80 443\r\n", 18),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n", 31),
    # Spaces: exactly one between fields, none at the ends.
    (b"PROXY TCP4  192.168.0.1 192.168.0.11 80 443\r\n", 12),
    (b"PROXY  TCP4 192.168.0.1 192.168.0.11 80 443\r\n", 7),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 80 443 \r\n", 43),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 80\t443\r\n", 39),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 80\r\n", 40),
    # Protocol words are upper case and one of three.
    (b"PROXY tcp4 192.168.0.1 192.168.0.11 80 443\r\n", 7),
    (b"PROXY TCP5 192.168.0.1 192.168.0.11 80 443\r\n", 10),
    (b"PROXY UNKNOWNX\r\n", 16),
    # Line ends: CRLF only, refused when the lone LF or stray CR arrives.
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 80 443\n", 43),
    (b"PROXY UNKNOWN\n", 14),
    (b"PROXY UNKNOWN\rX\n", 15),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 80 443\r\r\n", 44),
    # Version 2: version, command, family and transport are checked before
    # the address block is waited for ("\x31\x21\xf0\xf0": version 3,
    # claiming 61,680 bytes).
    (SIG + b"\x31\x21\xf0\xf0", 13),
    (SIG + b"\x11\x11\x00\x0c" + INET_BLOCK, 13),
    (SIG + b"\x22\x11\x00\x0c" + INET_BLOCK, 13),
    (SIG + b"\x2f\x11\x00\x0c" + INET_BLOCK, 13),
    (SIG + b"\x21\x41\x00\x0c" + INET_BLOCK, 14),
    (SIG + b"\x21\x13\x00\x0c" + INET_BLOCK, 14),
    (SIG + b"\x21\xff\xff\xff", 14),
    (SIG + b"\x20\x51\x00\x00", 14),
    # An address block shorter than the family's addresses, refused on its
    # length field.
    (SIG + b"\x21\x11\x00\x0b" + INET_BLOCK[:11], 16),
    (SIG + b"\x21\x21\x00\x0c" + INET_BLOCK, 16),
    (SIG + b"\x21\x31\x00\x24" + bytes(36), 16),
    (SIG + b"\x21\x11\x00\x00", 16),
    # TLVs: one running past the block, a cut-short TLV head, a CRC32C of
    # the wrong size or value, an SSL TLV whose sub-TLV runs past it.
    (v2(0x21, 0x11, INET_BLOCK + b"\x04\x00\x05abc"), 34),
    (v2(0x21, 0x11, INET_BLOCK + b"\x04\x00"), 30),
    (v2(0x21, 0x11, INET_BLOCK + b"\x03\x00\x03abc"), 34),
    (v2(0x21, 0x11, INET_BLOCK + b"\x03\x00\x04abcd"), 35),
    (withCRC(INET_BLOCK)[:-1] + b"\x00", 35),
    (v2(0x21, 0x11, INET_BLOCK + b"\x20\x00\x08\x01\x00\x00\x00\x00\x21\x00\x09"), 39),
    (v2(0x21, 0x11, INET_BLOCK + b"\x20\x00\x04\x01\x00\x00\x00"), 35),
]

# Headers flipped one bit inside their CRC32C-covered bytes are refused too.
_CRC = withCRC(INET_BLOCK)

# (header, source, destination) for headers that must be accepted.
ACCEPTED = [
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 7000\r\n", SOURCE, DESTINATION),
    (
        b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
        IPv4Address("TCP", "0.0.0.0", 0),
        IPv4Address("TCP", "255.255.255.255", 65535),
    ),
    (
        b"PROXY TCP6 2001:DB8::7 2001:db8:0:0:0:0:0:1 4242 7000\r\n",
        IPv6Address("TCP", "2001:db8::7", 4242),
        IPv6Address("TCP", "2001:db8::1", 7000),
    ),
    # An IPv4-mapped address is an IPv4 client (SPEC section 3).
    (
        b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:198.51.100.1 4242 7000\r\n",
        SOURCE,
        DESTINATION,
    ),
    (b"PROXY UNKNOWN\r\n", None, None),
    (b"PROXY UNKNOWN ffff::1 \t anything\r\n", None, None),
    (v2(0x21, 0x11, INET_BLOCK), SOURCE, DESTINATION),
    (v2(0x21, 0x21, MAPPED_BLOCK), SOURCE, DESTINATION),
    (_CRC, SOURCE, DESTINATION),
    (withCRC(b"", family=0x00), None, None),
    (
        v2(0x21, 0x11, INET_BLOCK + b"\x04\x00\x00" + b"\x05\x00\x02ab"),
        SOURCE,
        DESTINATION,
    ),
    (
        v2(0x21, 0x11, INET_BLOCK + b"\x20\x00\x0b\x01\x00\x00\x00\x00\x21\x00\x03TLS"),
        SOURCE,
        DESTINATION,
    ),
    # LOCAL: the block is discarded, whatever it holds.
    (v2(0x20, 0x00, b""), None, None),
    (v2(0x20, 0x11, b"\x04\x00\x09"), None, None),
    # Datagram and UNIX families: valid, the connection's own addresses.
    (v2(0x21, 0x12, INET_BLOCK), None, None),
    (v2(0x21, 0x31, bytes(216)), None, None),
]

# What describe() may print: only what ipaddress produced.
_PRINTABLE = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:.]+\]):\d{1,5}$")


def _refused(inner: Recorder) -> bool:
    return any(event[0] == "invalid" for event in inner.events)


class CRC32CTests(SynchronousTestCase):
    def test_checkValue(self):
        """
        The check value of CRC-32C (RFC 3720 appendix B.4, and every CRC
        catalogue): the CRC of the ASCII digits 1 to 9.
        """
        self.assertEqual(crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(crc32c(b""), 0)
        self.assertEqual(crc32c(bytes(32)), 0x8A9136AA)

    def test_everyBitFlipRefused(self):
        """
        A header protected by a CRC32C TLV is refused when any bit of it
        after the signature and length changes (those would make it another
        kind of invalid header, or a longer one) and the TLV's type byte
        (then it is no CRC32C TLV, and there is nothing to verify).
        """
        typeByte = 16 + len(INET_BLOCK)
        for index in range(16, len(_CRC)):
            if index == typeByte:
                continue
            for bit in range(8):
                corrupt = bytearray(_CRC)
                corrupt[index] ^= 1 << bit
                try:
                    parseHeader(bytes(corrupt))
                except InvalidProxyHeader:
                    continue
                self.fail(f"bit {bit} of byte {index} flipped, still accepted")


class RefusedTests(SynchronousTestCase):
    def test_whole(self):
        """
        Each refused vector raises L{InvalidProxyHeader}, with a message
        that holds none of the peer's bytes.
        """
        for header, _ in REFUSED:
            with self.assertRaises(InvalidProxyHeader, msg=header) as caught:
                parseHeader(header + b"trailing data\n")
            message = str(caught.exception)
            self.assertTrue(message.isprintable(), header)
            self.assertNotIn("FORGED", message)
            self.assertNotIn("eth0", message)

    def test_refusedAsSoonAsShown(self):
        """
        Fed byte by byte, each vector is refused no later than the byte
        that shows it cannot be valid: a connection never waits for bytes
        a broken header claims.
        """
        for header, by in REFUSED:
            inner = Recorder()
            wrapper, transport = wrap(inner)
            fed = 0
            while fed < len(header) and not _refused(inner):
                wrapper.dataReceived(header[fed : fed + 1])
                fed += 1
            self.assertLessEqual(fed, by, header)
            kinds = [event[0] for event in inner.events]
            self.assertEqual(kinds, ["connectionMade", "invalid"], header)

    def test_everySplit(self):
        """
        Split in two reads anywhere, each vector is refused exactly once
        and nothing of it or after it is delivered.
        """
        for header, _ in REFUSED:
            stream = header + b"payload\n"
            for split in range(len(stream) + 1):
                inner = Recorder()
                wrapper, transport = wrap(inner)
                wrapper.dataReceived(stream[:split])
                wrapper.dataReceived(stream[split:])
                kinds = [event[0] for event in inner.events]
                self.assertEqual(kinds, ["connectionMade", "invalid"], (header, split))


class AcceptedTests(SynchronousTestCase):
    def test_whole(self):
        for header, source, destination in ACCEPTED:
            self.assertEqual(
                parseHeader(header + b"rest"),
                (source, destination, len(header)),
                header,
            )

    def test_everySplit(self):
        """
        Split in two reads anywhere, or fed byte by byte, each vector gives
        the same addresses, and the data after it arrives whole.
        """
        for header, source, _ in ACCEPTED:
            stream = header + b"payload\n"
            splits = [[stream[:i], stream[i:]] for i in range(len(stream) + 1)]
            splits.append([bytes([byte]) for byte in stream])
            for reads in splits:
                inner = Recorder()
                wrapper, transport = wrap(inner)
                for data in reads:
                    wrapper.dataReceived(data)
                self.assertEqual(
                    inner.events[1], ("header", source or BALANCER), (header, reads)
                )
                self.assertEqual(inner.received(), b"payload\n", (header, reads))

    def test_onlyParsedAddressesAreLogged(self):
        """
        Whatever a header named, what a log line prints of it is an address
        C{ipaddress} produced, bracketed when IPv6.
        """
        for _, source, destination in ACCEPTED:
            for address in (source, destination):
                if address is not None:
                    self.assertRegex(describe(address), _PRINTABLE)


class LongHeaderTests(SynchronousTestCase):
    def test_parsedOnceComplete(self):
        """
        The longest version 2 header (a 65,535-byte block of NOOP TLVs) fed
        one byte per read is parsed a handful of times, not once per byte:
        the wrapper waits for the length the header announced.
        """
        padding = 65535 - len(INET_BLOCK)
        # NOOP TLVs of at most 65,535 - 3 value bytes each, filling the block.
        first = padding - 3 - 3
        tlvs = b"\x04" + struct.pack("!H", first) + bytes(first) + b"\x04\x00\x00"
        header = v2(0x21, 0x11, INET_BLOCK + tlvs)
        self.assertEqual(len(header), 16 + 65535)
        calls = []
        original = proxyprotocol.parseHeader

        def counting(data):
            calls.append(len(data))
            return original(data)

        self.patch(proxyprotocol, "parseHeader", counting)
        inner = Recorder()
        wrapper, transport = wrap(inner)
        for index in range(len(header)):
            wrapper.dataReceived(header[index : index + 1])
        wrapper.dataReceived(b"after\n")
        self.assertEqual(inner.events[1], ("header", SOURCE))
        self.assertEqual(inner.received(), b"after\n")
        # One parse per byte of the fixed 16, then one for the whole header.
        self.assertEqual(len(calls), 17)
