"""
End to end, admission (SPEC section 9) in a real gateway, all on loopback:
the whole of 127.0.0.0/8 is local, so clients bind 127.0.1.1, 127.0.1.2, ...
as their source addresses and the gateway sees them as distinct sources.

  - a flood of connections that never send a byte, and a slowloris, are
    closed by the handshake timeout while a real client keeps being served
    (directly, and behind C{haproxy:} with PROXY headers naming the
    sources);
  - C{--allow}/C{--deny} and the per-source limits, with real source
    addresses: refused connections counted by reason, and logged at most
    once a second with their count;
  - C{--tls-client-name}: names, wildcard depth, URI SANs, across SNI
    contexts and a SIGHUP reload;
  - C{--backend-proxy-protocol v2-ssl}: a backend that parses the TLVs.
"""

from __future__ import annotations

import datetime
import selectors
import socket
import ssl
import struct
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from tests.e2e import (
    DEADLINE,
    UpperBackend,
    backendOption,
    listenBackend,
    runGateway,
    sample,
    scrape,
    untilSample,
)
from tests.test_tls_e2e import NAME, TLSTestCase
from tests.tlsclient import Certificates, TLSClient, rawReceiveAll

log = Logger(namespace="tests.test_admission_e2e")

LISTEN_TLS = ["--listen-tls", "tcp:0:interface=127.0.0.1"]
LISTEN_PROXY_TLS = ["--listen-tls", "haproxy:tcp:0:interface=127.0.0.1"]
LISTEN = ["--listen", "tcp:0:interface=127.0.0.1"]

# The flood of the handshake-timeout tests: SPEC section 9's example, at
# full size (each side holds 1,900 sockets: the machine's 20,000 file
# descriptors allow it).
FLOOD_SOURCES = 200
FLOOD_CONNECTIONS = 1900
FLOOD_OPTIONS = [
    "--max-connections",
    "2000",
    "--max-connections-per-source",
    "50",
    "--handshake-timeout",
    "2",
]
# The real client's pace: a new TLS connection every 50 ms.
REAL_CLIENT_INTERVAL = 0.05
# The slowloris's pace: one byte of its ClientHello a second.
SLOWLORIS_INTERVAL = 1.0
REAL_SOURCE = "127.0.3.1"
SLOWLORIS_SOURCE = "127.0.4.1"


def floodSource(index: int) -> str:
    """
    The loopback address of flood source C{index} (0 to 199): 127.0.1.1 to
    127.0.1.200.
    """
    return f"127.0.1.{1 + index}"


def namedSource(index: int) -> str:
    """
    The address a PROXY header names for flood source C{index}, behind
    C{haproxy:} (the TCP source is then the load balancer's, 127.0.0.1).
    """
    return f"198.18.0.{1 + index}"


def proxyLine(source: str, sourcePort: int, port: int) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 {sourcePort} {port}\r\n".encode()


def connectFrom(source: str, port: int) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", port), timeout=DEADLINE, source_address=(source, 0)
    )


def openFlood(port: int, behindProxy: bool) -> tuple[list[socket.socket], float]:
    """
    Open the flood's connections, round robin over the sources; none sends
    a byte (behind C{haproxy:}, none sends a byte past its PROXY header).

    @return: the sockets, and when the last one was open (monotonic).
    """
    sockets = []
    for n in range(FLOOD_CONNECTIONS):
        index = n % FLOOD_SOURCES
        if behindProxy:
            sock = connectFrom("127.0.0.1", port)
            sock.sendall(proxyLine(namedSource(index), 1024 + n, port))
        else:
            sock = connectFrom(floodSource(index), port)
        sockets.append(sock)
    return sockets, time.monotonic()


