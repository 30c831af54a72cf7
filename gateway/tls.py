"""
Server-side TLS: loading certificates and keys, choosing one by SNI, reloading.

The files named by C{--tls-cert}, C{--tls-key} and C{--tls-client-ca} are read
into a L{ServerTLS}: one OpenSSL context per certificate, all with the same
settings (Twisted's default ciphers, TLS 1.2 or 1.3 at least, no compression,
no renegotiation, client certificates required when a client CA is given).
A L{ReloadableServerTLS} holds the current L{ServerTLS} and swaps in a new one
on L{ReloadableServerTLS.reload}, so new connections get the new material while
open connections keep what they started with.

Every mistake in the files is a L{TLSError} whose message is one line naming
the option and the file, fit to show an operator as it is.

L{wrapFactory} puts a L{HalfCloseableTLSProtocol} under each accepted
connection: Twisted's TLS layer, changed so that a client's close_notify ends
only the client's direction (Twisted's answers it at once and closes, losing
the replies still on their way: its ticket 5341), and so that a close never
waits forever for the client's close_notify (Twisted's ticket 7926).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from OpenSSL import SSL, crypto
from OpenSSL.SSL import WantReadError, ZeroReturnError
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)
from twisted.python.failure import Failure
from zope.interface import implementer

CERT_OPTION = "--tls-cert"
KEY_OPTION = "--tls-key"
CLIENT_CA_OPTION = "--tls-client-ca"
MIN_VERSION_OPTION = "--tls-min-version"

DEFAULT_MIN_VERSION = "1.2"
MIN_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}

# Set on top of what CertificateOptions sets (which already includes
# OP_NO_COMPRESSION).  OpenSSL builds without it get 0: nothing to add.
_EXTRA_OPTIONS = getattr(SSL, "OP_NO_RENEGOTIATION", 0)

# Once the gateway has closed a TLS connection (sent its close_notify), how
# long the client has to answer with its own before the socket is closed
# without it.  Twisted alone would wait for ever (its ticket 7926).
CLOSE_NOTIFY_TIMEOUT = 5.0

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL
)


class TLSError(Exception):
    """
    A TLS option names a file that cannot be used; the message is one line
    that names the option and the file.
    """


@dataclass(frozen=True)
class ServerCertificate:
    """
    One certificate the server can present: the leaf, the chain sent after it,
    its private key, and the DNS names (from subjectAltName) it is chosen for.
    """

    certFile: str
    keyFile: str
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    privateKey: PrivateKeyTypes
    dnsNames: tuple[str, ...]


def _fail(option: str, path: str, problem: str) -> TLSError:
    return TLSError(f"{option} {path}: {problem}")


def _readFile(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise _fail(option, path, f"cannot read: {e.strerror or e}") from None


def _pemBlocks(option: str, path: str, data: bytes) -> list[tuple[bytes, bytes]]:
    """
    The (label, whole block) PEM blocks of C{data}, in file order.
    """
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
    if not blocks:
        raise _fail(option, path, "not a PEM file")
    return blocks


def _firstLine(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _certificatesFrom(option: str, path: str, data: bytes) -> list[x509.Certificate]:
    certificates = []
    for label, block in _pemBlocks(option, path, data):
        if label != b"CERTIFICATE":
            continue
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError as e:
            raise _fail(option, path, f"bad certificate: {_firstLine(e)}") from None
    if not certificates:
        raise _fail(option, path, "no certificate found")
    return certificates


def _privateKeyFrom(
    option: str, path: str, data: bytes, hint: str = ""
) -> PrivateKeyTypes:
    for label, block in _pemBlocks(option, path, data):
        if not label.endswith(b"PRIVATE KEY"):
            continue
        if label == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in block:
            raise _fail(option, path, "the private key is encrypted; not supported")
        try:
            key = load_pem_private_key(block, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise _fail(option, path, f"bad private key: {_firstLine(e)}") from None
        return key
    raise _fail(option, path, "no private key found" + hint)


def _publicKeyBytes(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _dnsNames(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        san = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        return ()
    return tuple(name.lower() for name in san.value.get_values_for_type(x509.DNSName))


def loadServerCertificate(certFile: str, keyFile: str | None) -> ServerCertificate:
    """
    Read one certificate (leaf, then its chain) from C{certFile} and its private
    key from C{keyFile}, or from C{certFile} itself when C{keyFile} is L{None}.

    @raise TLSError: a file is unreadable, not PEM, lacks what it should hold,
        or the key is not the certificate's.
    """
    certData = _readFile(CERT_OPTION, certFile)
    leaf, *chain = _certificatesFrom(CERT_OPTION, certFile, certData)
    if keyFile is None:
        keyOption, keyPath, keyData = CERT_OPTION, certFile, certData
        hint = f" (put it in this file or give {KEY_OPTION})"
    else:
        keyOption, keyPath = KEY_OPTION, keyFile
        keyData = _readFile(KEY_OPTION, keyFile)
        hint = ""
    key = _privateKeyFrom(keyOption, keyPath, keyData, hint)
    if _publicKeyBytes(key.public_key()) != _publicKeyBytes(leaf.public_key()):
        raise _fail(keyOption, keyPath, f"key does not match certificate {certFile}")
    return ServerCertificate(
        certFile=certFile,
        keyFile=keyPath,
        certificate=leaf,
        chain=tuple(chain),
        privateKey=key,
        dnsNames=_dnsNames(leaf),
    )


def parseMinVersion(minVersion: str) -> TLSVersion:
    """
    The L{TLSVersion} for a C{--tls-min-version} value, C{"1.2"} or C{"1.3"}.

    @raise TLSError: any other value.
    """
    try:
        return MIN_VERSIONS[minVersion]
    except KeyError:
        choices = " or ".join(MIN_VERSIONS)
        raise TLSError(
            f"{MIN_VERSION_OPTION} {minVersion!r}: must be {choices}"
        ) from None


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS material read at one moment: one OpenSSL context per certificate,
    and the choice among them by the server name a client asks for (SNI).

    Certificates are chosen by their subjectAltName DNS names: an exact name
    first, then a wildcard C{*.example.com} (matching one label); a client
    that sends no name, or a name no certificate has, gets the first one.
    """

    def __init__(
        self,
        certificates: Sequence[ServerCertificate],
        clientCAs: Sequence[x509.Certificate] = (),
        minVersion: TLSVersion = MIN_VERSIONS[DEFAULT_MIN_VERSION],
    ) -> None:
        if not certificates:
            raise TLSError(f"{CERT_OPTION} is required for TLS")
        self.certificates = tuple(certificates)
        self.clientCAs = tuple(clientCAs)
        self.minVersion = minVersion
        self._exact: dict[str, int] = {}
        self._wildcard: dict[str, int] = {}
        for index, certificate in enumerate(self.certificates):
            for name in certificate.dnsNames:
                if name.startswith("*."):
                    self._wildcard.setdefault(name[2:], index)
                else:
                    self._exact.setdefault(name, index)
        self._contexts = [self._makeContext(c) for c in self.certificates]
        self._contexts[0].set_tlsext_servername_callback(self._selectContext)

    def _makeContext(self, certificate: ServerCertificate) -> SSL.Context:
        verify = {}
        if self.clientCAs:
            verify = dict(
                verify=True,
                caCerts=[crypto.X509.from_cryptography(ca) for ca in self.clientCAs],
                requireCertificate=True,
            )
        # The leaf, chain and key go in as cryptography objects: pyOpenSSL
        # takes them as they are, and warns about its own X509 and PKey.
        options = CertificateOptions(
            privateKey=certificate.privateKey,
            certificate=certificate.certificate,
            extraCertChain=list(certificate.chain),
            raiseMinimumTo=self.minVersion,
            # Off so that a resumed session never skips checking a client
            # certificate against a client CA that has since been reloaded.
            enableSessions=False,
            **verify,
        )
        try:
            context = options.getContext()
        except SSL.Error as e:
            raise _fail(CERT_OPTION, certificate.certFile, f"unusable: {e}") from None
        context.set_options(_EXTRA_OPTIONS)
        for ca in self.clientCAs:
            # Named in the certificate request, so clients can pick a cert.
            context.add_client_ca(ca)
        return context

    def certificateFor(self, serverName: str | None) -> ServerCertificate:
        """
        The certificate served to a client that asked for C{serverName}
        (L{None}: the client sent no name).
        """
        return self.certificates[self._indexFor(serverName)]

    def _indexFor(self, serverName: str | None) -> int:
        if not serverName:
            return 0
        name = serverName.lower().rstrip(".")
        index = self._exact.get(name)
        if index is None:
            label, dot, parent = name.partition(".")
            if label and dot:
                index = self._wildcard.get(parent)
        return 0 if index is None else index

    def _selectContext(self, connection: SSL.Connection) -> None:
        """
        The SNI callback: switch C{connection} to the certificate for the name
        its client asked for.  It must not raise (pyOpenSSL would print the
        traceback and end the handshake).
        """
        rawName = connection.get_servername()
        try:
            serverName = rawName.decode("ascii") if rawName else None
        except UnicodeDecodeError:
            serverName = None
        index = self._indexFor(serverName)
        if index:
            connection.set_context(self._contexts[index])

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol | None
    ) -> SSL.Connection:
        """
        A new server-side OpenSSL connection for one accepted client.
        """
        return SSL.Connection(self._contexts[0], None)


