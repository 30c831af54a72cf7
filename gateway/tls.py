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
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
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


def wrapFactory(
    creator: IOpenSSLServerConnectionCreator,
    factory: IProtocolFactory,
    clock: IReactorTime | None = None,
) -> TLSMemoryBIOFactory:
    """
    Put TLS server-side under the protocols C{factory} builds, for handing to
    a server endpoint's C{listen}.

    The wrapped protocols are connected when the TCP connection is accepted,
    before the handshake; those that provide
    L{twisted.internet.interfaces.IHandshakeListener} learn when it is done.

    @param clock: where the TLS layer schedules its buffered writes; the
        global reactor when L{None}.
    """
    if clock is None:
        return TLSMemoryBIOFactory(creator, False, factory)
    return TLSMemoryBIOFactory(creator, False, factory, clock)