def waitAllClosed(sockets: list[socket.socket]) -> float:
    """
    Wait, at most DEADLINE seconds, until the gateway has closed every one
    of C{sockets} (EOF or reset) without sending a byte.

    @return: when the last one closed (monotonic).
    """
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    end = time.monotonic() + DEADLINE
    left = len(sockets)
    try:
        while left:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{left} flood connections still open")
            for key, _ in selector.select(remaining):
                try:
                    data = key.fileobj.recv(1)
                except ConnectionResetError:
                    data = b""
                if data:
                    raise AssertionError(f"the gateway sent {data!r} to the flood")
                selector.unregister(key.fileobj)
                left -= 1
    finally:
        selector.close()
        for sock in sockets:
            sock.close()
    return time.monotonic()


def clientHello() -> bytes:
    """
    The first flight of a TLS client: a ClientHello to send slowly.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=NAME)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def slowloris(port: int, prefix: bytes) -> tuple[int, float]:
    """
    Send C{prefix} (a PROXY header, or nothing), then a ClientHello one byte
    a second, until the gateway closes the connection.

    @return: the bytes of ClientHello sent, and for how long (seconds).
    """
    hello = clientHello()
    sock = connectFrom(SLOWLORIS_SOURCE, port)
    started = time.monotonic()
    try:
        if prefix:
            sock.sendall(prefix)
        for sent, byte in enumerate(hello):
            if time.monotonic() - started > DEADLINE:
                raise AssertionError("the slowloris was never closed")
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return sent, time.monotonic() - started
            # Paced by the wait for the gateway's close.
            sock.settimeout(SLOWLORIS_INTERVAL)
            try:
                data = sock.recv(1)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            if data:
                raise AssertionError(f"the gateway answered the slowloris {data!r}")
            return sent + 1, time.monotonic() - started
        raise AssertionError("the whole ClientHello was sent")
    finally:
        sock.close()


def realClient(
    port: int, context: ssl.SSLContext, behindProxy: bool, stop: threading.Event
) -> list[float]:
    """
    Every REAL_CLIENT_INTERVAL, open a new TLS connection from REAL_SOURCE,
    send one message and read its answer, until C{stop} is set.

    @return: each connection's time from connect to answer, in seconds.
    @raise AssertionError: a message not answered as it should be.
    """
    latencies = []
    n = 0
    nextStart = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        prefix = proxyLine("192.0.2.77", 2000 + n, port) if behindProxy else b""
        client = TLSClient(context, NAME, port, prefix=prefix, source=REAL_SOURCE)
        try:
            client.handshake()
            message = b"message %d\n" % n
            client.send(message)
            answer = client.receive(len(message))
        finally:
            client.close()
        if answer != message.upper():
            raise AssertionError(f"{message!r} answered {answer!r}")
        latencies.append(time.monotonic() - started)
        n += 1
        nextStart += REAL_CLIENT_INTERVAL
        # The pace of the real client, not a wait for the gateway.
        stop.wait(max(0.0, nextStart - time.monotonic()))
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class HandshakeFloodTests(TLSTestCase):
    """
    C{--handshake-timeout} against connections that never finish their
    preamble, while a real client is served.
    """

    async def flood(self, listen: list[str], behindProxy: bool) -> None:
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            listen
            + self.gatewayCertificate()
            + backendOption(backendPort)
            + FLOOD_OPTIONS,
        )
        port = gateway.port()
        listener = next(name for name in gateway.ports if name != "metrics")
        stop = threading.Event()
        real = deferToThread(
            realClient, port, self.certificates.context(), behindProxy, stop
        )
        prefix = proxyLine("192.0.2.99", 999, port) if behindProxy else b""
        slow = deferToThread(slowloris, port, prefix)
        try:
            sockets, lastOpened = await deferToThread(openFlood, port, behindProxy)
            lastClosed = await deferToThread(waitAllClosed, sockets)
            sent, slowFor = await slow
        finally:
            stop.set()
            latencies = await real
        # SPEC: the flood's connections, and the slowloris, end
        # handshake_timeout, each counted as a failed TLS handshake too
        # (behind haproxy:, the header was read and the handshake was the
        # step under way); none was refused, none reached the backend.
        await untilSample(
            gateway,
            FLOOD_CONNECTIONS + 1,
            "gateway_connections_closed_total",
            listener=listener,
            reason="handshake_timeout",
        )
        metrics = await scrape(gateway)
        self.assertEqual(
            sample(metrics, "gateway_tls_handshake_failures_total", listener=listener),
            FLOOD_CONNECTIONS + 1,
        )
        self.assertEqual(
            sample(metrics, "gateway_connections_rejected_total", listener=listener),
            0,
        )
        self.assertEqual(backend.accepted, len(latencies))
        self.assertGreater(len(latencies), 0)
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        log.info(
            "{listener}: {count} flood connections from {sources} sources gone"
            " {after:.2f}s after the last opened; slowloris closed after"
            " {sent} bytes in {slow:.2f}s; real client: {served} connections"
            " served, p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms",
            listener=listener,
            count=FLOOD_CONNECTIONS,
            sources=FLOOD_SOURCES,
            after=lastClosed - lastOpened,
            sent=sent,
            slow=slowFor,
            served=len(latencies),
            p50=p50 * 1000,
            p99=p99 * 1000,
            worst=max(latencies) * 1000,
        )

    async def test_flood(self):
        await self.flood(LISTEN_TLS, behindProxy=False)

    async def test_floodBehindProxy(self):
        await self.flood(LISTEN_PROXY_TLS, behindProxy=True)


def received(sock: socket.socket) -> bytes:
    return rawReceiveAll(sock)


class AddressRulesTests(TLSTestCase):
    """
    C{--allow}, C{--deny} and the per-source limits, with real source
    addresses.
    """

    async def roundTrip(
        self, sock: socket.socket, message: bytes, prefix: bytes = b""
    ) -> None:
        await deferToThread(sock.sendall, prefix + message)
        answer = await deferToThread(sock.recv, len(message))
        self.assertEqual(answer, message.upper())

    async def refusedFrom(self, source: str, port: int, send: bytes = b"") -> None:
        """
        Connect from C{source}, send C{send}, and check the gateway closes
        the connection having sent nothing.
        """
        try:
            sock = await deferToThread(connectFrom, source, port)
        except ConnectionResetError:
            # Closed at accept before the client's connect() returned, which
            # a loaded machine allows: nothing was sent either.
            return
        self.addCleanup(sock.close)
        if send:
            try:
                await deferToThread(sock.sendall, send)
            except (BrokenPipeError, ConnectionResetError):
                pass
        self.assertEqual(await deferToThread(received, sock), b"")

    async def test_allowDeny(self):
        """
        Deny wins over allow; an address outside every allowed network is
        denied; refusals never reach the backend, count only as rejected,
        and are logged with their count.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            LISTEN
            + backendOption(backendPort)
            + ["--allow", "127.0.0.0/24", "--allow", "::1", "--deny", "127.0.0.3"],
        )
        port = gateway.port()
        sock = await deferToThread(connectFrom, "127.0.0.2", port)
        self.addCleanup(sock.close)
        await self.roundTrip(sock, b"allowed\n")
        for source in ("127.0.0.3", "127.0.1.9", "127.0.0.3"):
            await self.refusedFrom(source, port)
        await untilSample(
            gateway, 3, "gateway_connections_rejected_total", reason="denied"
        )
        self.assertEqual(backend.accepted, 1)
        sock.close()
        await untilSample(
            gateway, 1, "gateway_connections_closed_total", reason="client_closed"
        )
        metrics = await scrape(gateway)
        closed = sample(metrics, "gateway_connections_closed_total")
        self.assertEqual(closed, 1)
        # The first at once, the two others in one line a second later.
        await gateway.logged(
            "refused 1 connection(s) on tcp:0: denied (the last from 127.0.0.3:"
        )
        await gateway.logged(
            "refused 2 connection(s) on tcp:0: denied (the last from 127.0.0.3:"
        )

    async def test_perSourceLimit(self):
        """
        --max-connections-per-source: a source's connection over the limit
        is refused; another source is not affected; a closed connection
        gives its place back.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            LISTEN + backendOption(backendPort) + ["--max-connections-per-source", "2"],
        )
        port = gateway.port()
        held = []
        for n in range(2):
            sock = await deferToThread(connectFrom, "127.0.0.2", port)
            self.addCleanup(sock.close)
            await self.roundTrip(sock, b"held %d\n" % n)
            held.append(sock)
        await self.refusedFrom("127.0.0.2", port)
        other = await deferToThread(connectFrom, "127.0.0.4", port)
        self.addCleanup(other.close)
        await self.roundTrip(other, b"other\n")
        await untilSample(
            gateway, 1, "gateway_connections_rejected_total", reason="per_source_limit"
        )
        await gateway.logged("refused 1 connection(s) on tcp:0: per_source_limit")
        held[0].close()
        await untilSample(
            gateway, 1, "gateway_connections_closed_total", reason="client_closed"
        )
        again = await deferToThread(connectFrom, "127.0.0.2", port)
        self.addCleanup(again.close)
        await self.roundTrip(again, b"again\n")
        self.assertEqual(backend.accepted, 4)

    async def test_rateLimit(self):
        """
        --max-connection-rate-per-source: a bucket of one token refilled
        every five seconds lets one of three quick connections through.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            LISTEN
            + backendOption(backendPort)
            + ["--max-connection-rate-per-source", "0.2"],
        )
        port = gateway.port()
        first = await deferToThread(connectFrom, "127.0.0.5", port)
        self.addCleanup(first.close)
        await self.roundTrip(first, b"first\n")
        await self.refusedFrom("127.0.0.5", port)
        await self.refusedFrom("127.0.0.5", port)
        other = await deferToThread(connectFrom, "127.0.0.6", port)
        self.addCleanup(other.close)
        await self.roundTrip(other, b"other\n")
        await untilSample(
            gateway, 2, "gateway_connections_rejected_total", reason="rate_limit"
        )
        self.assertEqual(backend.accepted, 2)

    async def test_mappedAddresses(self):
        """
        On a dual-stack listener an IPv4 client arrives as ::ffff:a.b.c.d:
        the IPv4 rules and per-source counts apply to it as to a.b.c.d, and
        the refusal log names it as IPv4.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            ["--listen", "tcp6:0:interface=\\:\\:"]
            + backendOption(backendPort)
            + ["--deny", "127.0.0.3", "--max-connections-per-source", "1"],
        )
        port = gateway.port()
        await self.refusedFrom("127.0.0.3", port)
        await gateway.logged("denied (the last from 127.0.0.3:")
        held = await deferToThread(connectFrom, "127.0.0.2", port)
        self.addCleanup(held.close)
        await self.roundTrip(held, b"held\n")
        await self.refusedFrom("127.0.0.2", port)
        await untilSample(
            gateway, 1, "gateway_connections_rejected_total", reason="per_source_limit"
        )
        self.assertNotIn("::ffff:", gateway.log())
        self.assertEqual(backend.accepted, 1)

    async def test_deniedBeforeTLS(self):
        """
        On a TLS listener, a denied client is closed at accept: the gateway
        sends it nothing, not even a TLS alert, and counts no handshake.
        """
        gateway = await runGateway(
            self, LISTEN_TLS + self.gatewayCertificate() + ["--deny", "127.0.0.7"]
        )
        await self.refusedFrom("127.0.0.7", gateway.port(), clientHello())
        await untilSample(
            gateway, 1, "gateway_connections_rejected_total", reason="denied"
        )
        metrics = await scrape(gateway)
        self.assertEqual(sample(metrics, "gateway_tls_handshake_failures_total"), 0)

    async def test_behindProxy(self):
        """
        Behind haproxy:, the address the PROXY header names is the one the
        rules see, not the load balancer's.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            ["--listen", "haproxy:tcp:0:interface=127.0.0.1"]
            + backendOption(backendPort)
            + ["--deny", "203.0.113.0/24", "--max-connections-per-source", "1"],
        )
        port = gateway.port()
        sock = await deferToThread(connectFrom, "127.0.0.1", port)
        self.addCleanup(sock.close)
        await self.roundTrip(sock, b"ok\n", proxyLine("198.51.100.1", 1000, port))
        for header in (
            proxyLine("203.0.113.5", 1001, port),
            proxyLine("198.51.100.1", 1002, port),
        ):
            refused = await deferToThread(connectFrom, "127.0.0.1", port)
            self.addCleanup(refused.close)
            await deferToThread(refused.sendall, header + b"never\n")
            self.assertEqual(await deferToThread(received, refused), b"")
        await untilSample(
            gateway, 1, "gateway_connections_rejected_total", reason="denied"
        )
        await untilSample(
            gateway, 1, "gateway_connections_rejected_total", reason="per_source_limit"
        )
        await gateway.logged("denied (the last from 203.0.113.5:1001)")
        metrics = await scrape(gateway)
        self.assertEqual(sample(metrics, "gateway_connections_closed_total"), 0)
        self.assertEqual(backend.accepted, 1)


