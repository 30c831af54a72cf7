"""
Server-side TLS: loading certificates and keys, choosing one by SNI, reloading,
and describing a connection (how it ended, what it negotiated) for the logs.

The files named by C{--tls-cert}, C{--tls-key} and C{--tls-client-ca} are read
into a L{ServerTLS}: one OpenSSL context per certificate, all with the same
settings (Twisted's default ciphers, TLS 1.2 or 1.3 at least, no compression,
no renegotiation, client certificates required when a client CA is given).
A L{ReloadableServerTLS} holds the current L{ServerTLS} and swaps in a new one
on L{ReloadableServerTLS.reload}, so new connections get the new material while
open connections keep what they started with.

Every mistake in the files is a L{TLSError} whose message is one line naming
the option and the file, fit to show an operator as it is.

A client certificate is accepted when its chain ends at any certificate of
the C{--tls-client-ca} file, a root or an intermediate (OpenSSL's
C{X509_V_FLAG_PARTIAL_CHAIN}); with C{--tls-client-name}, it must also carry
one of the names (L{gateway.certnames}), checked in the handshake itself, in
every certificate's context, across reloads: a refused certificate fails the
handshake, and L{refusedClient} names its subject for the close line. An
ALPN offer is served as if none was made, unless C{--tls-alpn} names
protocols to select (see L{ServerTLS}).

L{failureReason} turns the reason a TLS connection ended with into OpenSSL's
words for it, and L{connectionInfo} reads what a completed handshake
negotiated, for the connection's close log line.

L{wrapFactory} puts a L{gateway.halfclosetls.HalfCloseableTLSProtocol} under
each accepted connection: Twisted's TLS layer, changed so that either side can
half-close; that module holds every override of Twisted's private TLS state.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from weakref import WeakKeyDictionary

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
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.certnames import ClientName, nameVerifier
from gateway.halfclosetls import HalfCloseableTLSFactory

__all__ = [
    "HalfCloseableTLSFactory",
    "NoApplicationProtocol",
    "ReloadableServerTLS",
    "ServerTLS",
    "TLSConnectionInfo",
    "TLSError",
    "connectionInfo",
    "failureReason",
    "loadServerTLS",
    "parseALPN",
    "refusedClient",
    "wrapFactory",
]

CERT_OPTION = "--tls-cert"
KEY_OPTION = "--tls-key"
CLIENT_CA_OPTION = "--tls-client-ca"
MIN_VERSION_OPTION = "--tls-min-version"
ALPN_OPTION = "--tls-alpn"

DEFAULT_MIN_VERSION = "1.2"
MIN_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}

# Set on top of what CertificateOptions sets (which already includes
# OP_NO_COMPRESSION).  OpenSSL builds without it get 0: nothing to add.
_EXTRA_OPTIONS = getattr(SSL, "OP_NO_RENEGOTIATION", 0)

# An ALPN protocol name is 1 to 255 bytes (RFC 7301, section 3.1).
_ALPN_MAX_BYTES = 255

# OpenSSL's reason for a client that sent no certificate when one is
# required, and the TLS 1.3 alert it gets: SPEC's word for it.
_REASON_ALIASES = {"peer did not return a certificate": "certificate required"}

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL
)


class TLSError(Exception):
    """
    A TLS option names a file that cannot be used; the message is one line
    that names the option and the file.
    """


class NoApplicationProtocol(SSL.Error):
    """
    A client offered ALPN protocols, none of which C{--tls-alpn} lists.

    Shaped as OpenSSL's own errors are (a list of (library, function,
    reason) triples), so that L{failureReason} reads it the same way.
    """

    def __init__(self) -> None:
        super().__init__([("SSL routines", "", "no application protocol")])


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


def parseALPN(names: Sequence[str]) -> tuple[bytes, ...]:
    """
    The ALPN protocol names given with C{--tls-alpn}, as OpenSSL takes them.

    @raise TLSError: a name is empty, longer than 255 bytes, or not
        printable ASCII (RFC 7301 allows any bytes; registered names, such
        as C{h2} and C{http/1.1}, are ASCII, and an operator types them).
    """
    protocols = []
    for name in names:
        encoded = name.encode("ascii", "replace")
        if not name or not name.isascii() or not name.isprintable():
            raise TLSError(
                f"{ALPN_OPTION} {name!r}: must be a protocol name such as http/1.1"
            )
        if len(encoded) > _ALPN_MAX_BYTES:
            raise TLSError(
                f"{ALPN_OPTION} {name[:20]!r}...: longer than {_ALPN_MAX_BYTES} bytes"
            )
        protocols.append(encoded)
    return tuple(protocols)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS material read at one moment: one OpenSSL context per certificate,
    and the choice among them by the server name a client asks for (SNI).

    Certificates are chosen by their subjectAltName DNS names: an exact name
    first, then a wildcard C{*.example.com} (matching one label); a client
    that sends no name, or a name no certificate has, gets the first one.

    ALPN: with no C{alpn} protocols, a client's ALPN offer is ignored, as if
    it had made none. (C{CertificateOptions} always installs Twisted's own
    selection callback, which fails such a handshake: it looks for the
    Twisted protocol as the connection's app data, which a creator of its
    own does not set, and it raises; given one, it answers "no overlap"
    with an empty protocol name, which OpenSSL 3 ends with an
    C{internal_error} alert.) With C{alpn}, the first of the
    client's offers that is in C{alpn} is selected; a client that offers ALPN
    but none of them gets the C{no_application_protocol} alert, as RFC 7301
    section 3.2 says; a client that offers no ALPN is served.
    """

    def __init__(
        self,
        certificates: Sequence[ServerCertificate],
        clientCAs: Sequence[x509.Certificate] = (),
        minVersion: TLSVersion = MIN_VERSIONS[DEFAULT_MIN_VERSION],
        alpn: Sequence[bytes] = (),
        clientNames: Sequence[ClientName] = (),
    ) -> None:
        """
        @param clientNames: with C{clientCAs}, the names one of which a
            client certificate must carry (L{gateway.certnames}); none is
            no name check.
        """
        if not certificates:
            raise TLSError(f"{CERT_OPTION} is required for TLS")
        self.certificates = tuple(certificates)
        self.clientCAs = tuple(clientCAs)
        self.clientNames = tuple(clientNames)
        self.minVersion = minVersion
        self.alpn = tuple(alpn)
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
        # Replaces the callback CertificateOptions always sets (see the
        # class docstring); a context has one, so this is the only one.
        context.set_alpn_select_callback(self._selectProtocol)
        if self.clientCAs:
            store = context.get_cert_store()
            assert store is not None
            # A chain that reaches any certificate of the file is trusted,
            # an intermediate CA included: without the flag OpenSSL insists
            # on reaching a self-signed root, and answers "unknown ca".
            store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        for ca in self.clientCAs:
            # Named in the certificate request, so clients can pick a cert.
            context.add_client_ca(ca)
        if self.clientCAs and self.clientNames:
            # Replaces the callback CertificateOptions set, which only
            # passes OpenSSL's chain verdict on; same flags.
            context.set_verify(
                context.get_verify_mode(),
                nameVerifier(self.clientNames, _noteRefused),
            )
        return context

    def _selectProtocol(
        self, connection: SSL.Connection, offered: list[bytes]
    ) -> bytes | object:
        """
        The ALPN selection callback: the first of C{offered} (the client's
        order) that the server accepts; with none, L{SSL.NO_OVERLAPPING_PROTOCOLS}
        when the server selects none (the offer is ignored), else a
        L{NoApplicationProtocol} error, which pyOpenSSL turns into a fatal
        C{no_application_protocol} alert and raises from the handshake.
        """
        for protocol in offered:
            if protocol in self.alpn:
                return protocol
        if not self.alpn:
            return SSL.NO_OVERLAPPING_PROTOCOLS
        raise NoApplicationProtocol()

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
        connection = SSL.Connection(self._contexts[0], None)
        if tlsProtocol is not None:
            # For the name check to tell which connection it refused (as
            # Twisted's own client side keeps its protocol there).
            connection.set_app_data(tlsProtocol)
        return connection


