"""
Tests for L{gateway.tls}: loading and checking the TLS files, choosing a
certificate by SNI, the OpenSSL settings, real handshakes over loopback TCP,
and reloading.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from dataclasses import dataclass

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL, crypto
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway import halfclosetls
from gateway import tls as tlsModule
from gateway.tls import (
    NoApplicationProtocol,
    ReloadableServerTLS,
    TLSError,
    connectionInfo,
    failureReason,
    loadServerTLS,
    parseALPN,
    wrapFactory,
)
from tests.e2e import DEADLINE
from tests.tlsclient import CLOSE_NOTIFY, TLSClient, rawReceiveAll


@dataclass
class _Written:
    """
    A server or client certificate written to disk.
    """

    certFile: str
    keyFile: str
    certificate: x509.Certificate
    leaf: trustme.LeafCert


class _PKI:
    """
    A root CA and an intermediate that issues the server certificates, a
    separate CA for client certificates, and a directory to write them to.
    """

    def __init__(self, directory: str) -> None:
        os.makedirs(directory)
        self.directory = directory
        self.ca = trustme.CA()
        self.intermediate = self.ca.create_child_ca()
        self.clientCA = trustme.CA()

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def write(self, name: str, data: bytes) -> str:
        path = self.path(name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def writeLeaf(self, name: str, leaf: trustme.LeafCert) -> _Written:
        """
        Write C{leaf} as C{name}.crt (leaf then chain) and C{name}.key.
        """
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return _Written(
            certFile=self.write(name + ".crt", chain),
            keyFile=self.write(name + ".key", leaf.private_key_pem.bytes()),
            certificate=x509.load_pem_x509_certificate(chain),
            leaf=leaf,
        )

    def server(self, name: str, *identities: str) -> _Written:
        """
        Issue a server certificate from the intermediate and write it.
        """
        return self.writeLeaf(name, self.intermediate.issue_cert(*identities))

    def client(self, name: str, issuer: trustme.CA | None = None) -> _Written:
        """
        Issue a client certificate (from the client CA unless C{issuer}).
        """
        issuer = self.clientCA if issuer is None else issuer
        return self.writeLeaf(name, issuer.issue_cert(name + ".client.example"))

    def writeClientCA(self, ca: trustme.CA | None = None) -> str:
        ca = self.clientCA if ca is None else ca
        return self.write("client-ca.pem", ca.cert_pem.bytes())


def _combined(pki: _PKI, written: _Written, name: str) -> str:
    """
    Write C{written}'s certificate chain and key into one file.
    """
    return pki.write(name, written.leaf.private_key_and_cert_chain_pem.bytes())


class LoadTests(SynchronousTestCase):
    """
    L{loadServerTLS} reads certificates, chains and keys, and refuses files it
    cannot use with one line naming the option and the file.
    """

    def setUp(self) -> None:
        self.pki = _PKI(self.mktemp())
        self.gw = self.pki.server("gw", "gw.example")
        self.other = self.pki.server("other", "other.example", "*.wild.example")

    def assertTLSError(self, message: str, *args: object, **kwargs: object) -> None:
        error = self.assertRaises(TLSError, loadServerTLS, *args, **kwargs)
        self.assertEqual(str(error), message)

    def test_load(self) -> None:
        """
        Certificates are paired with keys in order; each keeps its chain and
        its DNS names; the first is the default.
        """
        tls = loadServerTLS(
            [self.gw.certFile, self.other.certFile],
            [self.gw.keyFile, self.other.keyFile],
            None,
            "1.2",
        )
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, tls))
        self.assertEqual(
            [(c.certFile, c.keyFile) for c in tls.certificates],
            [
                (self.gw.certFile, self.gw.keyFile),
                (self.other.certFile, self.other.keyFile),
            ],
        )
        self.assertEqual(tls.certificates[0].certificate, self.gw.certificate)
        self.assertEqual(tls.certificates[1].certificate, self.other.certificate)
        intermediate = x509.load_pem_x509_certificate(
            self.pki.intermediate.cert_pem.bytes()
        )
        self.assertEqual(tls.certificates[0].chain, (intermediate,))
        self.assertEqual(tls.certificates[0].dnsNames, ("gw.example",))
        self.assertEqual(
            tls.certificates[1].dnsNames, ("other.example", "*.wild.example")
        )
        self.assertEqual(tls.clientCAs, ())
        self.assertEqual(tls.minVersion, TLSVersion.TLSv1_2)

    def test_keyInCertFile(self) -> None:
        """
        Without C{--tls-key}, the key is read from the certificate file.
        """
        combined = _combined(self.pki, self.gw, "gw.pem")
        tls = loadServerTLS([combined], [], None, "1.2")
        self.assertEqual(tls.certificates[0].keyFile, combined)
        self.assertEqual(tls.certificates[0].certificate, self.gw.certificate)

    def test_fewerKeysThanCertificates(self) -> None:
        """
        Certificates past the last C{--tls-key} hold their own key.
        """
        combined = _combined(self.pki, self.other, "other.pem")
        tls = loadServerTLS([self.gw.certFile, combined], [self.gw.keyFile])
        self.assertEqual(
            [c.keyFile for c in tls.certificates], [self.gw.keyFile, combined]
        )

    def test_clientCA(self) -> None:
        """
        The client CA file's certificates are kept.
        """
        caFile = self.pki.writeClientCA()
        tls = loadServerTLS([self.gw.certFile], [self.gw.keyFile], caFile)
        self.assertEqual(
            tls.clientCAs,
            (x509.load_pem_x509_certificate(self.pki.clientCA.cert_pem.bytes()),),
        )

    def test_minVersion13(self) -> None:
        """
        C{"1.3"} raises the minimum to TLS 1.3.
        """
        tls = loadServerTLS([self.gw.certFile], [self.gw.keyFile], None, "1.3")
        self.assertEqual(tls.minVersion, TLSVersion.TLSv1_3)

    def test_missingCertFile(self) -> None:
        missing = self.pki.path("missing.crt")
        self.assertTLSError(
            f"--tls-cert {missing}: cannot read: No such file or directory",
            [missing],
            [self.gw.keyFile],
        )

    def test_missingKeyFile(self) -> None:
        missing = self.pki.path("missing.key")
        self.assertTLSError(
            f"--tls-key {missing}: cannot read: No such file or directory",
            [self.gw.certFile],
            [missing],
        )

    def test_missingClientCAFile(self) -> None:
        missing = self.pki.path("missing-ca.pem")
        self.assertTLSError(
            f"--tls-client-ca {missing}: cannot read: No such file or directory",
            [self.gw.certFile],
            [self.gw.keyFile],
            missing,
        )

    def test_directory(self) -> None:
        self.assertTLSError(
            f"--tls-cert {self.pki.directory}: cannot read: Is a directory",
            [self.pki.directory],
            [self.gw.keyFile],
        )

    def test_garbageCertFile(self) -> None:
        garbage = self.pki.write("garbage.crt", b"\x00\xffnot a certificate\n")
        self.assertTLSError(
            f"--tls-cert {garbage}: not a PEM file", [garbage], [self.gw.keyFile]
        )

    def test_garbageKeyFile(self) -> None:
        garbage = self.pki.write("garbage.key", b"not a key\n")
        self.assertTLSError(
            f"--tls-key {garbage}: not a PEM file", [self.gw.certFile], [garbage]
        )

    def test_garbageClientCAFile(self) -> None:
        garbage = self.pki.write("garbage-ca.pem", b"")
        self.assertTLSError(
            f"--tls-client-ca {garbage}: not a PEM file",
            [self.gw.certFile],
            [self.gw.keyFile],
            garbage,
        )

    def test_corruptCertificate(self) -> None:
        """
        A PEM block labelled as a certificate that does not parse is refused.
        """
        corrupt = self.pki.write(
            "corrupt.crt",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        error = self.assertRaises(TLSError, loadServerTLS, [corrupt], [self.gw.keyFile])
        self.assertTrue(
            str(error).startswith(f"--tls-cert {corrupt}: bad certificate: "),
            str(error),
        )
        self.assertNotIn("\n", str(error))

    def test_noCertificate(self) -> None:
        """
        A PEM file that holds only a key is not a certificate file.
        """
        self.assertTLSError(
            f"--tls-cert {self.gw.keyFile}: no certificate found",
            [self.gw.keyFile],
            [self.gw.keyFile],
        )

    def test_noKeyInCertFile(self) -> None:
        """
        Without C{--tls-key}, a certificate file without a key is refused.
        """
        self.assertTLSError(
            f"--tls-cert {self.gw.certFile}: no private key found"
            " (put it in this file or give --tls-key)",
            [self.gw.certFile],
            [],
        )

    def test_noKeyInKeyFile(self) -> None:
        self.assertTLSError(
            f"--tls-key {self.other.certFile}: no private key found",
            [self.gw.certFile],
            [self.other.certFile],
        )

    def test_wrongKey(self) -> None:
        self.assertTLSError(
            f"--tls-key {self.other.keyFile}: key does not match certificate"
            f" {self.gw.certFile}",
            [self.gw.certFile],
            [self.other.keyFile],
        )

    def test_wrongKeyInCertFile(self) -> None:
        mixed = self.pki.write(
            "mixed.pem",
            self.gw.leaf.cert_chain_pems[0].bytes()
            + self.other.leaf.private_key_pem.bytes(),
        )
        self.assertTLSError(
            f"--tls-cert {mixed}: key does not match certificate {mixed}",
            [mixed],
            [],
        )

    def test_wrongKeyForSecondCertificate(self) -> None:
        """
        Keys pair with certificates in order.
        """
        self.assertTLSError(
            f"--tls-key {self.gw.keyFile}: key does not match certificate"
            f" {self.other.certFile}",
            [self.gw.certFile, self.other.certFile],
            [self.gw.keyFile, self.gw.keyFile],
        )

    def test_encryptedKey(self) -> None:
        key = load_pem_private_key(self.gw.leaf.private_key_pem.bytes(), None)
        encrypted = self.pki.write(
            "encrypted.key",
            key.private_bytes(
                Encoding.PEM,
                PrivateFormat.PKCS8,
                BestAvailableEncryption(b"secret"),
            ),
        )
        self.assertTLSError(
            f"--tls-key {encrypted}: the private key is encrypted; not supported",
            [self.gw.certFile],
            [encrypted],
        )

    def test_clientCAWithoutCertificate(self) -> None:
        self.assertTLSError(
            f"--tls-client-ca {self.gw.keyFile}: no certificate found",
            [self.gw.certFile],
            [self.gw.keyFile],
            self.gw.keyFile,
        )

    def test_badMinVersion(self) -> None:
        for bad in ["1.0", "1.1", "1.4", "", "TLSv1.3", "1.3 "]:
            self.assertTLSError(
                f"--tls-min-version {bad!r}: must be 1.2 or 1.3",
                [self.gw.certFile],
                [self.gw.keyFile],
                None,
                bad,
            )

    def test_noCertificates(self) -> None:
        self.assertTLSError("--tls-cert is required for TLS", [], [])

    def test_moreKeysThanCertificates(self) -> None:
        self.assertTLSError(
            "--tls-key given 2 times, more than --tls-cert (1)",
            [self.gw.certFile],
            [self.gw.keyFile, self.other.keyFile],
        )


class SelectionTests(SynchronousTestCase):
    """
    L{ServerTLS.certificateFor} picks the certificate for a server name.
    """

    def setUp(self) -> None:
        pki = _PKI(self.mktemp())
        self.gw = pki.server("gw", "gw.example")
        self.other = pki.server("other", "other.example", "*.wild.example")
        self.exact = pki.server("exact", "exact.wild.example", "gw.example")
        self.tls = loadServerTLS(
            [self.gw.certFile, self.other.certFile, self.exact.certFile],
            [self.gw.keyFile, self.other.keyFile, self.exact.keyFile],
        )

    def assertChosen(self, serverName: str | None, expected: _Written) -> None:
        self.assertEqual(
            self.tls.certificateFor(serverName).certFile,
            expected.certFile,
            serverName,
        )

    def test_exact(self) -> None:
        self.assertChosen("gw.example", self.gw)
        self.assertChosen("other.example", self.other)

    def test_caseAndTrailingDot(self) -> None:
        self.assertChosen("OTHER.Example.", self.other)

    def test_wildcard(self) -> None:
        self.assertChosen("a.wild.example", self.other)

    def test_wildcardMatchesOneLabel(self) -> None:
        self.assertChosen("b.a.wild.example", self.gw)
        self.assertChosen("wild.example", self.gw)
        self.assertChosen(".wild.example", self.gw)

    def test_exactBeforeWildcard(self) -> None:
        """
        An exact name wins over a wildcard listed earlier.
        """
        self.assertChosen("exact.wild.example", self.exact)

    def test_firstListedWins(self) -> None:
        """
        When two certificates have the same name, the first one listed wins.
        """
        self.assertChosen("gw.example", self.gw)

    def test_defaultIsFirst(self) -> None:
        self.assertChosen(None, self.gw)
        self.assertChosen("", self.gw)
        self.assertChosen("unknown.example", self.gw)


# More than any one handshake flight in these tests.
_FLIGHT_BYTES = 65536


def _connectInMemory(server: SSL.Connection, client: SSL.Connection) -> None:
    """
    Move bytes between two connections until neither has more to say
    (L{_handshake}); a handshake that fails raises its error.
    """
    for error in _handshake(server, client):
        if error is not None:
            raise error


class SettingsTests(SynchronousTestCase):
    """
    The OpenSSL settings every connection gets.
    """

    def setUp(self) -> None:
        self.pki = _PKI(self.mktemp())
        self.gw = self.pki.server("gw", "gw.example")

    def connection(self, minVersion: str = "1.2") -> SSL.Connection:
        tls = loadServerTLS([self.gw.certFile], [self.gw.keyFile], None, minVersion)
        return tls.serverConnectionForTLS(None)

    def test_options(self) -> None:
        """
        No compression, no renegotiation, nothing older than TLS 1.2.
        """
        # Adding no option returns the options in force.
        options = self.connection().set_options(0)
        for name in [
            "OP_NO_COMPRESSION",
            "OP_NO_RENEGOTIATION",
            "OP_NO_SSLv3",
            "OP_NO_TLSv1",
            "OP_NO_TLSv1_1",
        ]:
            self.assertTrue(options & getattr(SSL, name), name)
        self.assertFalse(options & SSL.OP_NO_TLSv1_2)

    def test_options13(self) -> None:
        options = self.connection("1.3").set_options(0)
        self.assertTrue(options & SSL.OP_NO_TLSv1_2)
        self.assertFalse(options & SSL.OP_NO_TLSv1_3)

    def test_ciphers(self) -> None:
        """
        No weak cipher is ever offered.
        """
        ciphers = self.connection().get_cipher_list()
        self.assertTrue(ciphers)
        for cipher in ciphers:
            for weak in ["RC4", "NULL", "EXP", "MD5", "DES-CBC-", "ADH", "AECDH"]:
                self.assertNotIn(weak, cipher)

    def test_noRenegotiation(self) -> None:
        """
        A TLS 1.2 client that asks to renegotiate is refused.  (OpenSSL 3
        refuses it by default too; L{test_options} checks that the option
        saying so is set all the same.)
        """
        server = self.connection()
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        client = SSL.Connection(context, None)
        _connectInMemory(server, client)
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.2")

        # The client's renegotiation hello, the server's refusal (a
        # no_renegotiation alert), then the client giving up.
        self.assertTrue(client.renegotiate())
        self.assertRaises(SSL.WantReadError, client.do_handshake)
        server.bio_write(client.bio_read(_FLIGHT_BYTES))
        self.assertRaises(SSL.WantReadError, server.recv, 1024)
        client.bio_write(server.bio_read(_FLIGHT_BYTES))
        error = self.assertRaises(SSL.Error, client.do_handshake)
        self.assertIn("no renegotiation", str(error))


@implementer(IOpenSSLClientConnectionCreator)
class _ClientTLS:
    """
    Client connections that send C{serverName} (if any) as SNI and check the
    server's chain, not its name, so a test can see what any name gets.
    """

    def __init__(self, context: SSL.Context, serverName: str | None) -> None:
        self._context = context
        self._serverName = serverName

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._serverName is not None:
            connection.set_tlsext_host_name(self._serverName.encode("ascii"))
        return connection


def _trustRoot(ca: trustme.CA) -> Certificate:
    return Certificate.loadPEM(ca.cert_pem.bytes())


def _clientTLS(
    pki: _PKI,
    serverName: str | None = None,
    clientCertificate: _Written | None = None,
    **options: object,
) -> _ClientTLS:
    """
    A client that trusts C{pki}'s root, optionally with a client certificate.
    """
    if clientCertificate is not None:
        leaf = clientCertificate.leaf
        options.update(
            certificate=clientCertificate.certificate,
            privateKey=load_pem_private_key(leaf.private_key_pem.bytes(), None),
            # The intermediates, if any, as a client sends them.
            extraCertChain=[
                x509.load_pem_x509_certificate(blob.bytes())
                for blob in leaf.cert_chain_pems[1:]
            ],
        )
    certificateOptions = CertificateOptions(trustRoot=_trustRoot(pki.ca), **options)
    return _ClientTLS(certificateOptions.getContext(), serverName)


@implementer(IHandshakeListener)
class _Client(Protocol):
    """
    Records the handshake and what the server echoes back.
    """

    def __init__(self) -> None:
        self.handshake: Deferred[_Client] = Deferred()
        self.lost: Deferred[BaseException] = Deferred()
        self.received = b""
        self._echo: tuple[int, Deferred[bytes]] | None = None

    def handshakeCompleted(self) -> None:
        self.handshake.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._echo is not None and len(self.received) >= self._echo[0]:
            d = self._echo[1]
            self._echo = None
            d.callback(self.received)

    def connectionLost(self, reason: Failure) -> None:
        if not self.handshake.called:
            self.handshake.errback(reason)
        if self._echo is not None:
            self._echo[1].errback(reason)
        self.lost.callback(reason.value)

    def echo(self, data: bytes) -> Deferred[bytes]:
        """
        Send C{data}; fires with everything received once it is echoed.
        """
        self.received = b""
        self._echo = (len(data), Deferred())
        self.transport.write(data)
        return self._echo[1]

    def peerCertificate(self) -> x509.Certificate:
        return self.transport.getPeerCertificate().to_cryptography()


@implementer(IHandshakeListener)
class _EchoServer(Protocol):
    """
    Echoes, and records whether its handshake completed and why it ended.
    """

    handshakeDone = False
    reason: Failure | None = None

    def connectionMade(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.factory.connections.append(self)

    def handshakeCompleted(self) -> None:
        self.handshakeDone = True

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason
        self.lost.callback(None)


class _LoopbackTestCase(TestCase):
    """
    Real TLS over loopback TCP: a server on port 0, clients that connect to it.
    Every connection is closed and its server side seen to end before a test
    ends.
    """

    def setUp(self) -> None:
        self.pki = _PKI(self.mktemp())
        self.gw = self.pki.server("gw", "gw.example")
        self.other = self.pki.server("other", "other.example", "*.wild.example")

    def listen(self, creator: IOpenSSLServerConnectionCreator) -> list[_EchoServer]:
        """
        Serve echo over TLS with C{creator}; returns the server protocols as
        they come.
        """
        factory = ServerFactory.forProtocol(_EchoServer)
        factory.connections = []
        wrapped = wrapFactory(creator, factory, reactor)
        self.assertIsInstance(wrapped, TLSMemoryBIOFactory)
        self.port = reactor.listenTCP(0, wrapped, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(lambda: DeferredList([c.lost for c in factory.connections]))
        return factory.connections

    async def connect(self, clientTLS: IOpenSSLClientConnectionCreator) -> _Client:
        """
        Connect a client; the TLS handshake may still be under way.
        """
        endpoint = wrapClientTLS(
            clientTLS,
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port),
        )
        client = await endpoint.connect(Factory.forProtocol(_Client))
        self.addCleanup(self.disconnect, client)
        return client

    def disconnect(self, client: _Client) -> Deferred[BaseException]:
        if not client.lost.called:
            client.transport.abortConnection()
        return client.lost

    async def handshake(self, clientTLS: IOpenSSLClientConnectionCreator) -> _Client:
        """
        Connect a client and wait for its handshake to complete.
        """
        client = await self.connect(clientTLS)
        return await client.handshake

    async def refused(
        self, clientTLS: IOpenSSLClientConnectionCreator, servers: list[_EchoServer]
    ) -> tuple[BaseException, _EchoServer]:
        """
        Connect a client that the server must refuse during the handshake.

        The client writes once its own handshake is done (with TLS 1.3 a
        client finishes before the server has checked its certificate), and
        must get nothing back.  Returns the client's error and the server's
        protocol, which must never have finished its handshake.
        """
        client = await self.connect(clientTLS)
        try:
            await client.handshake
        except SSL.Error:
            pass
        else:
            client.transport.write(b"must not arrive")
        error = await client.lost
        await servers[-1].lost
        self.assertEqual(client.received, b"")
        self.assertFalse(servers[-1].handshakeDone)
        self.assertIsInstance(servers[-1].reason.value, SSL.Error)
        return error, servers[-1]


class HandshakeTests(_LoopbackTestCase):
    """
    What clients get from a L{ServerTLS} over real connections.
    """

    def serve(
        self, clientCAFile: str | None = None, minVersion: str = "1.2"
    ) -> list[_EchoServer]:
        return self.listen(
            loadServerTLS(
                [self.gw.certFile, self.other.certFile],
                [self.gw.keyFile, self.other.keyFile],
                clientCAFile,
                minVersion,
            )
        )

    async def test_chainVerifies(self) -> None:
        """
        The server sends its chain, so a client that trusts only the root
        verifies it; data flows both ways.
        """
        self.serve()
        client = await self.handshake(_clientTLS(self.pki))
        verified = client.transport.getHandle().get_verified_chain()
        self.assertEqual(
            [c.to_cryptography() for c in verified],
            [
                self.gw.certificate,
                x509.load_pem_x509_certificate(self.pki.intermediate.cert_pem.bytes()),
                x509.load_pem_x509_certificate(self.pki.ca.cert_pem.bytes()),
            ],
        )
        self.assertEqual(await client.echo(b"ping"), b"ping")

    async def test_hostnameVerified(self) -> None:
        """
        L{optionsForClientTLS} (service_identity) accepts each name the
        certificates cover, wildcards included.
        """
        self.serve()
        for name, expected in [
            ("gw.example", self.gw),
            ("other.example", self.other),
            ("any.wild.example", self.other),
        ]:
            client = await self.handshake(
                optionsForClientTLS(name, trustRoot=_trustRoot(self.pki.ca))
            )
            self.assertEqual(client.peerCertificate(), expected.certificate, name)
            self.assertEqual(await client.echo(b"ping"), b"ping")

    async def test_unknownServerName(self) -> None:
        """
        A name no certificate covers gets the first certificate.
        """
        self.serve()
        client = await self.handshake(_clientTLS(self.pki, "unknown.example"))
        self.assertEqual(client.peerCertificate(), self.gw.certificate)

    async def test_noServerName(self) -> None:
        """
        A client that sends no name gets the first certificate.
        """
        self.serve()
        client = await self.handshake(_clientTLS(self.pki, None))
        self.assertEqual(client.peerCertificate(), self.gw.certificate)

    async def test_tls12Accepted(self) -> None:
        """
        TLS 1.2 is accepted by default.
        """
        self.serve()
        client = await self.handshake(
            _clientTLS(
                self.pki, "other.example", lowerMaximumSecurityTo=TLSVersion.TLSv1_2
            )
        )
        connection = client.transport.getHandle()
        self.assertEqual(connection.get_protocol_version_name(), "TLSv1.2")
        self.assertEqual(client.peerCertificate(), self.other.certificate)

    async def test_tls12RefusedWhenMinimumIs13(self) -> None:
        servers = self.serve(minVersion="1.3")
        error, server = await self.refused(
            _clientTLS(self.pki, lowerMaximumSecurityTo=TLSVersion.TLSv1_2), servers
        )
        self.assertIn("unsupported protocol", str(server.reason.value))

    async def test_tls13AcceptedWhenMinimumIs13(self) -> None:
        self.serve(minVersion="1.3")
        client = await self.handshake(_clientTLS(self.pki, "other.example"))
        connection = client.transport.getHandle()
        self.assertEqual(connection.get_protocol_version_name(), "TLSv1.3")
        self.assertEqual(client.peerCertificate(), self.other.certificate)

    async def test_tls11Refused(self) -> None:
        """
        The server itself refuses TLS 1.1, from a client willing to use it
        with any cipher.
        """
        servers = self.serve()
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_1_VERSION)
        context.set_max_proto_version(SSL.TLS1_1_VERSION)
        context.set_cipher_list(b"ALL:@SECLEVEL=0")
        error, server = await self.refused(_ClientTLS(context, None), servers)
        self.assertIn("unsupported protocol", str(server.reason.value))

    async def test_clientWithoutCertificateRefused(self) -> None:
        """
        With a client CA, a client without a certificate never gets a
        completed handshake, on the default certificate or one chosen by SNI.
        """
        servers = self.serve(self.pki.writeClientCA())
        for serverName in [None, "other.example"]:
            for version in [TLSVersion.TLSv1_2, TLSVersion.TLSv1_3]:
                await self.refused(
                    _clientTLS(self.pki, serverName, lowerMaximumSecurityTo=version),
                    servers,
                )

    async def test_clientWithUntrustedCertificateRefused(self) -> None:
        """
        A client certificate from another CA is refused.
        """
        servers = self.serve(self.pki.writeClientCA())
        stranger = self.pki.client("stranger", issuer=self.pki.ca)
        error, server = await self.refused(
            _clientTLS(self.pki, "other.example", stranger), servers
        )
        self.assertIn("certificate verify failed", str(server.reason.value))

    async def test_clientWithCertificateAccepted(self) -> None:
        """
        A client certificate from the client CA is accepted, and the server
        sees it.
        """
        servers = self.serve(self.pki.writeClientCA())
        alice = self.pki.client("alice")
        for serverName in [None, "other.example"]:
            client = await self.handshake(_clientTLS(self.pki, serverName, alice))
            self.assertEqual(await client.echo(b"ping"), b"ping")
            peer = servers[-1].transport.getPeerCertificate().to_cryptography()
            self.assertEqual(peer, alice.certificate)
            self.assertTrue(servers[-1].handshakeDone)


class ReloadTests(_LoopbackTestCase):
    """
    L{ReloadableServerTLS.reload} re-reads the files for new connections.
    """

    def reloadable(self, clientCAFile: str | None = None) -> ReloadableServerTLS:
        return ReloadableServerTLS(
            [self.gw.certFile], [self.gw.keyFile], clientCAFile, "1.2"
        )

    async def test_reloadServesNewCertificate(self) -> None:
        """
        After a reload new connections get the new certificate; an open
        connection keeps working with the old one.
        """
        creator = self.reloadable()
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, creator))
        self.listen(creator)
        old = await self.handshake(_clientTLS(self.pki))
        self.assertEqual(old.peerCertificate(), self.gw.certificate)

        renewed = self.pki.server("gw", "gw.example")
        self.assertNotEqual(
            renewed.certificate.serial_number, self.gw.certificate.serial_number
        )
        creator.reload()

        new = await self.handshake(_clientTLS(self.pki))
        self.assertEqual(new.peerCertificate(), renewed.certificate)
        self.assertEqual(await new.echo(b"new"), b"new")
        self.assertEqual(await old.echo(b"old"), b"old")
        self.assertEqual(old.peerCertificate(), self.gw.certificate)

    async def test_failedReloadKeepsOldMaterial(self) -> None:
        """
        A reload that cannot read a file raises L{TLSError} naming it and
        leaves the material in use as it was.
        """
        creator = self.reloadable()
        current = creator.current
        self.listen(creator)
        self.pki.write("gw.crt", b"garbage\n")

        error = self.assertRaises(TLSError, creator.reload)
        self.assertEqual(str(error), f"--tls-cert {self.gw.certFile}: not a PEM file")
        self.assertIs(creator.current, current)
        client = await self.handshake(_clientTLS(self.pki))
        self.assertEqual(client.peerCertificate(), self.gw.certificate)

    def test_failedReloadWrongKey(self) -> None:
        """
        A certificate replaced without its key is refused on reload.
        """
        creator = self.reloadable()
        current = creator.current
        self.pki.write("gw.crt", self.other.leaf.cert_chain_pems[0].bytes())
        error = self.assertRaises(TLSError, creator.reload)
        self.assertEqual(
            str(error),
            f"--tls-key {self.gw.keyFile}: key does not match certificate"
            f" {self.gw.certFile}",
        )
        self.assertIs(creator.current, current)

    async def test_reloadClientCA(self) -> None:
        """
        A reload reads the client CA file again: clients of the old CA are
        refused, clients of the new one accepted.
        """
        creator = self.reloadable(self.pki.writeClientCA())
        servers = self.listen(creator)
        alice = self.pki.client("alice")
        client = await self.handshake(_clientTLS(self.pki, None, alice))
        self.assertEqual(await client.echo(b"ping"), b"ping")

        newCA = trustme.CA()
        self.pki.writeClientCA(newCA)
        creator.reload()

        await self.refused(_clientTLS(self.pki, None, alice), servers)
        bob = self.pki.client("bob", issuer=newCA)
        client = await self.handshake(_clientTLS(self.pki, None, bob))
        self.assertEqual(await client.echo(b"ping"), b"ping")


@implementer(IHandshakeListener)
class _Server(Protocol):
    """
    Records what it receives and how it ends; what it does once the
    handshake is done, or once the client has ended its side, is the
    factory's C{onHandshake} and C{onReadLost}.
    """

    reason: Failure | None = None

    def connectionMade(self) -> None:
        self.received = b""
        self.readLost = False
        self.lost: Deferred[None] = Deferred()
        self.factory.connections.append(self)

    def handshakeCompleted(self) -> None:
        self.factory.onHandshake(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason
        self.lostAt = time.monotonic()
        self.lost.callback(None)


@implementer(IHalfCloseableProtocol)
class _HalfCloseServer(_Server):
    def readConnectionLost(self) -> None:
        self.readLost = True
        self.factory.onReadLost(self)

    def writeConnectionLost(self) -> None:
        pass


class HalfCloseTests(TestCase):
    """
    L{HalfCloseableTLSProtocol}: each side ends its own direction with
    close_notify, over real sockets, with a client that can half-close
    (L{tests.tlsclient.TLSClient}).
    """

    def setUp(self) -> None:
        self.pki = _PKI(self.mktemp())
        self.gw = self.pki.server("gw", "gw.example")

    def listen(
        self, protocol: type[_Server], onHandshake=None, onReadLost=None
    ) -> list[_Server]:
        factory = ServerFactory.forProtocol(protocol)
        factory.connections = []
        factory.onHandshake = onHandshake or (lambda server: None)
        factory.onReadLost = onReadLost or (lambda server: None)
        creator = loadServerTLS([self.gw.certFile], [self.gw.keyFile])
        port = reactor.listenTCP(
            0, wrapFactory(creator, factory, reactor), interface="127.0.0.1"
        )
        self.port = port.getHost().port
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: DeferredList([c.lost for c in factory.connections]))
        return factory.connections

    async def client(self) -> TLSClient:
        context = ssl.create_default_context(
            cadata=self.pki.ca.cert_pem.bytes().decode("ascii")
        )
        client = await deferToThread(TLSClient, context, "gw.example", self.port)
        self.addCleanup(client.close)
        return await deferToThread(client.handshake)

    async def test_clientCloseNotify(self) -> None:
        """
        The client's close_notify reaches a half-closeable protocol as
        C{readConnectionLost}; what it writes after still reaches the
        client, then its own close_notify once it closes.
        """

        def answer(server: _Server) -> None:
            server.transport.write(b"reply to " + server.received)
            server.transport.loseConnection()

        servers = self.listen(_HalfCloseServer, onReadLost=answer)
        client = await self.client()
        await deferToThread(client.send, b"question")
        await deferToThread(client.closeNotify)
        received = await deferToThread(client.receiveAll)
        self.assertEqual(received, (b"reply to question", CLOSE_NOTIFY))
        await servers[0].lost
        self.assertTrue(servers[0].readLost)
        self.assertIsInstance(servers[0].reason.value, ConnectionDone)

    async def test_clientCloseNotifyAndFIN(self) -> None:
        """
        The same when a TCP FIN follows the client's close_notify.
        """

        def answer(server: _Server) -> None:
            server.transport.write(b"reply")
            server.transport.loseConnection()

        servers = self.listen(_HalfCloseServer, onReadLost=answer)
        client = await self.client()
        await deferToThread(client.closeNotify, True)
        received = await deferToThread(client.receiveAll)
        self.assertEqual(received, (b"reply", CLOSE_NOTIFY))
        await servers[0].lost
        self.assertTrue(servers[0].readLost)

    async def test_notHalfCloseable(self) -> None:
        """
        A protocol that cannot half-close gets Twisted's behaviour: the
        client's close_notify is answered at once and the connection ends.
        """
        servers = self.listen(_Server)
        client = await self.client()
        await deferToThread(client.closeNotify)
        received = await deferToThread(client.receiveAll)
        self.assertEqual(received, (b"", CLOSE_NOTIFY))
        await servers[0].lost
        self.assertIsInstance(servers[0].reason.value, ConnectionDone)

    async def test_loseWriteConnection(self) -> None:
        """
        C{loseWriteConnection} sends close_notify after what was written,
        and the server reads on until the client's close_notify.
        """

        def greet(server: _Server) -> None:
            server.transport.write(b"hello")
            server.transport.loseWriteConnection()

        servers = self.listen(
            _HalfCloseServer,
            onHandshake=greet,
            onReadLost=lambda server: server.transport.loseConnection(),
        )
        client = await self.client()
        received = await deferToThread(client.receiveAll)
        self.assertEqual(received, (b"hello", CLOSE_NOTIFY))
        await deferToThread(client.send, b"more")
        await deferToThread(client.closeNotify)
        self.assertEqual(await deferToThread(rawReceiveAll, client.socket), b"")
        await servers[0].lost
        self.assertEqual((servers[0].received, servers[0].readLost), (b"more", True))

    async def test_FINWithoutCloseNotify(self) -> None:
        """
        A TCP FIN with no close_notify cuts the TLS stream: the connection
        is lost, not half-closed.
        """
        servers = self.listen(_HalfCloseServer)
        client = await self.client()
        await deferToThread(client.send, b"cut")
        client.socket.shutdown(socket.SHUT_WR)
        await servers[0].lost
        self.assertEqual((servers[0].received, servers[0].readLost), (b"cut", False))
        self.assertIsInstance(servers[0].reason.value, ConnectionLost)

    async def test_closeNotifyNeverAnswered(self) -> None:
        """
        A client that never answers the server's close_notify (and keeps
        its socket open) does not keep the connection: the socket is closed
        L{CLOSE_NOTIFY_TIMEOUT} after C{loseConnection}, what was written
        first still delivered. (Twisted alone would wait for ever.)
        """
        self.patch(halfclosetls, "CLOSE_NOTIFY_TIMEOUT", 0.2)
        closedAt = []

        def close(server: _Server) -> None:
            server.transport.write(b"bye")
            server.transport.loseConnection()
            closedAt.append(time.monotonic())

        servers = self.listen(_HalfCloseServer, onHandshake=close)
        client = await self.client()
        # Reading the close_notify does not answer it.
        received = await deferToThread(client.receiveAll)
        self.assertEqual(received, (b"bye", CLOSE_NOTIFY))
        self.assertEqual(await deferToThread(rawReceiveAll, client.socket), b"")
        await servers[0].lost
        self.assertGreaterEqual(servers[0].lostAt - closedAt[0], 0.2)

    async def test_closeNotifyAnswered(self) -> None:
        """
        A client that answers close_notify ends the connection then, and
        the close timeout is cancelled (trial would find it left over). The
        answer is not news to the protocol that closed: no
        C{readConnectionLost}.
        """
        servers = self.listen(
            _HalfCloseServer, onHandshake=lambda s: s.transport.loseConnection()
        )
        client = await self.client()
        received = await deferToThread(client.receiveAll)
        self.assertEqual(received, (b"", CLOSE_NOTIFY))
        await deferToThread(client.closeNotify)
        await servers[0].lost
        self.assertIsInstance(servers[0].reason.value, ConnectionDone)
        self.assertFalse(servers[0].readLost)

    async def test_closeWhilePaused(self) -> None:
        """
        A protocol that closes while it has paused reading (as the proxy
        does until it has a backend) still reads the client's answer, and
        the connection ends then, not at the close timeout.
        """
        self.patch(halfclosetls, "CLOSE_NOTIFY_TIMEOUT", DEADLINE * 10)

        def pauseThenClose(server: _Server) -> None:
            server.transport.pauseProducing()
            server.transport.loseConnection()

        servers = self.listen(_HalfCloseServer, onHandshake=pauseThenClose)
        client = await self.client()
        received = await deferToThread(client.receiveAll)
        self.assertEqual(received, (b"", CLOSE_NOTIFY))
        await deferToThread(client.closeNotify)
        await servers[0].lost.addTimeout(DEADLINE, reactor)
        self.assertIsInstance(servers[0].reason.value, ConnectionDone)


def _handshake(
    server: SSL.Connection, client: SSL.Connection
) -> tuple[SSL.Error | None, SSL.Error | None]:
    """
    Move bytes between two connections until neither has more to say;
    returns the error each side's handshake ended with, if any.
    """
    server.set_accept_state()
    client.set_connect_state()
    errors: dict[SSL.Connection, SSL.Error | None] = {server: None, client: None}
    moved = True
    while moved:
        for connection in (client, server):
            if errors[connection] is None:
                try:
                    connection.do_handshake()
                except SSL.WantReadError:
                    pass
                except SSL.Error as e:
                    errors[connection] = e
        moved = False
        for source, destination in ((client, server), (server, client)):
            try:
                data = source.bio_read(_FLIGHT_BYTES)
            except SSL.WantReadError:
                continue
            destination.bio_write(data)
            moved = True
    return errors[server], errors[client]


def _clientContext(
    pki: _PKI,
    maxVersion: int | None = None,
    certificate: _Written | None = None,
    alpn: list[bytes] | None = None,
) -> SSL.Context:
    """
    A pyOpenSSL client context trusting C{pki}'s root.
    """
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_verify(SSL.VERIFY_PEER)
    store = context.get_cert_store()
    store.add_cert(crypto.X509.from_cryptography(_certificate(pki.ca)))
    if maxVersion is not None:
        context.set_max_proto_version(maxVersion)
    if certificate is not None:
        context.use_certificate_file(certificate.certFile)
        context.use_privatekey_file(certificate.keyFile)
    if alpn is not None:
        context.set_alpn_protos(alpn)
    return context


def _certificate(ca: trustme.CA) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.cert_pem.bytes())


def _client(context: SSL.Context, serverName: bytes | None = None) -> SSL.Connection:
    connection = SSL.Connection(context, None)
    if serverName is not None:
        connection.set_tlsext_host_name(serverName)
    return connection


class ALPNTests(SynchronousTestCase):
    """
    ALPN: an offer is ignored unless the server has protocols to select.
    """

    def setUp(self) -> None:
        self.pki = _PKI(self.mktemp())
        self.gw = self.pki.server("gw", "gw.example")
        self.other = self.pki.server("other", "other.example")

    def server(self, alpn: list[str] = ()) -> SSL.Connection:
        tls = loadServerTLS(
            [self.gw.certFile, self.other.certFile],
            [self.gw.keyFile, self.other.keyFile],
            alpn=alpn,
        )
        return tls.serverConnectionForTLS(None)

    def test_offerIgnored(self) -> None:
        """
        Without protocols to select, a client offering ALPN (any client
        order, with or without SNI) completes its handshake with none.
        """
        for serverName in [None, b"gw.example", b"other.example"]:
            for offer in [[b"http/1.1"], [b"h2", b"http/1.1"]]:
                client = _client(_clientContext(self.pki, alpn=offer), serverName)
                server = self.server()
                self.assertEqual(_handshake(server, client), (None, None))
                self.assertEqual(client.get_alpn_proto_negotiated(), b"")
                self.assertEqual(server.get_alpn_proto_negotiated(), b"")

    def test_selectedInClientOrder(self) -> None:
        """
        The first of the client's offers that the server has is selected,
        on the default certificate's context and on one chosen by SNI.
        """
        for serverName in [None, b"other.example"]:
            for offer, selected in [
                ([b"http/1.1"], b"http/1.1"),
                ([b"spdy/3", b"h2", b"http/1.1"], b"h2"),
                ([b"http/1.1", b"h2"], b"http/1.1"),
            ]:
                client = _client(_clientContext(self.pki, alpn=offer), serverName)
                server = self.server(["h2", "http/1.1"])
                self.assertEqual(_handshake(server, client), (None, None))
                self.assertEqual(client.get_alpn_proto_negotiated(), selected)

    def test_noneOfThem(self) -> None:
        """
        A client offering none of the server's protocols gets the
        no_application_protocol alert.
        """
        for serverName in [None, b"other.example"]:
            for version in [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION]:
                context = _clientContext(self.pki, version, alpn=[b"http/1.1"])
                server = self.server(["h2"])
                serverError, clientError = _handshake(
                    server, _client(context, serverName)
                )
                self.assertIsInstance(serverError, NoApplicationProtocol)
                self.assertEqual(failureReason(serverError), "no application protocol")
                self.assertEqual(
                    failureReason(clientError), "tlsv1 alert no application protocol"
                )

    def test_noOffer(self) -> None:
        """
        A client that offers no ALPN is served when the server has protocols.
        """
        client = _client(_clientContext(self.pki))
        self.assertEqual(_handshake(self.server(["h2"]), client), (None, None))
        self.assertEqual(client.get_alpn_proto_negotiated(), b"")

    def test_parse(self) -> None:
        self.assertEqual(parseALPN(["h2", "http/1.1"]), (b"h2", b"http/1.1"))
        self.assertEqual(parseALPN([]), ())
        for bad, message in [
            ("", "--tls-alpn '': must be a protocol name such as http/1.1"),
            (
                "h\u00e9",
                "--tls-alpn 'h\u00e9': must be a protocol name such as http/1.1",
            ),
            ("a b\n", "--tls-alpn 'a b\\n': must be a protocol name such as http/1.1"),
            ("a" * 256, f"--tls-alpn {'a' * 20!r}...: longer than 255 bytes"),
        ]:
            error = self.assertRaises(TLSError, parseALPN, ["h2", bad])
            self.assertEqual(str(error), message)
        self.assertEqual(parseALPN(["a" * 255]), (b"a" * 255,))

    def test_loadRefusesBadName(self) -> None:
        self.assertRaises(
            TLSError, loadServerTLS, [self.gw.certFile], [self.gw.keyFile], alpn=[""]
        )

    def test_keptOnReload(self) -> None:
        creator = ReloadableServerTLS(
            [self.gw.certFile], [self.gw.keyFile], None, "1.2", ["h2"]
        )
        creator.reload()
        self.assertEqual(creator.current.alpn, (b"h2",))
        client = _client(_clientContext(self.pki, alpn=[b"h2"]))
        server = creator.serverConnectionForTLS(None)
        self.assertEqual(_handshake(server, client), (None, None))
        self.assertEqual(client.get_alpn_proto_negotiated(), b"h2")


class ClientCAChainTests(_LoopbackTestCase):
    """
    A client certificate is accepted when its chain ends at any certificate
    of the C{--tls-client-ca} file: a root, or an intermediate alone.
    """

    def setUp(self) -> None:
        super().setUp()
        self.root = trustme.CA()
        self.intermediate = self.root.create_child_ca()
        sibling = self.root.create_child_ca()
        strangerIntermediate = trustme.CA().create_child_ca()
        # Each client sends its leaf and its intermediate.
        self.alice = self.pki.client("alice", issuer=self.intermediate)
        self.bob = self.pki.client("bob", issuer=sibling)
        self.mallory = self.pki.client("mallory", issuer=strangerIntermediate)

    def serve(self, *cas: trustme.CA) -> list[_EchoServer]:
        caFile = self.pki.write(
            "client-ca.pem", b"".join(ca.cert_pem.bytes() for ca in cas)
        )
        return self.listen(loadServerTLS([self.gw.certFile], [self.gw.keyFile], caFile))

    async def assertAccepted(self, client: _Written, servers) -> None:
        for version in [TLSVersion.TLSv1_2, TLSVersion.TLSv1_3]:
            connected = await self.handshake(
                _clientTLS(self.pki, None, client, lowerMaximumSecurityTo=version)
            )
            self.assertEqual(await connected.echo(b"ping"), b"ping")
            peer = servers[-1].transport.getPeerCertificate().to_cryptography()
            self.assertEqual(peer, client.certificate)

    async def assertRefused(self, client: _Written, servers) -> None:
        for version in [TLSVersion.TLSv1_2, TLSVersion.TLSv1_3]:
            error, server = await self.refused(
                _clientTLS(self.pki, None, client, lowerMaximumSecurityTo=version),
                servers,
            )
            self.assertEqual(failureReason(server.reason), "certificate verify failed")

    async def test_intermediateOnly(self) -> None:
        """
        A file holding only the intermediate accepts its clients, and no
        others: not those of another intermediate of the same root.
        """
        servers = self.serve(self.intermediate)
        await self.assertAccepted(self.alice, servers)
        await self.assertRefused(self.bob, servers)
        await self.assertRefused(self.mallory, servers)

    async def test_rootOnly(self) -> None:
        """
        A file holding the root accepts the clients of all its
        intermediates (which the clients send).
        """
        servers = self.serve(self.root)
        await self.assertAccepted(self.alice, servers)
        await self.assertAccepted(self.bob, servers)
        await self.assertRefused(self.mallory, servers)

    async def test_both(self) -> None:
        servers = self.serve(self.root, self.intermediate)
        await self.assertAccepted(self.alice, servers)
        await self.assertAccepted(self.bob, servers)
        await self.assertRefused(self.mallory, servers)


class FailureReasonTests(SynchronousTestCase):
    """
    L{failureReason} over real handshakes that fail, one per kind.
    """

    def setUp(self) -> None:
        self.pki = _PKI(self.mktemp())
        self.gw = self.pki.server("gw", "gw.example")

    def server(self, clientCAFile: str | None = None) -> SSL.Connection:
        tls = loadServerTLS([self.gw.certFile], [self.gw.keyFile], clientCAFile)
        return tls.serverConnectionForTLS(None)

    def refusedWith(self, client: SSL.Connection, clientCAFile=None) -> str | None:
        serverError, clientError = _handshake(self.server(clientCAFile), client)
        self.assertIsNotNone(serverError)
        # As a protocol's connectionLost gets it, and as the exception.
        self.assertEqual(
            failureReason(Failure(serverError)), failureReason(serverError)
        )
        return failureReason(serverError)

    def plaintext(self, data: bytes) -> str | None:
        server = self.server()
        server.set_accept_state()
        server.bio_write(data)
        error = self.assertRaises(SSL.Error, server.do_handshake)
        return failureReason(Failure(error))

    def test_unsupportedProtocol(self) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_1_VERSION)
        context.set_max_proto_version(SSL.TLS1_1_VERSION)
        context.set_cipher_list(b"ALL:@SECLEVEL=0")
        self.assertEqual(self.refusedWith(_client(context)), "unsupported protocol")

    def test_httpRequest(self) -> None:
        self.assertEqual(
            self.plaintext(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n"), "http request"
        )

    def test_otherPlaintext(self) -> None:
        for data in [b"hello\n", b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"]:
            self.assertEqual(self.plaintext(data), "wrong version number")

    def test_certificateRequired(self) -> None:
        caFile = self.pki.writeClientCA()
        for version in [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION]:
            client = _client(_clientContext(self.pki, version))
            self.assertEqual(self.refusedWith(client, caFile), "certificate required")

    def test_untrustedCertificate(self) -> None:
        caFile = self.pki.writeClientCA()
        stranger = self.pki.client("stranger", issuer=self.pki.ca)
        client = _client(_clientContext(self.pki, certificate=stranger))
        self.assertEqual(self.refusedWith(client, caFile), "certificate verify failed")

    def test_noSharedCipher(self) -> None:
        """
        A TLS 1.2 client with RSA key exchange only, against an ECDSA
        certificate.
        """
        context = _clientContext(self.pki, SSL.TLS1_2_VERSION)
        context.set_cipher_list(b"AES128-SHA")
        self.assertEqual(self.refusedWith(_client(context)), "no shared cipher")

    def test_clientRefusesServer(self) -> None:
        """
        A client that does not trust the server's certificate alerts; the
        reason names the alert.
        """
        for version, alert in [
            (SSL.TLS1_2_VERSION, "tlsv1 alert unknown ca"),
            (SSL.TLS1_3_VERSION, "tlsv1 alert unknown ca"),
        ]:
            context = SSL.Context(SSL.TLS_METHOD)
            context.set_verify(SSL.VERIFY_PEER)
            context.set_max_proto_version(version)
            self.assertEqual(self.refusedWith(_client(context)), alert)

    def test_notOpenSSL(self) -> None:
        """
        A connection closed or lost before its handshake is not OpenSSL's
        failure; nor is a clean close_notify.
        """
        for reason in [
            Failure(ConnectionDone()),
            Failure(ConnectionLost()),
            ConnectionLost(),
            None,
            SSL.ZeroReturnError(),
        ]:
            self.assertIsNone(failureReason(reason))

    def test_otherShapes(self) -> None:
        """
        An error from the socket layer, or one with no reason, still gets
        words, on one line.
        """
        self.assertEqual(
            failureReason(SSL.SysCallError(-1, "Unexpected EOF")), "unexpected eof"
        )
        self.assertEqual(failureReason(SSL.Error([])), "tls error")
        self.assertEqual(failureReason(SSL.Error("odd\nline")), "odd\\x0aline")


class ConnectionInfoTests(SynchronousTestCase):
    """
    L{connectionInfo}: what a completed handshake negotiated.
    """

    def setUp(self) -> None:
        self.pki = _PKI(self.mktemp())
        self.gw = self.pki.server("gw", "gw.example")

    def handshake(
        self, client: SSL.Connection, clientCAFile=None, alpn=()
    ) -> SSL.Connection:
        tls = loadServerTLS(
            [self.gw.certFile], [self.gw.keyFile], clientCAFile, alpn=alpn
        )
        server = tls.serverConnectionForTLS(None)
        self.assertEqual(_handshake(server, client), (None, None))
        return server

    def test_mutualTLS13(self) -> None:
        alice = self.pki.writeLeaf(
            "alice",
            self.pki.clientCA.issue_cert("alice.client.example", common_name="alice"),
        )
        context = _clientContext(self.pki, certificate=alice, alpn=[b"h2"])
        server = self.handshake(
            _client(context, b"gw.example"), self.pki.writeClientCA(), ["h2"]
        )
        info = connectionInfo(server)
        self.assertEqual(info.version, "TLSv1.3")
        self.assertEqual(info.cipher, server.get_cipher_name())
        self.assertTrue(info.cipher.startswith("TLS_"), info.cipher)
        self.assertEqual(info.serverName, "gw.example")
        self.assertEqual(info.clientSubject, alice.certificate.subject.rfc4514_string())
        self.assertTrue(info.clientSubject.startswith("CN=alice,"), info.clientSubject)
        self.assertEqual(info.alpn, "h2")
        self.assertEqual(
            str(info),
            f"TLSv1.3 {info.cipher} sni=gw.example"
            f' client="{info.clientSubject}" alpn=h2',
        )
        self.assertEqual(
            info.logFields(),
            {
                "tls_version": "TLSv1.3",
                "tls_cipher": info.cipher,
                "tls_sni": "gw.example",
                "tls_client": info.clientSubject,
                "tls_alpn": "h2",
            },
        )

    def test_tls12NoNameNoCertificate(self) -> None:
        server = self.handshake(_client(_clientContext(self.pki, SSL.TLS1_2_VERSION)))
        info = connectionInfo(server)
        self.assertEqual(
            (info.version, info.serverName, info.clientSubject, info.alpn),
            ("TLSv1.2", None, None, None),
        )
        self.assertIn("ECDHE", info.cipher)
        self.assertEqual(str(info), f"TLSv1.2 {info.cipher}")
        self.assertEqual(
            info.logFields(),
            {
                "tls_version": "TLSv1.2",
                "tls_cipher": info.cipher,
                "tls_sni": "-",
                "tls_client": "-",
                "tls_alpn": "-",
            },
        )

    def test_unprintableServerName(self) -> None:
        """
        OpenSSL accepts control characters in an SNI name; they are escaped,
        so that the log line stays one line.
        """
        client = _client(_clientContext(self.pki), b"gw\x01.example\nFORGED")
        info = connectionInfo(self.handshake(client))
        self.assertEqual(info.serverName, "gw\\x01.example\\x0aFORGED")

    @given(st.text())
    def test_printable(self, value: str) -> None:
        """
        Text a client chose is escaped character by character, whatever it
        holds; text with nothing to escape is kept as it is.
        """
        escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in value)
        self.assertEqual(tlsModule._printable(value), escaped)
        self.assertTrue(tlsModule._printable(value).isprintable())

    def test_printableKept(self) -> None:
        """
        A printable name, the usual case, is returned itself, not rebuilt.
        """
        name = "gw.example"
        self.assertIs(tlsModule._printable(name), name)

    def test_noHandshake(self) -> None:
        """
        L{None} before the handshake, and for what is not TLS.
        """
        tls = loadServerTLS([self.gw.certFile], [self.gw.keyFile])
        self.assertIsNone(connectionInfo(tls.serverConnectionForTLS(None)))
        self.assertIsNone(connectionInfo(StringTransport()))
        self.assertIsNone(connectionInfo(None))


class ConnectionInfoLoopbackTests(_LoopbackTestCase):
    """
    L{connectionInfo} on the transport a protocol under L{wrapFactory} has.
    """

    async def test_fromTransport(self) -> None:
        servers = self.listen(
            loadServerTLS(
                [self.gw.certFile, self.other.certFile],
                [self.gw.keyFile, self.other.keyFile],
                self.pki.writeClientCA(),
            )
        )
        alice = self.pki.client("alice")
        client = await self.handshake(_clientTLS(self.pki, "other.example", alice))
        self.assertEqual(await client.echo(b"ping"), b"ping")
        info = connectionInfo(servers[-1].transport)
        self.assertEqual(info.serverName, "other.example")
        self.assertEqual(info.clientSubject, alice.certificate.subject.rfc4514_string())
        self.assertEqual(
            info.version, client.transport.getHandle().get_protocol_version_name()
        )

    async def test_failureInConnectionLost(self) -> None:
        """
        What a protocol's C{connectionLost} gets after a failed handshake
        gives OpenSSL's reason.
        """
        servers = self.listen(
            loadServerTLS(
                [self.gw.certFile], [self.gw.keyFile], self.pki.writeClientCA()
            )
        )
        for version in [TLSVersion.TLSv1_2, TLSVersion.TLSv1_3]:
            error, server = await self.refused(
                _clientTLS(self.pki, lowerMaximumSecurityTo=version), servers
            )
            self.assertEqual(failureReason(server.reason), "certificate required")
            self.assertIsNone(connectionInfo(server.transport))

    async def test_plaintextInConnectionLost(self) -> None:
        servers = self.listen(loadServerTLS([self.gw.certFile], [self.gw.keyFile]))
        sock = await deferToThread(
            socket.create_connection,
            ("127.0.0.1", self.port.getHost().port),
            DEADLINE,
        )
        self.addCleanup(sock.close)
        await deferToThread(sock.sendall, b"GET / HTTP/1.0\r\n\r\n")
        await servers[-1].lost
        self.assertEqual(failureReason(servers[-1].reason), "http request")
