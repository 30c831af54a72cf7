"""
Tests for L{gateway.proxytlv}: the C{v2-ssl} TLVs, read back by a parser
written here from HAProxy's C{doc/proxy-protocol.txt} §2.2, not from the
module under test.
"""

import trustme
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from gateway.proxyprotocol import parseHeader, v2Header
from gateway.proxytlv import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    ClientTLS,
    TLVTooLong,
    clientTLS,
    sslTLVs,
    tlv,
    v2SSLHeader,
    withTLVs,
)
from tests.test_certnames import handshake

SOURCE = IPv4Address("TCP", "192.0.2.7", 4242)
DESTINATION = IPv4Address("TCP", "198.51.100.1", 7000)
SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"


def parseTLVs(data):
    """
    A list of C{(type, value)}: each TLV is a type byte, a 16-bit
    big-endian length and that many bytes; one running past the end is an
    error (doc/proxy-protocol.txt §2.2).
    """
    found = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ValueError("truncated TLV header")
        kind, length = data[offset], int.from_bytes(data[offset + 1 : offset + 3])
        value = data[offset + 3 : offset + 3 + length]
        if len(value) != length:
            raise ValueError("TLV runs past the block")
        found.append((kind, value))
        offset += 3 + length
    return found


def parseV2(header):
    """
    Split a version 2 header into its command byte, family byte, address
    bytes and TLVs: the addresses are 12 bytes for TCP over IPv4, 36 for
    IPv6, none for UNSPEC (§2.2).
    """
    assert header[:12] == SIGNATURE, header
    command, family = header[12], header[13]
    length = int.from_bytes(header[14:16])
    block = header[16:]
    assert len(block) == length, (len(block), length)
    addressLength = {0x11: 12, 0x21: 36, 0x00: 0}[family]
    return command, family, block[:addressLength], parseTLVs(block[addressLength:])


def parseSSL(value):
    """
    C{struct pp2_tlv_ssl}: a client byte, a 32-bit verify, sub-TLVs.
    """
    client, verify = value[0], int.from_bytes(value[1:5])
    return client, verify, dict(parseTLVs(value[5:]))


