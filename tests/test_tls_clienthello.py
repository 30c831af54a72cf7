"""
ClientHello extensions against L{gateway.tls.ServerTLS}: whatever a real
client offers (ALPN, NPN, OCSP stapling, session tickets, early data,
post-handshake auth, an SNI name the server lacks, key shares for one curve
only, a maximum fragment length, extensions OpenSSL does not implement such
as record_size_limit, ...), it gets a handshake, served as if the
server had not heard the offer, unless the gateway was told to act on it
(C{--tls-alpn}).

The clients are independent implementations: C{openssl s_client} (skipped
when it is not installed) and Python's C{ssl} module. The server is a
L{ServerTLS} under L{gateway.tls.wrapFactory} on loopback TCP, that greets
each client with the ALPN protocol it selected and closes.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import warnings

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from gateway.tls import connectionInfo, failureReason, loadServerTLS, wrapFactory
from tests.e2e import DEADLINE, ChildProcess, spawn
from tests.test_tls import _PKI
from tests.tlsclient import CLOSE_NOTIFY, TLSClient

NAME = "gw.example"

# What the ticket-issuing server allows as early data, in bytes: any
# non-zero value makes clients offer early data with its tickets.
EARLY_DATA_BYTES = 16384


@implementer(IHandshakeListener)
class _Greeter(Protocol):
    """
    Says C{hello <ALPN protocol or ->} once the handshake is done, and
    closes; records how the connection ended.
    """

    def connectionMade(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.info = None
        self.reason: Failure | None = None
        self.factory.connections.append(self)

    def handshakeCompleted(self) -> None:
        self.info = connectionInfo(self.transport)
        self.transport.write(f"hello {self.info.alpn or '-'}\n".encode("ascii"))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason
        self.lost.callback(None)


class _TicketIssuer(ChildProcess):
    """
    C{openssl s_server -www} on a free loopback port, with session tickets
    and early data on: where a client gets a session to offer the gateway.

    @ivar port: the port it accepts connections on.
    """

    @classmethod
    async def start(cls, case: TestCase, certFile: str, keyFile: str):
        issuer = cls()
        command = [
            _openssl(),
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-cert",
            certFile,
            "-key",
            keyFile,
            "-www",
            "-max_early_data",
            str(EARLY_DATA_BYTES),
        ]
        spawn(case, issuer, command)
        accepting = await issuer.loggedMatch(rb"ACCEPT 127\.0\.0\.1:(\d+)\s")
        issuer.port = int(accepting.group(1))
        return issuer

    async def session(self, version: str, path: str) -> None:
        """
        Save in C{path} a session of C{version} (C{-tls1_2}, C{-tls1_3}):
        C{s_client} reads the tickets once the page has come.
        """
        run = await deferToThread(
            subprocess.run,
            [
                _openssl(),
                "s_client",
                "-connect",
                f"127.0.0.1:{self.port}",
                version,
                "-ign_eof",
                "-sess_out",
                path,
            ],
            input=b"GET / HTTP/1.0\r\n\r\n",
            capture_output=True,
            timeout=DEADLINE,
        )
        if not os.path.exists(path):
            raise AssertionError(f"no session saved: {run.stdout + run.stderr!r}")


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        raise SkipTest("openssl is not installed: no s_client to test with")
    return path


class _ServerTestCase(TestCase):
    def setUp(self) -> None:
        self.pki = _PKI(self.mktemp())
        self.gw = self.pki.server("gw", NAME)
        self.caFile = self.pki.write("ca.pem", self.pki.ca.cert_pem.bytes())

    def serve(self, alpn: list[str] = (), clientCAFile: str | None = None) -> list:
        factory = ServerFactory.forProtocol(_Greeter)
        factory.connections = []
        creator = loadServerTLS(
            [self.gw.certFile], [self.gw.keyFile], clientCAFile, "1.2", alpn
        )
        port = reactor.listenTCP(
            0, wrapFactory(creator, factory, reactor), interface="127.0.0.1"
        )
        self.port = port.getHost().port
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: DeferredList([c.lost for c in factory.connections]))
        return factory.connections

    async def sClient(self, *options: str) -> subprocess.CompletedProcess:
        """
        Run C{openssl s_client} with C{options}; it verifies the server,
        prints what it receives, and ends when the server closes.
        """
        command = [
            _openssl(),
            "s_client",
            "-connect",
            f"127.0.0.1:{self.port}",
            "-CAfile",
            self.caFile,
            "-verify_return_error",
            "-ign_eof",
            *options,
        ]
        if "-servername" not in options and "-noservername" not in options:
            command += ["-servername", NAME]
        return await deferToThread(
            subprocess.run,
            command,
            input=b"",
            capture_output=True,
            timeout=DEADLINE,
        )

    async def pythonClient(self, context: ssl.SSLContext, serverName=NAME):
        """
        Handshake with C{context}; returns the client, and what it received
        before the server closed.
        """
        client = await deferToThread(TLSClient, context, serverName, self.port)
        self.addCleanup(client.close)
        await deferToThread(client.handshake)
        return client, await deferToThread(client.receiveAll)

    def context(self, **settings) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.caFile)
        for name, value in settings.items():
            setattr(context, name, value)
        return context


class OpenSSLClientTests(_ServerTestCase):
    """
    C{openssl s_client} offering each extension completes a verified
    handshake and reads the greeting.
    """

    async def assertServed(
        self, *options: str, greeting: bytes = b"hello -"
    ) -> subprocess.CompletedProcess:
        servers = self.serve()
        run = await self.sClient(*options)
        self.assertIn(greeting + b"\n", run.stdout, run.stderr)
        self.assertIn(b"Verify return code: 0 (ok)", run.stdout)
        await servers[-1].lost
        self.assertIsNotNone(servers[-1].info, servers[-1].reason)
        return run

    async def test_alpn(self) -> None:
        await self.assertServed("-alpn", "http/1.1")

    async def test_alpnBrowser(self) -> None:
        await self.assertServed("-alpn", "h2,http/1.1")

    async def test_alpnTLS12(self) -> None:
        await self.assertServed("-alpn", "h2,http/1.1", "-tls1_2")

    async def test_npn(self) -> None:
        """
        Next Protocol Negotiation, ALPN's TLS 1.2 predecessor.
        """
        await self.assertServed("-nextprotoneg", "http/1.1", "-tls1_2")

    async def test_ocspStatusRequest(self) -> None:
        await self.assertServed("-status")

    async def test_certificateTransparency(self) -> None:
        # s_client wants a list of CT logs to check SCTs against; none will do.
        logs = self.pki.write("ct-logs.cnf", b"enabled_logs=\n")
        await self.assertServed("-ct", "-ctlogfile", logs)

    async def test_unknownServerName(self) -> None:
        """
        A name no certificate has gets the default certificate (which the
        client verifies against the name it checks, gw.example).
        """
        await self.assertServed(
            "-servername", "unknown.example", "-verify_hostname", NAME
        )

    async def test_noServerName(self) -> None:
        await self.assertServed("-noservername")

    async def test_keyShareOneCurve(self) -> None:
        """
        A TLS 1.3 client sending its key share for one group only, each of
        those clients use.
        """
        for group in ["X25519", "P-256", "P-384", "P-521", "X448"]:
            await self.assertServed("-groups", group)

    async def test_ffdheOnly(self) -> None:
        await self.assertServed("-groups", "ffdhe2048")

    async def test_tls12Curve(self) -> None:
        """
        A TLS 1.2 client preferring another curve for ECDHE. (In TLS 1.2 the
        groups a client lists also bound the curve of an ECDSA certificate,
        P-256 here, so every such client lists P-256 too.)
        """
        for groups in ["P-384:P-256", "X25519:P-256", "P-521:P-256"]:
            await self.assertServed("-groups", groups, "-tls1_2")

    async def test_postHandshakeAuth(self) -> None:
        await self.assertServed("-enable_pha")

    async def test_maxFragmentLength(self) -> None:
        await self.assertServed("-maxfraglen", "512")

    async def test_noTicket(self) -> None:
        await self.assertServed("-no_ticket")

    async def test_sessionResumption(self) -> None:
        """
        A client offering to resume a session it got from another server (a
        TLS 1.2 ticket, a TLS 1.3 PSK), and then early data with it: the
        gateway does not resume (its sessions are off) nor take early data,
        and the full handshake follows.
        """
        issuer = await _TicketIssuer.start(self, self.gw.certFile, self.gw.keyFile)
        sessions = {}
        for version in ["-tls1_2", "-tls1_3"]:
            sessions[version] = os.path.abspath(self.mktemp())
            await issuer.session(version, sessions[version])
        earlyData = self.pki.write("early.txt", b"early\n")
        for version, session in sessions.items():
            run = await self.assertServed(version, "-sess_in", session)
            self.assertIn(b"\nNew, TLSv1", run.stdout)
        run = await self.assertServed(
            "-sess_in", sessions["-tls1_3"], "-early_data", earlyData
        )
        self.assertIn(b"Early data was rejected", run.stdout)

    async def test_externalPSK(self) -> None:
        """
        A TLS 1.3 client offering an external pre-shared key the server does
        not know: the certificate handshake follows.
        """
        await self.assertServed(
            "-psk_identity", "client", "-psk", "0123456789abcdef0123456789abcdef"
        )

    async def test_signatureAlgorithms(self) -> None:
        for algorithms in ["ECDSA+SHA256", "ECDSA+SHA384:ECDSA+SHA256"]:
            await self.assertServed("-sigalgs", algorithms)

    async def test_unrequestedClientCertificate(self) -> None:
        alice = self.pki.client("alice")
        await self.assertServed("-cert", alice.certFile, "-key", alice.keyFile)


class OpenSSLALPNTests(_ServerTestCase):
    """
    With protocols to select (C{--tls-alpn}), the first of the client's
    offers among them is selected; a client that offers none of them gets
    the no_application_protocol alert.
    """

    async def test_selected(self) -> None:
        self.serve(alpn=["h2", "http/1.1"])
        run = await self.sClient("-alpn", "http/1.1")
        self.assertIn(b"hello http/1.1\n", run.stdout, run.stderr)
        self.assertIn(b"ALPN protocol: http/1.1", run.stdout)

    async def test_clientOrder(self) -> None:
        self.serve(alpn=["h2", "http/1.1"])
        run = await self.sClient("-alpn", "http/1.1,h2")
        self.assertIn(b"hello http/1.1\n", run.stdout, run.stderr)

    async def test_noneOfThem(self) -> None:
        servers = self.serve(alpn=["h2"])
        run = await self.sClient("-alpn", "http/1.1,spdy/3")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn(b"no application protocol", run.stdout + run.stderr)
        await servers[-1].lost
        self.assertIsNone(servers[-1].info)
        self.assertEqual(failureReason(servers[-1].reason), "no application protocol")

    async def test_noOffer(self) -> None:
        """
        A client that offers no ALPN is served, with none selected.
        """
        self.serve(alpn=["h2"])
        run = await self.sClient()
        self.assertIn(b"hello -\n", run.stdout, run.stderr)


class PythonClientTests(_ServerTestCase):
    """
    Python's C{ssl} clients offering each extension it can.
    """

    async def test_alpn(self) -> None:
        for offers in [["http/1.1"], ["h2", "http/1.1"]]:
            for version in [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]:
                servers = self.serve()
                context = self.context(maximum_version=version)
                context.set_alpn_protocols(offers)
                client, received = await self.pythonClient(context)
                self.assertEqual(received, (b"hello -\n", CLOSE_NOTIFY))
                self.assertIsNone(client.tls.selected_alpn_protocol())
                await servers[-1].lost

    async def test_alpnSelected(self) -> None:
        self.serve(alpn=["h2", "http/1.1"])
        context = self.context()
        context.set_alpn_protocols(["http/1.1"])
        client, received = await self.pythonClient(context)
        self.assertEqual(received, (b"hello http/1.1\n", CLOSE_NOTIFY))
        self.assertEqual(client.tls.selected_alpn_protocol(), "http/1.1")

    async def test_alpnRefused(self) -> None:
        """
        A client that offers none of the protocols gets the alert.
        """
        servers = self.serve(alpn=["h2"])
        context = self.context()
        context.set_alpn_protocols(["http/1.1"])
        client = await deferToThread(TLSClient, context, NAME, self.port)
        self.addCleanup(client.close)
        error = await self.assertFailure(deferToThread(client.handshake), ssl.SSLError)
        self.assertIn("no application protocol", str(error))
        await servers[-1].lost

    async def test_npn(self) -> None:
        context = self.context(maximum_version=ssl.TLSVersion.TLSv1_2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                context.set_npn_protocols(["http/1.1"])
            except (NotImplementedError, AttributeError):
                raise SkipTest("this Python's OpenSSL has no NPN") from None
        self.serve()
        client, received = await self.pythonClient(context)
        self.assertEqual(received, (b"hello -\n", CLOSE_NOTIFY))

    async def test_postHandshakeAuth(self) -> None:
        self.serve()
        client, received = await self.pythonClient(
            self.context(post_handshake_auth=True)
        )
        self.assertEqual(received, (b"hello -\n", CLOSE_NOTIFY))

    async def test_oneCurve(self) -> None:
        """
        A client with one curve only (TLS 1.3: the certificate's curve is
        not bound by it; TLS 1.2: it is, see
        L{OpenSSLClientTests.test_tls12Curve}).
        """
        for curve, version in [
            ("prime256v1", ssl.TLSVersion.TLSv1_2),
            ("secp384r1", ssl.TLSVersion.TLSv1_3),
            ("secp521r1", ssl.TLSVersion.TLSv1_3),
        ]:
            self.serve()
            context = self.context(maximum_version=version)
            context.set_ecdh_curve(curve)
            client, received = await self.pythonClient(context)
            self.assertEqual(received, (b"hello -\n", CLOSE_NOTIFY))

    async def test_unknownServerName(self) -> None:
        self.serve()
        context = self.context(check_hostname=False)
        client, received = await self.pythonClient(context, "unknown.example")
        self.assertEqual(received, (b"hello -\n", CLOSE_NOTIFY))


def _withExtension(record: bytes, extensionType: int, data: bytes) -> bytes:
    """
    The ClientHello in TLS record C{record} with one more extension, first
    in its list (RFC 8446 section 4.1.2; lengths big-endian).
    """
    header, body = record[:5], record[5:]
    assert header[0] == HANDSHAKE_RECORD and body[0] == CLIENT_HELLO, record[:6]
    offset = 4 + 2 + 32  # handshake header, legacy_version, random
    offset += 1 + body[offset]  # session id
    offset += 2 + int.from_bytes(body[offset : offset + 2], "big")  # ciphers
    offset += 1 + body[offset]  # compression methods
    extensionsLength = int.from_bytes(body[offset : offset + 2], "big")
    extension = extensionType.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data
    hello = (
        body[4:offset]
        + (extensionsLength + len(extension)).to_bytes(2, "big")
        + extension
        + body[offset + 2 :]
    )
    handshake = bytes([CLIENT_HELLO]) + len(hello).to_bytes(3, "big") + hello
    return header[:3] + len(handshake).to_bytes(2, "big") + handshake


# TLS record and handshake message types (RFC 8446, appendix B).
HANDSHAKE_RECORD = 0x16
ALERT_RECORD = 0x15
CLIENT_HELLO = 0x01

# Extensions OpenSSL 3.0 does not implement, as some clients send them.
UNIMPLEMENTED_EXTENSIONS = {
    # record_size_limit (RFC 8449): Firefox; the limit, 16385 bytes.
    "record_size_limit": (28, (16385).to_bytes(2, "big")),
    # compress_certificate (RFC 8879): Chrome, Safari; brotli.
    "compress_certificate": (27, bytes([2, 0, 2])),
    # delegated_credential (RFC 9345): Firefox; one signature scheme.
    "delegated_credential": (34, bytes([0, 2, 4, 3])),
    # application_settings (ALPS, draft): Chrome; h2.
    "application_settings": (17513, bytes([0, 3, 2]) + b"h2"),
    # A GREASE value (RFC 8701): Chrome, reserved so that servers ignore it.
    "GREASE": (0x0A0A, b""),
}


class UnimplementedExtensionTests(SynchronousTestCase):
    """
    A ClientHello carrying an extension OpenSSL does not implement gets a
    ServerHello, not an alert. (openssl s_client and Python cannot send
    them, so one is put into a real ClientHello.)
    """

    def test_ignored(self) -> None:
        pki = _PKI(self.mktemp())
        gw = pki.server("gw", NAME)
        tls = loadServerTLS([gw.certFile], [gw.keyFile])
        for name, (extensionType, data) in UNIMPLEMENTED_EXTENSIONS.items():
            for version in [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION]:
                context = SSL.Context(SSL.TLS_METHOD)
                context.set_max_proto_version(version)
                client = SSL.Connection(context, None)
                client.set_tlsext_host_name(NAME.encode("ascii"))
                client.set_connect_state()
                self.assertRaises(SSL.WantReadError, client.do_handshake)
                hello = _withExtension(client.bio_read(65536), extensionType, data)

                server = tls.serverConnectionForTLS(None)
                server.set_accept_state()
                server.bio_write(hello)
                # Waiting for the client's next flight, having answered.
                self.assertRaises(SSL.WantReadError, server.do_handshake)
                answer = server.bio_read(65536)
                self.assertEqual(answer[0], HANDSHAKE_RECORD, (name, version, answer))

    def test_modifiedHelloIsRead(self) -> None:
        """
        The modified ClientHello is well formed: a malformed extension in it
        is refused.
        """
        pki = _PKI(self.mktemp())
        gw = pki.server("gw", NAME)
        client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        client.set_connect_state()
        self.assertRaises(SSL.WantReadError, client.do_handshake)
        # supported_versions (43) with a list length past its end.
        hello = _withExtension(client.bio_read(65536), 43, bytes([9, 3, 4]))
        server = loadServerTLS([gw.certFile], [gw.keyFile]).serverConnectionForTLS(None)
        server.set_accept_state()
        server.bio_write(hello)
        self.assertRaises(SSL.Error, server.do_handshake)
        self.assertEqual(server.bio_read(65536)[0], ALERT_RECORD)
