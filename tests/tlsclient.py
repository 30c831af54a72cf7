"""
A blocking TLS client for tests, and the certificates it trusts.

L{TLSClient} is Python's C{ssl.SSLObject} over a plain socket, so a test
controls every step a real client takes: the bytes sent in clear before the
handshake (a PROXY header), the handshake, a close_notify without closing
the socket, a TCP FIN with or without close_notify, and reading on after
either. Its methods block (each socket operation for at most
L{tests.e2e.DEADLINE}): call them through C{deferToThread}.
"""

from __future__ import annotations

import os
import socket
import ssl
from functools import partial

import trustme
from cryptography import x509

from tests.e2e import DEADLINE

# How the server ended the stream, as L{TLSClient.receiveAll} reports it.
CLOSE_NOTIFY = "close_notify"
EOF = "eof"
RESET = "reset"


class Certificates:
    """
    A CA, the certificates it issues, and the files a gateway reads them from.
    """

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.ca = trustme.CA()
        self.caFile = self.write("ca.pem", self.ca.cert_pem.bytes())

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def write(self, name: str, data: bytes) -> str:
        """
        Replace file C{name} at once (a rename), as a deployment tool would.
        """
        path = self.path(name)
        with open(path + ".new", "wb") as f:
            f.write(data)
        os.replace(path + ".new", path)
        return path

    def issue(self, name: str, *identities: str) -> tuple[str, str, x509.Certificate]:
        """
        Issue a certificate for C{identities}; write it as C{name}.crt and its
        key as C{name}.key. Returns both paths and the certificate.
        """
        leaf = self.ca.issue_cert(*identities)
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return (
            self.write(name + ".crt", chain),
            self.write(name + ".key", leaf.private_key_pem.bytes()),
            x509.load_pem_x509_certificate(chain),
        )

    def context(
        self,
        maximumVersion: ssl.TLSVersion | None = None,
        clientCertificate: tuple[str, str] | None = None,
    ) -> ssl.SSLContext:
        """
        A client context that verifies the chain and the name against this CA.
        """
        context = ssl.create_default_context(cafile=self.caFile)
        if maximumVersion is not None:
            context.maximum_version = maximumVersion
        if clientCertificate is not None:
            context.load_cert_chain(*clientCertificate)
        return context


class TLSClient:
    """
    One client connection: TCP (or a unix socket), then TLS on top.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        serverName: str | None,
        port: int | None = None,
        unixPath: str | None = None,
        prefix: bytes = b"",
        source: str | None = None,
    ) -> None:
        """
        Connect (from the loopback address C{source}, when given), send
        C{prefix} in clear, and set up TLS (not handshaking).
        """
        if unixPath is not None:
            self.socket = socket.socket(socket.AF_UNIX)
            self.socket.settimeout(DEADLINE)
            self.socket.connect(unixPath)
        else:
            self.socket = socket.create_connection(
                ("127.0.0.1", port),
                timeout=DEADLINE,
                source_address=None if source is None else (source, 0),
            )
        if prefix:
            self.socket.sendall(prefix)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=serverName
        )

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.socket.sendall(data)

    def _fill(self) -> None:
        if self._incoming.eof:
            # TLS wants more, and there is no more: end the loop in _run.
            raise ConnectionError("the server closed the connection")
        data = self.socket.recv(65536)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def _run(self, operation):
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            else:
                self._flush()
                return result

    def handshake(self) -> TLSClient:
        self._run(self.tls.do_handshake)
        return self

    def send(self, data: bytes) -> None:
        self._run(partial(self.tls.write, data))

    def closeNotify(self, shutTCP: bool = False) -> None:
        """
        End this side of the TLS stream (close_notify), and with C{shutTCP}
        the TCP write side after it, then go on being able to read.
        """
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            # Sent; the server's own close_notify has not arrived (yet).
            pass
        self._flush()
        if shutTCP:
            self.socket.shutdown(socket.SHUT_WR)

    def receive(self, size: int) -> bytes:
        """
        Read exactly C{size} bytes.
        """
        data = b""
        while len(data) < size:
            chunk = self._run(partial(self.tls.read, size - len(data)))
            if not chunk:
                raise ConnectionError(f"close_notify after {data!r}")
            data += chunk
        return data

    def receiveAll(self) -> tuple[bytes, str]:
        """
        Read until the server ends the stream; returns what was read and how
        it ended: L{CLOSE_NOTIFY}, L{EOF} (a TCP close without close_notify)
        or L{RESET}; a TLS alert is raised as C{ssl.SSLError}.
        """
        received = b""
        while True:
            try:
                data = self._run(partial(self.tls.read, 65536))
            except ssl.SSLZeroReturnError:
                return received, CLOSE_NOTIFY
            except ssl.SSLEOFError:
                return received, EOF
            except ConnectionError:
                return received, RESET
            if not data:
                # Python's way of saying close_notify when this side has not
                # sent its own.
                return received, CLOSE_NOTIFY
            received += data

    def peerCertificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.tls.getpeercert(binary_form=True))

    def close(self) -> None:
        self.socket.close()


def rawReceiveAll(sock: socket.socket) -> bytes:
    """
    Read a plain socket until the other side closes it.
    """
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data