class TLVTests(SynchronousTestCase):
    """
    L{tlv} and L{sslTLVs}.
    """

    def test_tlv(self):
        self.assertEqual(tlv(0x02, b"abc"), b"\x02\x00\x03abc")
        self.assertEqual(tlv(0x04, b""), b"\x04\x00\x00")
        self.assertEqual(len(tlv(0x02, b"x" * 0xFFFF)), 3 + 0xFFFF)
        self.assertRaises(TLVTooLong, tlv, 0x02, b"x" * 0x10000)

    def test_verifiedCertificate(self):
        """
        A verified client certificate: all three flags, verify 0, the
        version, CN and cipher sub-TLVs, and the SNI as the authority.
        """
        tlvs = parseTLVs(
            sslTLVs(
                "TLSv1.3",
                "TLS_AES_256_GCM_SHA384",
                "client.example.com",
                certificatePresented=True,
                verified=True,
                sni="gateway.example.com",
            )
        )
        self.assertEqual([kind for kind, _ in tlvs], [0x02, 0x20])
        self.assertEqual(tlvs[0][1], b"gateway.example.com")
        client, verify, subs = parseSSL(tlvs[1][1])
        self.assertEqual(
            client, PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
        )
        self.assertEqual(client, 0x07)
        self.assertEqual(verify, 0)
        self.assertEqual(
            subs,
            {
                0x21: b"TLSv1.3",
                0x22: b"client.example.com",
                0x23: b"TLS_AES_256_GCM_SHA384",
            },
        )

    def test_noCertificate(self):
        """
        TLS without a client certificate: only C{PP2_CLIENT_SSL}, no CN, and
        a non-zero verify ("zero if the client presented a certificate and
        it was successfully verified, and non-zero otherwise").
        """
        [(kind, value)] = parseTLVs(
            sslTLVs("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", None, False, False, None)
        )
        self.assertEqual(kind, 0x20)
        client, verify, subs = parseSSL(value)
        self.assertEqual(client, PP2_CLIENT_SSL)
        self.assertNotEqual(verify, 0)
        self.assertEqual(subs, {0x21: b"TLSv1.2", 0x23: b"ECDHE-RSA-AES128-GCM-SHA256"})

    def test_unverifiedCertificate(self):
        client, verify, subs = parseSSL(
            parseTLVs(sslTLVs("TLSv1.3", "C", "cn", True, False, None))[0][1]
        )
        self.assertEqual(client, 0x07)
        self.assertNotEqual(verify, 0)
        self.assertEqual(subs[0x22], b"cn")

    def test_certificateWithoutCN(self):
        client, verify, subs = parseSSL(
            parseTLVs(sslTLVs("TLSv1.3", "C", None, True, True, None))[0][1]
        )
        self.assertEqual((client, verify), (0x07, 0))
        self.assertNotIn(0x22, subs)

    def test_utf8(self):
        """
        A CN and an SNI name travel as UTF-8; a C{bytes} SNI as it came.
        """
        tlvs = dict(parseTLVs(sslTLVs("TLSv1.3", "C", "Zoë", True, True, "é.example")))
        self.assertEqual(tlvs[0x02], "é.example".encode())
        self.assertEqual(parseSSL(tlvs[0x20])[2][0x22], "Zoë".encode())
        tlvs = dict(parseTLVs(sslTLVs("TLSv1.3", "C", None, False, False, b"a.b")))
        self.assertEqual(tlvs[0x02], b"a.b")

    def test_tooLong(self):
        self.assertRaises(
            TLVTooLong, sslTLVs, "TLSv1.3", "C", "x" * 0x10000, True, True, None
        )

    @given(
        st.sampled_from(["TLSv1.2", "TLSv1.3", None]),
        st.one_of(st.none(), st.text(st.characters(max_codepoint=126), max_size=60)),
        st.one_of(st.none(), st.text(max_size=64)),
        st.booleans(),
        st.booleans(),
        st.one_of(st.none(), st.text(max_size=255)),
    )
    def test_roundTrip(self, version, cipher, cn, presented, verified, sni):
        """
        Whatever the session, the parser reads back what was put in.
        """
        tlvs = parseTLVs(sslTLVs(version, cipher, cn, presented, verified, sni))
        found = dict(tlvs)
        self.assertEqual(len(found), len(tlvs))
        self.assertEqual(found.get(0x02), sni.encode() if sni else None)
        client, verify, subs = parseSSL(found[0x20])
        self.assertEqual(client & PP2_CLIENT_SSL, PP2_CLIENT_SSL)
        self.assertEqual(bool(client & PP2_CLIENT_CERT_CONN), presented)
        self.assertEqual(bool(client & PP2_CLIENT_CERT_SESS), presented)
        self.assertEqual(verify == 0, presented and verified)
        self.assertEqual(subs.get(0x21), version.encode() if version else None)
        self.assertEqual(subs.get(0x23), cipher.encode() if cipher else None)
        self.assertEqual(subs.get(0x22), cn.encode() if (cn and presented) else None)