# The subjects of client certificates refused for their names, by the TLS
# protocol of their connection, for as long as that protocol exists.
_refusedSubjects: WeakKeyDictionary[object, str] = WeakKeyDictionary()


def _noteRefused(connection: SSL.Connection, subject: str) -> None:
    protocol = connection.get_app_data()
    if protocol is not None:
        _refusedSubjects[protocol] = subject


def refusedClient(transport: object) -> str | None:
    """
    The subject (RFC 4514, one line) of the client certificate that
    C{transport}'s handshake refused for its names (C{--tls-client-name}),
    or L{None} when it refused none.

    @param transport: the transport of a protocol under L{wrapFactory}.
    """
    try:
        return _refusedSubjects.get(transport)
    except TypeError:
        # Not weakly referenceable: not a TLS transport of ours.
        return None


def loadServerTLS(
    certFiles: Sequence[str],
    keyFiles: Sequence[str] = (),
    clientCAFile: str | None = None,
    minVersion: str = DEFAULT_MIN_VERSION,
    alpn: Sequence[str] = (),
    clientNames: Sequence[ClientName] = (),
) -> ServerTLS:
    """
    Read the files named by the TLS options into a L{ServerTLS}.

    C{certFiles[i]} is paired with C{keyFiles[i]}; certificates past the end of
    C{keyFiles} hold their own key.  The first certificate is the default one.

    @raise TLSError: an option value or a file cannot be used.
    """
    version = parseMinVersion(minVersion)
    protocols = parseALPN(alpn)
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
    return ServerTLS(certificates, clientCAs, version, protocols, clientNames)


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
        alpn: Sequence[str] = (),
        clientNames: Sequence[ClientName] = (),
    ) -> None:
        """
        Read the files now.

        @raise TLSError: as L{loadServerTLS}.
        """
        self.certFiles = tuple(certFiles)
        self.keyFiles = tuple(keyFiles)
        self.clientCAFile = clientCAFile
        self.minVersion = minVersion
        self.alpn = tuple(alpn)
        self.clientNames = tuple(clientNames)
        self.current = self._load()

    def _load(self) -> ServerTLS:
        return loadServerTLS(
            self.certFiles,
            self.keyFiles,
            self.clientCAFile,
            self.minVersion,
            self.alpn,
            self.clientNames,
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
    and those that provide L{twisted.internet.interfaces.IHalfCloseableProtocol}
    can half-close (see L{gateway.halfclosetls.HalfCloseableTLSProtocol}).

    @param clock: where the TLS layer schedules its buffered writes and its
        close timeout; the global reactor when L{None}.
    """
    return HalfCloseableTLSFactory(creator, factory, clock)


def failureReason(reason: Failure | BaseException | None) -> str | None:
    """
    OpenSSL's short reason, in words, for a TLS connection that ended with
    C{reason}: the L{Failure} its protocol's C{connectionLost} got (or the
    exception in it).

    Examples: C{"unsupported protocol"} (a TLS 1.1 client), C{"http request"}
    (plain HTTP on the TLS port), C{"wrong version number"} (other bytes
    that are not TLS), C{"no shared cipher"}, C{"certificate required"} (a
    client without a certificate under C{--tls-client-ca}; OpenSSL's
    "peer did not return a certificate"), C{"certificate verify failed"}
    (one from another CA), C{"no application protocol"} (no C{--tls-alpn}
    match), C{"tlsv1 alert unknown ca"} (the client refused the server's
    certificate: OpenSSL names an alert the peer sent that way).

    @return: the reason, lower case as OpenSSL writes it; L{None} when
        C{reason} is not an OpenSSL error (a connection closed or lost
        before the handshake finished arrives as Twisted's
        L{twisted.internet.error.ConnectionDone} or
        L{twisted.internet.error.ConnectionLost}, an unexpected EOF
        included), or is a clean close_notify.
    """
    error = reason.value if isinstance(reason, Failure) else reason
    if not isinstance(error, SSL.Error) or isinstance(error, SSL.ZeroReturnError):
        return None
    if isinstance(error, SSL.SysCallError):
        # (errno, text) from the socket layer; (-1, "Unexpected EOF") when
        # the peer closed mid-record.
        text = error.args[1] if len(error.args) > 1 else str(error)
        return _printable(str(text).lower())
    entries = error.args[0] if error.args else None
    if isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, tuple) and len(entry) == 3 and entry[2]:
                words = str(entry[2])
                return _REASON_ALIASES.get(words, words)
        # OpenSSL gave no reason (an empty error queue).
        return "tls error"
    return _printable(str(error)) or "tls error"


@dataclass(frozen=True)
class TLSConnectionInfo:
    """
    What a completed server-side handshake negotiated.

    @ivar version: OpenSSL's name for it, C{"TLSv1.2"} or C{"TLSv1.3"}.
    @ivar cipher: OpenSSL's name of the cipher suite, e.g.
        C{"TLS_AES_256_GCM_SHA384"} or C{"ECDHE-RSA-AES256-GCM-SHA384"}.
    @ivar serverName: the SNI name the client sent, or L{None}.
    @ivar clientSubject: the client certificate's subject as an RFC 4514
        string (C{"CN=alice.client.example"}), or L{None} without one.
    @ivar alpn: the ALPN protocol selected, or L{None}.

    Strings that came from the client (the SNI name, the subject) have
    anything unprintable escaped (C{\\x0a}), so they fit on one log line.
    """

    version: str
    cipher: str
    serverName: str | None
    clientSubject: str | None
    alpn: str | None

    def logFields(self) -> dict[str, str]:
        """
        The fields for a log event, C{"-"} for what is absent: C{tls_version},
        C{tls_cipher}, C{tls_sni}, C{tls_client}, C{tls_alpn}.
        """
        return {
            "tls_version": self.version,
            "tls_cipher": self.cipher,
            "tls_sni": self.serverName or "-",
            "tls_client": self.clientSubject or "-",
            "tls_alpn": self.alpn or "-",
        }

    def __str__(self) -> str:
        """
        One line for a log, e.g. C{TLSv1.3 TLS_AES_256_GCM_SHA384
        sni=gw.example client="CN=alice"}; C{sni}, C{client} and C{alpn}
        only when there is one.
        """
        parts = [self.version, self.cipher]
        if self.serverName:
            parts.append(f"sni={self.serverName}")
        if self.clientSubject:
            parts.append(f'client="{self.clientSubject}"')
        if self.alpn:
            parts.append(f"alpn={self.alpn}")
        return " ".join(parts)


def _printable(text: str) -> str:
    if text.isprintable():
        # The usual case (an SNI name, a subject), checked in C: the same
        # test, character by character, as below.
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def connectionInfo(
    transport: TLSMemoryBIOProtocol | SSL.Connection | object,
) -> TLSConnectionInfo | None:
    """
    What the handshake of C{transport} negotiated.

    @param transport: the transport of a protocol under L{wrapFactory} (a
        L{TLSMemoryBIOProtocol}), or its L{SSL.Connection}. Call it once the
        handshake has completed (C{handshakeCompleted}) and keep the result:
        Twisted drops the OpenSSL connection when the connection is lost.
    @return: L{None} for a transport that is not TLS, or whose handshake has
        not completed, or that is already gone.
    """
    if isinstance(transport, TLSMemoryBIOProtocol):
        connection = transport.getHandle()
    else:
        connection = transport
    if not isinstance(connection, SSL.Connection):
        return None
    cipher = connection.get_cipher_name()
    if cipher is None:
        return None
    rawName = connection.get_servername()
    serverName = (
        _printable(rawName.decode("ascii", "backslashreplace")) if rawName else None
    )
    peer = connection.get_peer_certificate(as_cryptography=True)
    subject = _printable(peer.subject.rfc4514_string()) if peer is not None else None
    selected = connection.get_alpn_proto_negotiated()
    return TLSConnectionInfo(
        version=connection.get_protocol_version_name(),
        cipher=cipher,
        serverName=serverName,
        clientSubject=subject,
        alpn=_printable(selected.decode("ascii", "backslashreplace"))
        if selected
        else None,
    )