def loadServerTLS(
    certFiles: Sequence[str],
    keyFiles: Sequence[str] = (),
    clientCAFile: str | None = None,
    minVersion: str = DEFAULT_MIN_VERSION,
) -> ServerTLS:
    """
    Read the files named by the TLS options into a L{ServerTLS}.

    C{certFiles[i]} is paired with C{keyFiles[i]}; certificates past the end of
    C{keyFiles} hold their own key.  The first certificate is the default one.

    @raise TLSError: an option value or a file cannot be used.
    """
    version = parseMinVersion(minVersion)
    if not certFiles:
        raise TLSError(f"{CERT_OPTION} is required for TLS")
    if len(keyFiles) > len(certFiles):
        raise TLSError(
            f"{KEY_OPTION} given {len(keyFiles)} times,"
            f" more than {CERT_OPTION} ({len(certFiles)})"
        )
    certificates = [
        loadServerCertificate(certFile, keyFiles[i] if i < len(keyFiles) else None)
        for i, certFile in enumerate(certFiles)
    ]
    clientCAs: list[x509.Certificate] = []
    if clientCAFile is not None:
        clientCAs = _certificatesFrom(
            CLIENT_CA_OPTION,
            clientCAFile,
            _readFile(CLIENT_CA_OPTION, clientCAFile),
        )
    return ServerTLS(certificates, clientCAs, version)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """
    The server's TLS material, re-read from the same files on L{reload}.

    Give it to L{wrapFactory} (or L{TLSMemoryBIOFactory}) once; each accepted
    connection uses the material current when it was accepted.
    """

    def __init__(
        self,
        certFiles: Sequence[str],
        keyFiles: Sequence[str] = (),
        clientCAFile: str | None = None,
        minVersion: str = DEFAULT_MIN_VERSION,
    ) -> None:
        """
        Read the files now.

        @raise TLSError: as L{loadServerTLS}.
        """
        self.certFiles = tuple(certFiles)
        self.keyFiles = tuple(keyFiles)
        self.clientCAFile = clientCAFile
        self.minVersion = minVersion
        self.current = self._load()

    def _load(self) -> ServerTLS:
        return loadServerTLS(
            self.certFiles, self.keyFiles, self.clientCAFile, self.minVersion
        )

    def reload(self) -> None:
        """
        Re-read every file; new connections use what was read.

        @raise TLSError: a file cannot be used; the material in use is kept.
        """
        self.current = self._load()

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol | None
    ) -> SSL.Connection:
        """
        A new server-side OpenSSL connection with the current material.
        """
        return self.current.serverConnectionForTLS(tlsProtocol)