class HeaderTests(SynchronousTestCase):
    """
    L{withTLVs} and L{v2SSLHeader} on headers from C{v2Header}.
    """

    tls = ClientTLS(
        version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
        clientCN="client",
        certificatePresented=True,
        verified=True,
        sni="gateway.example.com",
    )

    def test_ipv4(self):
        """
        The TLVs follow the 12 address bytes; the length field covers both.
        """
        plain = v2Header(SOURCE, DESTINATION)
        header = v2SSLHeader(plain, self.tls)
        command, family, addresses, tlvs = parseV2(header)
        self.assertEqual((command, family), (0x21, 0x11))
        self.assertEqual(addresses, plain[16:])
        self.assertEqual(dict(tlvs)[0x02], b"gateway.example.com")
        self.assertEqual(parseSSL(dict(tlvs)[0x20])[2][0x22], b"client")

    def test_ipv6(self):
        plain = v2Header(
            IPv6Address("TCP", "2001:db8::7", 4242),
            IPv6Address("TCP", "2001:db8::1", 7000),
        )
        command, family, addresses, tlvs = parseV2(v2SSLHeader(plain, self.tls))
        self.assertEqual(family, 0x21)
        self.assertEqual(addresses, plain[16:])
        self.assertEqual([kind for kind, _ in tlvs], [0x02, 0x20])

    def test_local(self):
        """
        A C{LOCAL} header (a UNIX-socket client) carries the TLVs too, as
        HAProxy sends them whatever the command.
        """
        unix = UNIXAddress(b"/run/gateway.sock")
        command, family, addresses, tlvs = parseV2(
            v2SSLHeader(v2Header(unix, unix), self.tls)
        )
        self.assertEqual((command, family, addresses), (0x20, 0x00, b""))
        self.assertEqual([kind for kind, _ in tlvs], [0x02, 0x20])

    def test_plainClient(self):
        """
        A client that did not use TLS gets no SSL TLV: the header is the
        plain v2 one.
        """
        plain = v2Header(SOURCE, DESTINATION)
        self.assertEqual(v2SSLHeader(plain, None), plain)
        self.assertEqual(parseV2(v2SSLHeader(plain, None))[3], [])

    def test_gatewayReadsIt(self):
        """
        The gateway's own strict PROXY parser (a gateway behind a gateway)
        accepts the header and the addresses it names.
        """
        header = v2SSLHeader(v2Header(SOURCE, DESTINATION), self.tls)
        source, destination, used = parseHeader(header + b"hello\n")
        self.assertEqual((source.host, source.port), ("192.0.2.7", 4242))
        self.assertEqual(destination.port, 7000)
        self.assertEqual(used, len(header))

    def test_appendTwice(self):
        plain = v2Header(SOURCE, DESTINATION)
        twice = withTLVs(withTLVs(plain, tlv(0x04, b"")), tlv(0x04, b"ab"))
        self.assertEqual(parseV2(twice)[3], [(0x04, b""), (0x04, b"ab")])

    def test_notAHeader(self):
        plain = v2Header(SOURCE, DESTINATION)
        self.assertRaises(ValueError, withTLVs, b"PROXY UNKNOWN\r\n", b"")
        self.assertRaises(ValueError, withTLVs, plain[:-1], b"")
        self.assertRaises(ValueError, withTLVs, plain + b"x", b"")

    def test_blockTooLong(self):
        plain = v2Header(SOURCE, DESTINATION)
        self.assertRaises(
            TLVTooLong, withTLVs, plain, tlv(0x04, b"x" * (0xFFFF - 3 - 12 + 1))
        )
        grown = withTLVs(plain, tlv(0x04, b"x" * (0xFFFF - 3 - 12)))
        self.assertEqual(len(grown), 16 + 0xFFFF)


class ClientTLSTests(SynchronousTestCase):
    """
    L{clientTLS} reads a completed pyOpenSSL session.
    """

    def connect(self, clientCertificate, sni, version=SSL.TLS1_3_VERSION):
        ca = trustme.CA()
        serverContext = SSL.Context(SSL.TLS_METHOD)
        ca.issue_cert("gateway.example.com").configure_cert(serverContext)
        ca.configure_trust(serverContext)
        serverContext.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
        clientContext = SSL.Context(SSL.TLS_METHOD)
        clientContext.set_max_proto_version(version)
        ca.configure_trust(clientContext)
        if clientCertificate:
            ca.issue_cert("client.example.com", common_name="orders").configure_cert(
                clientContext
            )
        server = SSL.Connection(serverContext, None)
        server.set_accept_state()
        client = SSL.Connection(clientContext, None)
        client.set_connect_state()
        if sni:
            client.set_tlsext_host_name(sni)
        handshake(client, server)
        return server

    def test_mutual(self):
        details = clientTLS(self.connect(True, b"gateway.example.com"), verified=True)
        self.assertEqual(details.version, "TLSv1.3")
        self.assertTrue(details.cipher.startswith("TLS_"), details.cipher)
        self.assertEqual(details.clientCN, "orders")
        self.assertTrue(details.certificatePresented)
        self.assertTrue(details.verified)
        self.assertEqual(details.sni, b"gateway.example.com")
        tlvs = parseV2(v2SSLHeader(v2Header(SOURCE, DESTINATION), details))[3]
        client, verify, subs = parseSSL(dict(tlvs)[0x20])
        self.assertEqual((client, verify, subs[0x22]), (0x07, 0, b"orders"))

    def test_anonymousTLS12(self):
        details = clientTLS(
            self.connect(False, None, SSL.TLS1_2_VERSION), verified=True
        )
        self.assertEqual(details.version, "TLSv1.2")
        self.assertIsNone(details.clientCN)
        self.assertFalse(details.certificatePresented)
        self.assertFalse(details.verified)
        self.assertIsNone(details.sni)
