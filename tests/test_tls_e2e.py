"""
End to end over TLS: a real C{twistd -n gateway} with certificates from
trustme, and real clients: Python's C{ssl}, C{openssl s_client}, C{testssl}.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e import (
    DEADLINE,
    BackendFactory,
    GatewayProcess,
    UpperBackend,
    backendOption,
    listenBackend,
    runGateway,
    runToEnd,
    sample,
    untilSample,
)
from tests.tlsclient import (
    CLOSE_NOTIFY,
    EOF,
    RESET,
    Certificates,
    TLSClient,
    rawReceiveAll,
)

LISTEN_TLS = ["--listen-tls", "tcp:0:interface=127.0.0.1"]
LISTENER = "tls:0"
NAME = "gw.example"

# testssl makes many connections; a loaded machine can take a while.
TESTSSL_DEADLINE = 180.0

# A short idle timeout for tests of what it ends, in seconds.
IDLE_TIMEOUT = "1"


# The names other modules first imported from here, kept as the same helpers.
waitForSample = untilSample
__all__ = ["backendOption", "sample", "waitForLog", "waitForSample"]


def waitForLog(gateway: GatewayProcess, text: str) -> Deferred[None]:
    """
    L{GatewayProcess.logged}.
    """
    return gateway.logged(text)


class TLSTestCase(TestCase):
    """
    Certificates in a temporary directory, and clients that are closed when
    the test ends.
    """

    async def tlsGateway(
        self, extra: Sequence[str] = (), protocol: type[Protocol] = UpperBackend
    ) -> tuple[BackendFactory, GatewayProcess]:
        """
        A gateway on a TLS listener with a certificate for L{NAME}, in front
        of a test backend speaking C{protocol}, with C{extra} arguments.
        """
        backend, backendPort = listenBackend(self, protocol)
        gateway = await runGateway(
            self,
            LISTEN_TLS
            + self.gatewayCertificate()
            + backendOption(backendPort)
            + list(extra),
        )
        return backend, gateway

    def setUp(self) -> None:
        self.certificates = Certificates(self.mktemp())

    def gatewayCertificate(self, name: str = "gw", *identities: str) -> list[str]:
        """
        Issue a certificate for the gateway; the options that serve it.
        """
        certFile, keyFile, _ = self.certificates.issue(name, *(identities or (NAME,)))
        return ["--tls-cert", certFile, "--tls-key", keyFile]

    async def connect(
        self,
        port: int | None,
        serverName: str | None = NAME,
        context: ssl.SSLContext | None = None,
        **options,
    ) -> TLSClient:
        """
        Connect a client (not handshaking yet).
        """
        if context is None:
            context = self.certificates.context()
        client = await deferToThread(TLSClient, context, serverName, port, **options)
        self.addCleanup(client.close)
        return client

    async def handshake(self, port: int, **options) -> TLSClient:
        client = await self.connect(port, **options)
        return await deferToThread(client.handshake)

    async def refused(self, port: int, **options) -> None:
        """
        A client the gateway must refuse: its handshake fails, or (TLS 1.3,
        where the client finishes before the server has checked its
        certificate) its first read ends in an alert, with nothing received.
        """
        client = await self.connect(port, **options)
        try:
            await deferToThread(client.handshake)
            await deferToThread(client.send, b"must not arrive\n")
            received, end = await deferToThread(client.receiveAll)
        except (ssl.SSLError, ConnectionError):
            # An alert, or the connection gone under a late write.
            return
        self.assertEqual((received, end in (EOF, RESET)), (b"", True))


class ListenerTests(TLSTestCase):
    async def test_chainVerified(self):
        """
        A client that trusts the CA verifies the gateway's chain and name,
        and messages go through.
        """
        backend, gateway = await self.tlsGateway()
        client = await self.handshake(gateway.port())
        await deferToThread(client.send, b"hello\n")
        self.assertEqual(await deferToThread(client.receive, 6), b"HELLO\n")
        self.assertEqual(backend.received, [b"hello"])

    async def test_wrongNameNotVerified(self):
        """
        A client asking for a name the certificate does not carry fails to
        verify it (the test above cannot pass by verifying nothing), and the
        gateway counts the handshake it abandoned.
        """
        gateway = await runGateway(self, LISTEN_TLS + self.gatewayCertificate())
        client = await self.connect(gateway.port(), serverName="elsewhere.example")
        with self.assertRaises(ssl.SSLCertVerificationError):
            await deferToThread(client.handshake)
        client.close()
        await untilSample(
            gateway, 1, "gateway_tls_handshake_failures_total", listener=LISTENER
        )

    async def test_sni(self):
        """
        The certificate whose subjectAltName matches the client's SNI is
        served; an unknown name or none gets the first one.
        """
        gateway = await runGateway(
            self,
            LISTEN_TLS
            + self.gatewayCertificate("a", "a.example")
            + self.gatewayCertificate("b", "b.example"),
        )
        context = self.certificates.context()
        context.check_hostname = False
        for serverName, expected in [
            ("a.example", "a.example"),
            ("b.example", "b.example"),
            ("unknown.example", "a.example"),
            (None, "a.example"),
        ]:
            client = await self.handshake(
                gateway.port(), serverName=serverName, context=context
            )
            certificate = client.peerCertificate()
            names = certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.DNSName)
            self.assertEqual((serverName, names), (serverName, [expected]))

    async def test_minimumVersion13(self):
        """
        Under --tls-min-version 1.3 a TLS 1.2 client is refused, counted as
        a failed handshake, and never reaches the backend; a TLS 1.3 client
        is served.
        """
        backend, gateway = await self.tlsGateway(["--tls-min-version", "1.3"])
        old = self.certificates.context(maximumVersion=ssl.TLSVersion.TLSv1_2)
        client = await self.connect(gateway.port(), context=old)
        with self.assertRaises(ssl.SSLError) as caught:
            await deferToThread(client.handshake)
        self.assertIn("VERSION", caught.exception.reason or "")
        await untilSample(
            gateway, 1, "gateway_tls_handshake_failures_total", listener=LISTENER
        )
        await untilSample(
            gateway,
            1,
            "gateway_connections_closed_total",
            listener=LISTENER,
            reason="tls_error",
        )
        self.assertEqual(backend.accepted, 0)
        client = await self.handshake(gateway.port())
        self.assertEqual(client.tls.version(), "TLSv1.3")

    async def test_mutualTLS(self):
        """
        With --tls-client-ca, a client without a certificate, or with one
        from another CA, is refused and never reaches the backend; a client
        with a certificate from that CA is served.
        """
        backend, backendPort = listenBackend(self)
        clients = Certificates(self.mktemp())
        certFile, keyFile, _ = clients.issue("alice", "alice.client.example")
        strangers = Certificates(self.mktemp())
        strangerCert = strangers.issue("mallory", "mallory.client.example")[:2]
        gateway = await runGateway(
            self,
            LISTEN_TLS
            + self.gatewayCertificate()
            + backendOption(backendPort)
            + ["--tls-client-ca", clients.caFile],
        )
        await self.refused(gateway.port())
        await self.refused(
            gateway.port(),
            context=self.certificates.context(clientCertificate=strangerCert),
        )
        await untilSample(
            gateway, 2, "gateway_tls_handshake_failures_total", listener=LISTENER
        )
        self.assertEqual(backend.accepted, 0)
        context = self.certificates.context(clientCertificate=(certFile, keyFile))
        client = await self.handshake(gateway.port(), context=context)
        await deferToThread(client.send, b"hi\n")
        self.assertEqual(await deferToThread(client.receive, 3), b"HI\n")
        self.assertEqual(backend.accepted, 1)

    async def test_intermediateClientCA(self):
        """
        A --tls-client-ca file holding only an intermediate CA is enough: a
        client whose certificate it signed is served; one signed by another
        intermediate of the same root is refused.
        """
        backend, backendPort = listenBackend(self)
        clients = Certificates(self.mktemp())
        intermediate = clients.ca.create_child_ca()
        sibling = clients.ca.create_child_ca()
        caFile = clients.write("intermediate.pem", intermediate.cert_pem.bytes())

        def issue(name: str, issuer) -> tuple[str, str]:
            leaf = issuer.issue_cert(f"{name}.client.example")
            chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
            return (
                clients.write(f"{name}.crt", chain),
                clients.write(f"{name}.key", leaf.private_key_pem.bytes()),
            )

        gateway = await runGateway(
            self,
            LISTEN_TLS
            + self.gatewayCertificate()
            + backendOption(backendPort)
            + ["--tls-client-ca", caFile],
        )
        await self.refused(
            gateway.port(),
            context=self.certificates.context(clientCertificate=issue("bob", sibling)),
        )
        context = self.certificates.context(
            clientCertificate=issue("alice", intermediate)
        )
        client = await self.handshake(gateway.port(), context=context)
        await deferToThread(client.send, b"hi\n")
        self.assertEqual(await deferToThread(client.receive, 3), b"HI\n")
        self.assertEqual(backend.accepted, 1)

    async def test_haproxy(self):
        """
        Behind --listen-tls haproxy:..., the PROXY header comes in clear
        before the handshake, and the gateway logs the address it names.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            ["--listen-tls", "haproxy:tcp:0:interface=127.0.0.1"]
            + self.gatewayCertificate()
            + backendOption(backendPort),
        )
        header = b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 443\r\n"
        client = await self.connect(gateway.port(), prefix=header)
        await deferToThread(client.handshake)
        await deferToThread(client.send, b"via proxy\n")
        self.assertEqual(await deferToThread(client.receive, 10), b"VIA PROXY\n")
        client.close()
        await gateway.logged("192.0.2.7:40001")

    async def test_unixSocket(self):
        """
        TLS over a unix socket.
        """
        backend, backendPort = listenBackend(self)
        # Short: a unix socket's path has a limit of about 100 bytes.
        directory = tempfile.mkdtemp(prefix="gw-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "gw.sock")
        await runGateway(
            self,
            ["--listen-tls", f"unix:{path}"]
            + self.gatewayCertificate()
            + backendOption(backendPort),
        )
        client = await self.connect(None, unixPath=path)
        await deferToThread(client.handshake)
        await deferToThread(client.send, b"local\n")
        self.assertEqual(await deferToThread(client.receive, 6), b"LOCAL\n")


class ReloadTests(TLSTestCase):
    async def test_reload(self):
        """
        After the files are replaced and SIGHUP is sent, a new connection
        gets the new certificate, and a connection opened before goes on
        working.
        """
        backend, gateway = await self.tlsGateway()
        old = await self.handshake(gateway.port())
        oldSerial = old.peerCertificate().serial_number
        _, _, renewed = self.certificates.issue("gw", NAME)
        gateway.transport.signalProcess("HUP")
        await gateway.logged("TLS reload: certificates")
        new = await self.handshake(gateway.port())
        self.assertEqual(new.peerCertificate().serial_number, renewed.serial_number)
        self.assertNotEqual(renewed.serial_number, oldSerial)
        await deferToThread(old.send, b"still here\n")
        self.assertEqual(await deferToThread(old.receive, 11), b"STILL HERE\n")
        self.assertEqual(old.peerCertificate().serial_number, oldSerial)

    async def test_failedReload(self):
        """
        A reload that cannot use the new files keeps the old certificate and
        logs why, naming the file.
        """
        gateway = await runGateway(self, LISTEN_TLS + self.gatewayCertificate())
        before = await self.handshake(gateway.port())
        serial = before.peerCertificate().serial_number
        keyFile = self.certificates.write("gw.key", b"not a key\n")
        gateway.transport.signalProcess("HUP")
        await gateway.logged("TLS reload failed")
        self.assertIn(f"--tls-key {keyFile}: not a PEM file", gateway.log())
        after = await self.handshake(gateway.port())
        self.assertEqual(after.peerCertificate().serial_number, serial)


class StalledHandshakeTests(TLSTestCase):
    async def test_stalledHandshakes(self):
        """
        A client that sends nothing, and one that sends half a ClientHello,
        are closed by the idle timeout, counted as failed handshakes with
        close reason idle_timeout, and never reach the backend. One that
        does not speak TLS at all is closed at once, reason tls_error.
        """
        backend, gateway = await self.tlsGateway(["--idle-timeout", IDLE_TIMEOUT])
        started = time.monotonic()
        silent = await self.connect(gateway.port())
        hello = ssl.create_default_context().wrap_bio(
            ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=NAME
        )
        with self.assertRaises(ssl.SSLWantReadError):
            hello.do_handshake()
        clientHello = outgoing.read()
        half = await self.connect(gateway.port())
        half.socket.sendall(clientHello[: len(clientHello) // 2])
        for client in (silent, half):
            self.assertEqual(await deferToThread(rawReceiveAll, client.socket), b"")
        # Not closed at once: the idle timeout ended them, which starts when
        # the gateway accepts, after `started` (a little less for rounding).
        self.assertGreaterEqual(time.monotonic() - started, float(IDLE_TIMEOUT) * 0.9)
        plain = await self.connect(gateway.port())
        plain.socket.sendall(b"hello\n")
        # Closed by its failed handshake (perhaps after an alert), not by the
        # timeout: the reason counted below says which.
        await deferToThread(rawReceiveAll, plain.socket)
        await untilSample(
            gateway, 3, "gateway_tls_handshake_failures_total", listener=LISTENER
        )
        await untilSample(
            gateway,
            1,
            "gateway_connections_closed_total",
            listener=LISTENER,
            reason="tls_error",
        )
        await untilSample(
            gateway,
            2,
            "gateway_connections_closed_total",
            listener=LISTENER,
            reason="idle_timeout",
        )
        self.assertEqual(backend.accepted, 0)


class LateBackend(UpperBackend):
    """
    An int32 backend that answers nothing until the gateway shuts its write
    side; then it answers every message (in upper case) and closes. Its
    replies can only reach a client after that client has ended its side.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.pending: list[bytes] = []

    def stringReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)
        self.pending.append(payload)

    def readConnectionLost(self) -> None:
        for payload in self.pending:
            self.sendString(payload.upper())
        self.transport.loseConnection()


class GreetingBackend(UpperBackend):
    """
    An int32 backend that greets, shuts its write side at once, and then
    only listens until the gateway shuts its own.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.sendString(b"hello")
        self.transport.loseWriteConnection()

    def stringReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)


class HalfCloseTests(TLSTestCase):
    """
    A TLS client's close_notify ends only its own direction.
    """

    async def gateway(
        self, protocol=LateBackend
    ) -> tuple[BackendFactory, GatewayProcess]:
        return await self.tlsGateway(protocol=protocol)

    async def test_closeNotify(self):
        """
        A client that sends, then close_notify, and reads on: everything it
        sent is delivered (the unterminated last line too), the backend's
        write side is shut, and the replies the backend sends only then
        still reach the client, followed by the gateway's close_notify.
        """
        backend, gateway = await self.gateway()
        client = await self.handshake(gateway.port())
        await deferToThread(client.send, b"a\nb")
        await deferToThread(client.closeNotify)
        received, end = await deferToThread(client.receiveAll)
        self.assertEqual((received, end), (b"A\nB\n", CLOSE_NOTIFY))
        self.assertEqual(backend.received, [b"a", b"b"])
        await gateway.logged("2 messages (2 bytes) down, client_closed")

    async def test_closeNotifyAndFIN(self):
        """
        The same when a TCP FIN follows the close_notify, as openssl
        s_client and socat send.
        """
        backend, gateway = await self.gateway()
        client = await self.handshake(gateway.port())
        await deferToThread(client.send, b"a\nb\n")
        await deferToThread(client.closeNotify, True)
        received, end = await deferToThread(client.receiveAll)
        self.assertEqual((received, end), (b"A\nB\n", CLOSE_NOTIFY))
        self.assertEqual(backend.received, [b"a", b"b"])

    async def test_FINWithoutCloseNotify(self):
        """
        A TCP FIN with no close_notify cuts the TLS stream short: the pair
        closes at once, as when a client's connection is lost; complete
        messages already read are delivered, the unterminated rest is not.
        """
        backend, gateway = await self.gateway(UpperBackend)
        client = await self.handshake(gateway.port())
        await deferToThread(client.send, b"first\n")
        self.assertEqual(await deferToThread(client.receive, 6), b"FIRST\n")
        await deferToThread(client.send, b"second\ncut")
        client.socket.shutdown(socket.SHUT_WR)
        received, end = await deferToThread(client.receiveAll)
        self.assertNotEqual(end, CLOSE_NOTIFY)
        await backend.allClosed()
        self.assertEqual(backend.received, [b"first", b"second"])

    async def test_backendEndsFirst(self):
        """
        A backend that shuts its write side first: the client gets its
        messages, then the gateway's close_notify, and may go on sending
        until its own close_notify; all of it reaches the backend.
        """
        backend, gateway = await self.gateway(GreetingBackend)
        client = await self.handshake(gateway.port())
        received, end = await deferToThread(client.receiveAll)
        self.assertEqual((received, end), (b"hello\n", CLOSE_NOTIFY))
        await deferToThread(client.send, b"late\nlast")
        await deferToThread(client.closeNotify)
        self.assertEqual(await deferToThread(rawReceiveAll, client.socket), b"")
        await backend.allClosed()
        self.assertEqual(backend.received, [b"late", b"last"])


class _RecordingTLS(BufferingTLSTransport):
    """
    Server-side TLS that keeps every byte it receives off the wire.
    """

    def dataReceived(self, data: bytes) -> None:
        self.factory.raw.append(data)
        super().dataReceived(data)


class BackendTLSTests(TLSTestCase):
    def listenTLSBackend(
        self, certificates: Certificates
    ) -> tuple[BackendFactory, int]:
        """
        A TLS backend on a free loopback port, with a certificate for
        localhost from C{certificates}' CA.
        """
        certFile, keyFile, _ = certificates.issue("backend", "localhost")
        with open(certFile, "rb") as c, open(keyFile, "rb") as k:
            options = PrivateCertificate.loadPEM(c.read() + k.read()).options()
        backend = BackendFactory(UpperBackend)
        tls = TLSMemoryBIOFactory(options, False, backend)
        tls.protocol = _RecordingTLS
        tls.raw = []
        port = reactor.listenTCP(0, tls, interface="127.0.0.1")

        async def cleanup() -> None:
            await port.stopListening()
            await backend.allClosed()

        self.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
        backend.raw = tls.raw
        return backend, port.getHost().port

    def trustRoots(self, certificates: Certificates) -> str:
        """
        A directory holding only C{certificates}' CA, for trustRoots=.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        shutil.copy(certificates.caFile, os.path.join(directory, "ca.pem"))
        return directory

    async def test_verified(self):
        """
        --backend tls:localhost:PORT:trustRoots=DIR: the backend's chain and
        name verify, and messages go through.
        """
        backend, backendPort = self.listenTLSBackend(self.certificates)
        roots = self.trustRoots(self.certificates)
        gateway = await runGateway(
            self,
            LISTEN_TLS
            + self.gatewayCertificate()
            + ["--backend", f"tls:localhost:{backendPort}:trustRoots={roots}"],
        )
        client = await self.handshake(gateway.port())
        await deferToThread(client.send, b"secret\n")
        self.assertEqual(await deferToThread(client.receive, 7), b"SECRET\n")
        self.assertEqual(backend.received, [b"secret"])
        self.assertNotIn(b"secret", b"".join(backend.raw))

    async def test_notVerified(self):
        """
        A backend whose certificate names another host, and one whose CA is
        not trusted: each connect fails and is logged with the reason, the
        client is closed, and no message ever reaches either, in clear or
        at all.
        """
        mismatched, mismatchedPort = self.listenTLSBackend(self.certificates)
        strangers = Certificates(self.mktemp())
        untrusted, untrustedPort = self.listenTLSBackend(strangers)
        roots = self.trustRoots(self.certificates)
        gateway = await runGateway(
            self,
            LISTEN_TLS
            + self.gatewayCertificate()
            + ["--backend", f"tls:127.0.0.1:{mismatchedPort}:trustRoots={roots}"]
            + ["--backend", f"tls:localhost:{untrustedPort}:trustRoots={roots}"],
        )
        client = await self.handshake(gateway.port())
        await deferToThread(client.send, b"secret\n")
        received, end = await deferToThread(client.receiveAll)
        self.assertEqual(received, b"")
        client.close()
        await gateway.logged("backend_unavailable")
        log = gateway.log()
        self.assertIn(
            f"backend tls:127.0.0.1:{mismatchedPort} connect failed: VerificationError",
            log,
        )
        self.assertIn(
            f"backend tls:localhost:{untrustedPort} connect failed: Error", log
        )
        self.assertIn("certificate verify failed", log)
        for backend in (mismatched, untrusted):
            await backend.allClosed()
            self.assertEqual(backend.received, [])
            self.assertNotIn(b"secret", b"".join(backend.raw))


class ALPNTests(TLSTestCase):
    """
    Clients that offer ALPN, as browsers, curl, Go and Java clients do.
    """

    async def sClient(self, port: int, *options: str) -> subprocess.CompletedProcess:
        """
        C{openssl s_client -quiet}: it sends two lines, prints the replies,
        and ends when the gateway's idle timeout closes the connection.
        """
        command = [
            _which("openssl"),
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            NAME,
            "-CAfile",
            self.certificates.caFile,
            "-verify_return_error",
            *options,
        ]
        return await deferToThread(
            subprocess.run,
            command,
            input=b"a\nb\n",
            capture_output=True,
            timeout=DEADLINE,
        )

    async def test_offerServed(self):
        """
        Without --tls-alpn, an ALPN offer is served as if none was made:
        openssl s_client -alpn and a Python client offering h2 and http/1.1.
        """
        backend, gateway = await self.tlsGateway(["--idle-timeout", IDLE_TIMEOUT])
        run = await self.sClient(gateway.port(), "-alpn", "http/1.1", "-quiet")
        self.assertEqual(run.stdout, b"A\nB\n", run.stderr)
        context = self.certificates.context()
        context.set_alpn_protocols(["h2", "http/1.1"])
        client = await self.handshake(gateway.port(), context=context)
        self.assertIsNone(client.tls.selected_alpn_protocol())
        await deferToThread(client.send, b"hi\n")
        self.assertEqual(await deferToThread(client.receive, 3), b"HI\n")

    async def test_selected(self):
        """
        With --tls-alpn, the first of the client's offers in that list is
        selected; a client offering none of them is refused with the
        no_application_protocol alert, and never reaches the backend.
        """
        backend, gateway = await self.tlsGateway(
            ["--tls-alpn", "x-gateway", "--tls-alpn", "http/1.1"]
            + ["--idle-timeout", IDLE_TIMEOUT]
        )
        refused = await self.sClient(gateway.port(), "-alpn", "h2", "-brief")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn(b"no application protocol", refused.stderr)
        await untilSample(
            gateway, 1, "gateway_tls_handshake_failures_total", listener=LISTENER
        )
        self.assertEqual(backend.accepted, 0)

        context = self.certificates.context()
        context.set_alpn_protocols(["h2", "http/1.1", "x-gateway"])
        client = await self.handshake(gateway.port(), context=context)
        self.assertEqual(client.tls.selected_alpn_protocol(), "http/1.1")
        await deferToThread(client.send, b"hi\n")
        self.assertEqual(await deferToThread(client.receive, 3), b"HI\n")
        # A client that offers none is served.
        client = await self.handshake(gateway.port())
        self.assertIsNone(client.tls.selected_alpn_protocol())

    async def test_badName(self):
        """
        An --tls-alpn value that is no protocol name ends twistd at start-up,
        naming the option.
        """
        process = await runToEnd(
            LISTEN_TLS + self.gatewayCertificate() + ["--tls-alpn", ""]
        )
        self.assertNotEqual(process.exitCode, 0)
        self.assertIn(b"--tls-alpn", process.output + process.errors)


def _which(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    raise SkipTest(f"{' or '.join(names)} is not installed")


class ToolTests(TLSTestCase):
    """
    Independent TLS implementations against the gateway.
    """

    async def test_opensslClient(self):
        """
        openssl s_client completes a verified handshake; with -quiet it
        never sends close_notify, so it prints the replies and waits until
        the gateway's idle timeout ends the connection.
        """
        openssl = _which("openssl")
        backend, gateway = await self.tlsGateway(["--idle-timeout", IDLE_TIMEOUT])
        command = [
            openssl,
            "s_client",
            "-connect",
            f"127.0.0.1:{gateway.port()}",
            "-servername",
            NAME,
            "-CAfile",
            self.certificates.caFile,
            "-verify_return_error",
        ]
        brief = await deferToThread(
            subprocess.run,
            command + ["-brief"],
            input=b"",
            capture_output=True,
            timeout=DEADLINE,
        )
        self.assertEqual(brief.returncode, 0, brief.stderr)
        self.assertIn(b"Verification: OK", brief.stderr)
        quiet = await deferToThread(
            subprocess.run,
            command + ["-quiet"],
            input=b"a\nb\n",
            capture_output=True,
            timeout=DEADLINE,
        )
        self.assertEqual(quiet.stdout, b"A\nB\n")
        await gateway.logged("idle_timeout")

    async def test_testssl(self):
        """
        testssl finds no weak protocol or cipher offered: no SSLv2, SSLv3,
        TLS 1.0 or 1.1, no NULL, anonymous, EXPORT or LOW (RC4, DES) ciphers.
        """
        testssl = _which("testssl", "testssl.sh")
        gateway = await runGateway(self, LISTEN_TLS + self.gatewayCertificate())
        report = os.path.abspath(self.mktemp())
        command = [
            testssl,
            "--protocols",
            "--std",
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--nodns",
            "none",
            "--jsonfile",
            report,
            f"127.0.0.1:{gateway.port()}",
        ]
        # Its service detection waits this long (5 s by default) for an
        # HTTP answer that a line-echoing service never gives.
        env = dict(os.environ, HEADER_MAXSLEEP="1")
        run = await deferToThread(
            subprocess.run,
            command,
            capture_output=True,
            timeout=TESTSSL_DEADLINE,
            env=env,
        )
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        with open(report) as f:
            findings = {finding["id"]: finding["finding"] for finding in json.load(f)}
        weak = [
            "SSLv2",
            "SSLv3",
            "TLS1",
            "TLS1_1",
            "cipherlist_NULL",
            "cipherlist_aNULL",
            "cipherlist_EXPORT",
            "cipherlist_LOW",
        ]
        self.assertEqual(
            {name: findings.get(name) for name in weak},
            {name: "not offered" for name in weak},
        )
        # It really talked to the gateway: the good ones are offered.
        self.assertTrue(findings["TLS1_2"].startswith("offered"), findings)
        self.assertTrue(findings["TLS1_3"].startswith("offered"), findings)
        self.assertEqual(findings["cipherlist_STRONG"], "offered")