def selfSigned(directory: str, name: str, uri: str) -> tuple[str, str]:
    """
    A self-signed client certificate whose only name is the URI SAN C{uri}
    (trustme issues none); its certificate and key files.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certFile = f"{directory}/{name}.crt"
    keyFile = f"{directory}/{name}.key"
    with open(certFile, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(keyFile, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return certFile, keyFile


SPIFFE = "spiffe://example.org/ns/prod/sa/orders"


class ClientNameTests(TLSTestCase):
    """
    C{--tls-client-name}: the client certificate must carry one of the names.
    """

    async def test_names(self):
        backend, backendPort = listenBackend(self)
        clients = Certificates(self.mktemp())

        def issued(name, *identities):
            leaf = clients.ca.issue_cert(*identities, common_name=name)
            certFile = clients.write(name + ".crt", leaf.cert_chain_pems[0].bytes())
            keyFile = clients.write(name + ".key", leaf.private_key_pem.bytes())
            return self.certificates.context(clientCertificate=(certFile, keyFile))

        orders = selfSigned(clients.directory, "orders", SPIFFE)
        billing = selfSigned(clients.directory, "billing", SPIFFE + "x")
        # The client CA file: the CA, and the two self-signed certificates
        # (a chain that reaches any certificate of the file is trusted).
        caFile = clients.write(
            "clients.pem",
            b"".join(
                open(path, "rb").read()
                for path in (clients.caFile, orders[0], billing[0])
            ),
        )
        gateway = await runGateway(
            self,
            LISTEN_TLS
            + self.gatewayCertificate()
            + self.gatewayCertificate("other", "other.example")
            + backendOption(backendPort)
            + ["--tls-client-ca", caFile]
            + ["--tls-client-name", "alice.client.example"]
            + ["--tls-client-name", "*.team.example"]
            + ["--tls-client-name", SPIFFE],
        )
        port = gateway.port()

        async def served(context, serverName=NAME):
            client = await self.handshake(port, context=context, serverName=serverName)
            await deferToThread(client.send, b"hi\n")
            self.assertEqual(await deferToThread(client.receive, 3), b"HI\n")

        await served(issued("alice", "alice.client.example"))
        await served(issued("carol", "carol.team.example"))
        await served(self.certificates.context(clientCertificate=orders))
        accepted = backend.accepted
        self.assertEqual(accepted, 3)
        refusals = [
            (issued("bob", "bob.client.example"), "CN=bob", NAME),
            # One label only: a.b.team.example is not *.team.example.
            (issued("deep", "a.deep.team.example"), "CN=deep", NAME),
            (issued("bare", "team.example"), "CN=bare", NAME),
            (self.certificates.context(clientCertificate=billing), "O=billing", NAME),
            # The certificate chosen by SNI checks the names too.
            (issued("bob2", "bob.client.example"), "CN=bob2", "other.example"),
        ]
        for context, subject, serverName in refusals:
            await self.refused(port, context=context, serverName=serverName)
            await gateway.logged(
                f'tls_error (certificate verify failed) client="{subject}'
            )
        # And after a reload, still.
        gateway.transport.signalProcess("HUP")
        await gateway.logged("TLS reload: certificates, keys and CA files re-read")
        await self.refused(port, context=issued("bob3", "bob.client.example"))
        await gateway.logged('client="CN=bob3')
        await served(issued("alice2", "alice.client.example"))
        self.assertEqual(backend.accepted, accepted + 1)
        await untilSample(
            gateway,
            len(refusals) + 1,
            "gateway_connections_closed_total",
            reason="tls_error",
        )


class ProxyTLVBackend(UpperBackend):
    """
    A backend that reads a version 2 PROXY header and its TLVs (parsed
    here from HAProxy's doc/proxy-protocol.txt, section 2.2), then answers
    as L{UpperBackend}.
    """

    headerDone = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        if self.headerDone:
            super().dataReceived(data)
            return
        self.buffer += data
        if len(self.buffer) < 16:
            return
        signature = self.buffer[:12]
        assert signature == b"\r\n\r\n\x00\r\nQUIT\n", signature
        verCmd, family, length = struct.unpack("!BBH", self.buffer[12:16])
        if len(self.buffer) < 16 + length:
            return
        block, rest = self.buffer[16 : 16 + length], self.buffer[16 + length :]
        assert (verCmd, family) == (0x21, 0x11), (verCmd, family)
        source = socket.inet_ntoa(block[:4])
        self.factory.headers.append((source, parseTLVs(block[12:])))
        self.headerDone = True
        if rest:
            super().dataReceived(rest)


def parseTLVs(data: bytes) -> dict:
    """
    TLVs by type; C{PP2_TYPE_SSL} (0x20) as a dict of its client flags,
    verify field and sub-TLVs.
    """
    tlvs: dict = {}
    offset = 0
    while offset < len(data):
        kind, length = struct.unpack_from("!BH", data, offset)
        value = data[offset + 3 : offset + 3 + length]
        assert len(value) == length, "TLV past the end of the block"
        offset += 3 + length
        if kind == 0x20:
            client, verify = struct.unpack_from("!BI", value)
            tlvs[kind] = {"client": client, "verify": verify, **parseTLVs(value[5:])}
        else:
            tlvs[kind] = value
    return tlvs


class ProxySSLTests(TLSTestCase):
    """
    --backend-proxy-protocol v2-ssl.
    """

    async def test_tlvs(self):
        backend, backendPort = listenBackend(self, ProxyTLVBackend)
        backend.headers = []
        clients = Certificates(self.mktemp())
        leaf = clients.ca.issue_cert("alice.client.example", common_name="alice")
        certFile = clients.write("alice.crt", leaf.cert_chain_pems[0].bytes())
        keyFile = clients.write("alice.key", leaf.private_key_pem.bytes())
        gateway = await runGateway(
            self,
            LISTEN_TLS
            + LISTEN
            + self.gatewayCertificate()
            + backendOption(backendPort)
            + ["--tls-client-ca", clients.caFile]
            + ["--backend-proxy-protocol", "v2-ssl"],
        )
        context = self.certificates.context(clientCertificate=(certFile, keyFile))
        client = await self.handshake(gateway.port("tls:0"), context=context)
        await deferToThread(client.send, b"hi\n")
        self.assertEqual(await deferToThread(client.receive, 3), b"HI\n")
        source, tlvs = backend.headers[0]
        self.assertEqual(source, "127.0.0.1")
        self.assertEqual(tlvs[0x02], NAME.encode())
        ssl_ = tlvs[0x20]
        # PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS,
        # verified.
        self.assertEqual((ssl_["client"], ssl_["verify"]), (0x07, 0))
        self.assertEqual(ssl_[0x21], client.tls.version().encode())
        self.assertEqual(ssl_[0x23], client.tls.cipher()[0].encode())
        self.assertEqual(ssl_[0x22], b"alice")
        # A plain client: v2 with no SSL TLV.
        plain = await deferToThread(connectFrom, "127.0.0.1", gateway.port("tcp:0"))
        self.addCleanup(plain.close)
        await deferToThread(plain.sendall, b"plain\n")
        self.assertEqual(await deferToThread(plain.recv, 6), b"PLAIN\n")
        self.assertEqual(backend.headers[1], ("127.0.0.1", {}))
