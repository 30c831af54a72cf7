"""
Tests for L{gateway.addresses}: an IPv4 client seen on a dual-stack socket
is an IPv4 client, and every address is printed from parsed values only.
"""

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from gateway import addresses
from gateway.addresses import describe, describeListening, normalize, parseHost
from gateway.proxyprotocol import V2_SIGNATURE, parseHeader, v1Header, v2Header

MAPPED = IPv6Address("TCP", "::ffff:127.0.0.1", 4242)
MAPPED_HOST = IPv6Address("TCP", "::ffff:127.0.0.1", 7000)
CLIENT = IPv4Address("TCP", "127.0.0.1", 4242)
HOST = IPv4Address("TCP", "127.0.0.1", 7000)


class NormalizeTests(SynchronousTestCase):
    def test_mapped(self):
        """
        C{::ffff:a.b.c.d} becomes the IPv4 address, same port and type,
        whichever way the mapped address is written.
        """
        self.assertEqual(normalize(MAPPED), CLIENT)
        self.assertEqual(normalize(IPv6Address("TCP", "::ffff:7f00:1", 4242)), CLIENT)
        self.assertEqual(
            normalize(IPv6Address("UDP", "::FFFF:192.0.2.1", 53)),
            IPv4Address("UDP", "192.0.2.1", 53),
        )

    def test_othersUnchanged(self):
        """
        IPv4, IPv6 that is not mapped (IPv4-compatible and NAT64 included),
        UNIX addresses are returned as they are.
        """
        for address in (
            CLIENT,
            IPv6Address("TCP", "::1", 1),
            IPv6Address("TCP", "::127.0.0.1", 1),
            IPv6Address("TCP", "64:ff9b::7f00:1", 1),
            IPv6Address("TCP", "fe80::1%eth0", 1),
            UNIXAddress(b"/run/gw.sock"),
            UNIXAddress(None),
        ):
            self.assertIs(normalize(address), address)


class DescribeTests(SynchronousTestCase):
    def test_forms(self):
        """
        IPv4 as HOST:PORT, IPv6 bracketed and compressed, a mapped address
        as IPv4, a UNIX peer as C{unix}.
        """
        cases = [
            (CLIENT, "127.0.0.1:4242"),
            (MAPPED, "127.0.0.1:4242"),
            (IPv6Address("TCP", "::1", 7000), "[::1]:7000"),
            (IPv6Address("TCP", "2001:DB8:0::1", 7000), "[2001:db8::1]:7000"),
            (UNIXAddress(b"/run/gateway/gw.sock"), "unix"),
            (UNIXAddress(None), "unix"),
        ]
        for address, text in cases:
            self.assertEqual(describe(address), text, address)

    def test_zoneDropped(self):
        """
        A zone id is dropped: it means nothing elsewhere, and Python's
        C{ipaddress} keeps whatever text follows the C{%}.
        """
        self.assertEqual(describe(IPv6Address("TCP", "fe80::1%eth0", 1)), "[fe80::1]:1")
        self.assertEqual(describe(IPv6Address("TCP", "::1%\nFORGED", 1)), "[::1]:1")

    def test_unparsable(self):
        """
        Anything that does not parse is C{unknown}, never its text.
        """
        for address in (
            IPv4Address("TCP", "example.com", 1),
            IPv4Address("TCP", "1.2.3.4\nFORGED", 1),
            IPv4Address("TCP", "1.2.3.4", 65536),
            IPv4Address("TCP", "1.2.3.4", "80"),
            None,
            object(),
        ):
            self.assertEqual(describe(address), "unknown", address)

    def test_listening(self):
        """
        A bound listener's address: a UNIX socket by its path.
        """
        self.assertEqual(
            describeListening(UNIXAddress(b"/run/gw.sock")), "/run/gw.sock"
        )
        self.assertEqual(describeListening(UNIXAddress(b"\0abstract")), "\\x00abstract")
        self.assertEqual(describeListening(IPv6Address("TCP", "::", 7000)), "[::]:7000")
        self.assertEqual(describeListening(MAPPED_HOST), "127.0.0.1:7000")


class ParseCacheTests(SynchronousTestCase):
    """
    A host string is parsed once while it is among the last ones seen: a
    connection's address is parsed several times, with the same results.
    """

    def setUp(self):
        # Whatever other tests left there.
        addresses._parseText.cache_clear()
        addresses._hostText.cache_clear()
        self.parsed = []
        parse = ipaddress.ip_address

        def counting(text):
            self.parsed.append(text)
            return parse(text)

        self.patch(ipaddress, "ip_address", counting)

    def test_parsedOnce(self):
        """
        Admission's parse and both log forms of one address share one parse.
        """
        host = "198.51.100.77"
        address = IPv4Address("TCP", host, 4000)
        self.assertEqual(parseHost(host), ipaddress.IPv4Address(host))
        self.assertEqual(describe(address), f"{host}:4000")
        self.assertEqual(describe(IPv4Address("TCP", host, 4001)), f"{host}:4001")
        self.assertEqual(parseHost(host), ipaddress.IPv4Address(host))
        self.assertEqual(self.parsed, [host])

    def test_unparsableCached(self):
        """
        A host that does not parse stays unparsable, and C{unknown}.
        """
        address = IPv4Address("TCP", "203.0.113.300", 1)
        self.assertEqual(describe(address), "unknown")
        self.assertEqual(describe(address), "unknown")
        self.assertIsNone(parseHost("203.0.113.300"))
        self.assertEqual(self.parsed, ["203.0.113.300"])

    def test_bounded(self):
        """
        The cache keeps the last hosts only: one parsed long ago (more hosts
        than the cache holds) is parsed again, with the same result.
        """
        first = "2001:db8::1"
        self.assertEqual(describe(IPv6Address("TCP", first, 1)), "[2001:db8::1]:1")
        for n in range(addresses._CACHED_HOSTS):
            parseHost(str(ipaddress.IPv4Address(0xC6336400 + n)))
            describe(IPv4Address("TCP", str(ipaddress.IPv4Address(0xCB007100 + n)), 1))
        for cached in (addresses._parseText, addresses._hostText):
            self.assertEqual(cached.cache_info().currsize, addresses._CACHED_HOSTS)
        del self.parsed[:]
        self.assertEqual(describe(IPv6Address("TCP", first, 1)), "[2001:db8::1]:1")
        self.assertEqual(self.parsed, [first])


class HeadersSentTests(SynchronousTestCase):
    def test_v1(self):
        """
        An IPv4 client on a dual-stack socket is sent on as C{TCP4}.
        """
        self.assertEqual(
            v1Header(MAPPED, MAPPED_HOST),
            b"PROXY TCP4 127.0.0.1 127.0.0.1 4242 7000\r\n",
        )

    def test_v2(self):
        """
        ... and as C{AF_INET} in version 2, with a 12-byte block.
        """
        header = v2Header(MAPPED, MAPPED_HOST)
        self.assertEqual(header, v2Header(CLIENT, HOST))
        self.assertEqual(header[12:16], b"\x21\x11\x00\x0c")
        self.assertEqual(header[:12], V2_SIGNATURE)

    def test_parsedMapped(self):
        """
        A header that names mapped addresses gives IPv4 ones.
        """
        line = b"PROXY TCP6 ::ffff:127.0.0.1 ::ffff:127.0.0.1 4242 7000\r\n"
        self.assertEqual(parseHeader(line), (CLIENT, HOST, len(line)))