@implementer(IHalfCloseableProtocol)
class HalfCloseableTLSProtocol(BufferingTLSTransport):
    """
    Server-side TLS over one accepted connection, where either side can end
    its own direction of the stream and go on with the other.

    Changes to Twisted's TLS layer, for a wrapped protocol that provides
    L{IHalfCloseableProtocol}:

      - the client's close_notify ends only the client's direction: the
        wrapped protocol gets C{readConnectionLost} and may go on writing
        until it closes the connection itself;
      - C{loseWriteConnection} sends the gateway's close_notify (once what
        was written is sent) and goes on reading until the client's;
      - C{loseConnection} also sends close_notify, and closes the socket
        once the client has answered, or L{CLOSE_NOTIFY_TIMEOUT} seconds
        later without the answer (what was written is still sent first).

    A TCP FIN with no close_notify before it cuts the TLS stream short: the
    connection ends as if it were lost (at once; or once what was written is
    sent, when the gateway was closing it anyway).  A wrapped protocol that
    cannot half-close gets Twisted's behaviour, apart from the close
    timeout.
    """

    factory: HalfCloseableTLSFactory
    _peerFinished = False
    _closing = False
    _closeTimer: IDelayedCall | None = None

    def _halfCloseable(self) -> bool:
        return IHalfCloseableProtocol.providedBy(self.wrappedProtocol)

    def _flushReceiveBIO(self) -> None:
        # TLSMemoryBIOProtocol._flushReceiveBIO, but for what happens when the
        # client's close_notify arrives (the ZeroReturnError).
        if self._peerFinished:
            # Nothing can follow a close_notify.
            return
        while not self._lostTLSConnection:
            try:
                data = self._tlsConnection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:
                if self._halfCloseable() and not self._closing:
                    # Sent by loseWriteConnection, or not sent yet.
                    ourCloseNotifySent = self.disconnecting
                    self._peerFinished = True
                    self.wrappedProtocol.readConnectionLost()
                    if not ourCloseNotifySent:
                        # Keep the connection for the replies still to come.
                        break
                # Answer it and close, as Twisted does; or, when the gateway
                # had sent its own close_notify first, the close is complete.
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        self._flushSendBIO()

    def readConnectionLost(self) -> None:
        """
        The client's TCP FIN: expected after its close_notify, or once TLS is
        over. Without one, the TLS stream was cut short: when the gateway
        was closing anyway, the socket closes once what was written is sent;
        otherwise at once, as Twisted ends a connection that is lost.
        """
        if self._peerFinished or self._lostTLSConnection:
            return
        if self.disconnecting:
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()

    def writeConnectionLost(self) -> None:
        pass

    def loseWriteConnection(self) -> None:
        """
        End the gateway's direction: close_notify once everything written so
        far is sent. Reading goes on until the client's close_notify.
        """
        super().loseConnection()

    def loseConnection(self) -> None:
        """
        Close: close_notify once everything written is sent, then the socket,
        when the client answers or after L{CLOSE_NOTIFY_TIMEOUT}.
        """
        self._closing = True
        super().loseConnection()
        if not self.connected or self._aborted:
            return
        # The client's answer (or its FIN) must be read: the wrapped
        # protocol may have paused reading, as the proxy does while it
        # has no backend.
        self.transport.resumeProducing()
        if self._closeTimer is None:
            self._closeTimer = self.factory.clock.callLater(
                CLOSE_NOTIFY_TIMEOUT, self._closeNotifyTimedOut
            )

    def _closeNotifyTimedOut(self) -> None:
        self._closeTimer = None
        # An orderly close: whatever is still buffered is sent first.
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        if self._closeTimer is not None:
            self._closeTimer.cancel()
            self._closeTimer = None
        super().connectionLost(reason)


class HalfCloseableTLSFactory(TLSMemoryBIOFactory):
    """
    Server-side TLS with L{HalfCloseableTLSProtocol} under each connection.

    @ivar clock: where the close timeout and the buffered writes are
        scheduled.
    """

    protocol = HalfCloseableTLSProtocol

    def __init__(
        self,
        creator: IOpenSSLServerConnectionCreator,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(creator, False, wrappedFactory, clock)
        self.clock = self._clock


def wrapFactory(
    creator: IOpenSSLServerConnectionCreator,
    factory: IProtocolFactory,
    clock: IReactorTime | None = None,
) -> HalfCloseableTLSFactory:
    """
    Put TLS server-side under the protocols C{factory} builds, for handing to
    a server endpoint's C{listen}.

    The wrapped protocols are connected when the TCP connection is accepted,
    before the handshake; those that provide
    L{twisted.internet.interfaces.IHandshakeListener} learn when it is done,
    and those that provide L{IHalfCloseableProtocol} can half-close (see
    L{HalfCloseableTLSProtocol}).

    @param clock: where the TLS layer schedules its buffered writes and its
        close timeout; the global reactor when L{None}.
    """
    return HalfCloseableTLSFactory(creator, factory, clock)
