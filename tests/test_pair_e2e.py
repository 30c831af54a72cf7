"""
End-to-end tests of a pair's life in a real gateway: which layer ended a
connection names its close reason.
"""

from __future__ import annotations

import socket
import time

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.e2e import (
    backendOption,
    listenBackend,
    metrics,
    runGateway,
    untilSample,
    value,
)
from tests.test_tls_e2e import TLSTestCase
from tests.tlsclient import rawReceiveAll

LISTEN_PROXY_TLS = ["--listen-tls", "haproxy:tcp:0:interface=127.0.0.1"]
PROXY_TLS_LISTENER = "proxy+tls:0"


def connectRaw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port))


class PreambleLayerTests(TLSTestCase):
    """
    Behind C{--listen-tls haproxy:...} the PROXY header comes before the
    TLS handshake: a connection that fails or ends during the header is
    the header's business, not a failed handshake.
    """

    async def test_badProxyHeaderBeforeTLS(self):
        """
        An HTTP request where the PROXY header should be is a protocol
        error with reason proxy_header, logged with it; no handshake
        failed, no backend was reached.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            LISTEN_PROXY_TLS + self.gatewayCertificate() + backendOption(backendPort),
        )
        client = connectRaw(gateway.port())
        self.addCleanup(client.close)
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(await deferToThread(rawReceiveAll, client), b"")
        await gateway.logged("protocol error from client")
        await untilSample(
            gateway,
            1,
            "gateway_connections_closed_total",
            listener=PROXY_TLS_LISTENER,
            reason="protocol_error",
        )
        samples = await metrics(gateway)
        self.assertEqual(
            value(
                samples,
                "gateway_protocol_errors_total",
                listener=PROXY_TLS_LISTENER,
                peer="client",
                reason="proxy_header",
            ),
            1,
        )
        self.assertEqual(
            value(
                samples,
                "gateway_tls_handshake_failures_total",
                listener=PROXY_TLS_LISTENER,
            ),
            0,
        )
        self.assertIn(": proxy_header: PROXY header:", gateway.log())
        self.assertEqual(backend.accepted, 0)

    async def test_closedBeforeProxyHeader(self):
        """
        A connection closed without a byte (a load balancer's TCP check)
        has only closed: client_closed, no failed handshake.
        """
        gateway = await runGateway(self, LISTEN_PROXY_TLS + self.gatewayCertificate())
        connectRaw(gateway.port()).close()
        await untilSample(
            gateway,
            1,
            "gateway_connections_closed_total",
            listener=PROXY_TLS_LISTENER,
            reason="client_closed",
        )
        samples = await metrics(gateway)
        self.assertEqual(
            value(
                samples,
                "gateway_tls_handshake_failures_total",
                listener=PROXY_TLS_LISTENER,
            ),
            0,
        )
        self.assertEqual(
            value(
                samples,
                "gateway_connections_closed_total",
                listener=PROXY_TLS_LISTENER,
                reason="tls_error",
            ),
            0,
        )

    async def test_badHandshakeAfterProxyHeader(self):
        """
        Once the PROXY header is read, the TLS handshake is the layer under
        way: plaintext there is a failed handshake, tls_error.
        """
        gateway = await runGateway(self, LISTEN_PROXY_TLS + self.gatewayCertificate())
        client = connectRaw(gateway.port())
        self.addCleanup(client.close)
        client.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 443\r\nhello\n")
        await deferToThread(rawReceiveAll, client)
        await untilSample(
            gateway,
            1,
            "gateway_connections_closed_total",
            listener=PROXY_TLS_LISTENER,
            reason="tls_error",
        )
        await untilSample(
            gateway,
            1,
            "gateway_tls_handshake_failures_total",
            listener=PROXY_TLS_LISTENER,
        )


# The slow reader's pace, as a client on a slow link reads: 1000 bytes
# every 0.1 s; for three idle timeouts of 2 s; then it reads the rest at
# once. Messages of 999 bytes and their delimiter: 3000 make 3 MB.
SLOW_READ = 1000
SLOW_PAUSE = 0.1
SLOW_IDLE_TIMEOUT = 2
SLOW_SECONDS = 3 * SLOW_IDLE_TIMEOUT
MESSAGE = b"m" * 999
COUNT = 3000
# The slow reader's receive buffer: small, so that its kernel opens its
# window after each few reads. With loopback's 64 KiB segments and the
# default buffers, the window stays shut until about 64 KiB have been read
# (silly window avoidance): 6 s at this pace, when the gateway's kernel
# learns nothing, and no gateway could tell the reader from a dead one.
SLOW_RCVBUF = 4096


def slowRead(sock: socket.socket, total: int) -> int:
    """
    Read C{sock} slowly for L{SLOW_SECONDS}, then the rest at once, up to
    C{total} bytes or the end of the stream; how many bytes were read.
    """
    received = 0
    end = time.monotonic() + SLOW_SECONDS
    while time.monotonic() < end:
        data = sock.recv(SLOW_READ)
        if not data:
            return received
        received += len(data)
        time.sleep(SLOW_PAUSE)
    while received < total:
        data = sock.recv(65536)
        if not data:
            break
        received += len(data)
    return received


def rawBackend(testCase, serve) -> int:
    """
    A backend on a plain listening socket whose one connection C{serve}
    handles in a thread; its port. Accepted sockets get L{SLOW_RCVBUF}.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    testCase.addCleanup(listener.close)
    result = deferToThread(lambda: serve(listener.accept()[0]))
    testCase.addCleanup(lambda: result)
    testCase.served = result
    return listener.getsockname()[1]


class SlowReaderTests(TestCase):
    """
    Bytes moving towards a slow reader are activity for the idle timeout,
    in both directions.
    """

    async def test_slowClient(self):
        """
        The backend sends 3 MB at once; the client reads it slowly, for
        longer than the idle timeout, and gets all of it.
        """

        def blast(sock):
            with sock:
                frame = len(MESSAGE).to_bytes(4, "big") + MESSAGE
                sock.sendall(frame * COUNT)
                sock.recv(1)

        port = rawBackend(self, blast)
        gateway = await runGateway(
            self,
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--idle-timeout",
                str(SLOW_IDLE_TIMEOUT),
            ]
            + backendOption(port),
        )
        client = socket.socket()
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        client.connect(("127.0.0.1", gateway.port()))
        total = (len(MESSAGE) + 1) * COUNT
        self.assertEqual(await deferToThread(slowRead, client, total), total)
        client.close()
        await gateway.logged("client_closed")
        self.assertNotIn("idle_timeout", gateway.log())

    async def test_slowBackend(self):
        """
        The client sends 3 MB at once; the backend reads it slowly, for
        longer than the idle timeout, and gets all of it.
        """
        total = (len(MESSAGE) + 4) * COUNT

        def drain(sock):
            with sock:
                return slowRead(sock, total)

        port = rawBackend(self, drain)
        gateway = await runGateway(
            self,
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--idle-timeout",
                str(SLOW_IDLE_TIMEOUT),
            ]
            + backendOption(port),
        )
        client = connectRaw(gateway.port())
        self.addCleanup(client.close)
        await deferToThread(client.sendall, (MESSAGE + b"\n") * COUNT)
        self.assertEqual(await self.served, total)
        # Only the pair's closed line says it was not ended by the timeout.
        client.close()
        await gateway.loggedClosed()
        self.assertNotIn("idle_timeout", gateway.log())


def slowBackend(testCase) -> int:
    """
    A port whose connects never complete: a listening socket that accepts
    nothing, its queue filled, so that the kernel drops further SYNs.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    testCase.addCleanup(listener.close)
    # A backlog of 0 queues one connection (Linux queues backlog + 1); a
    # few more make sure.
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        testCase.addCleanup(filler.close)
    return listener.getsockname()[1]


class AbandonedConnectTests(TestCase):
    """
    A backend connect the gateway abandons is not the backend's failure.
    """

    async def test_abandoned(self):
        """
        With a slow-connecting backend and a healthy one: clients ended by
        the idle timeout while the slow one connects leave that backend's
        health alone: no "connect failed", no failure counted, no backoff
        (the next client but one is sent to it again).
        """
        slowPort = slowBackend(self)
        backend, healthyPort = listenBackend(self)
        gateway = await runGateway(
            self,
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--idle-timeout",
                "1",
                "--connect-timeout",
                "10",
            ]
            + backendOption(slowPort)
            + backendOption(healthyPort),
        )
        slowName = f"tcp:127.0.0.1:{slowPort}"
        timedOut = connectRaw(gateway.port())
        self.addCleanup(timedOut.close)
        self.assertEqual(await deferToThread(rawReceiveAll, timedOut), b"")
        await gateway.logged("idle_timeout")
        served = connectRaw(gateway.port())
        self.addCleanup(served.close)
        served.sendall(b"hi\n")
        self.assertEqual(await deferToThread(served.recv, 3), b"HI\n")
        served.close()
        await gateway.logged("client_closed")
        # The third client is the slow backend's again (it was not backed
        # off, or the healthy one would have it). It leaves at once; the
        # gateway, which does not read a client before its backend is
        # connected, learns of it only when the idle timeout ends it.
        connectRaw(gateway.port()).close()
        await gateway.logged("idle_timeout", count=2)
        samples = await metrics(gateway)
        self.assertEqual(
            value(samples, "gateway_backend_connect_failures_total", backend=slowName),
            0,
        )
        self.assertNotIn("connect failed", gateway.log())
        self.assertEqual(backend.accepted, 1)


# A PROXY version 2 LOCAL header, as HAProxy's "send-proxy-v2 check" sends:
# the signature, version 2 command LOCAL, family unspecified, no address.
V2_LOCAL_HEADER = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x20\x00\x00\x00"
PROXY_LISTENER = "proxy+tcp:0"


class ProxyLocalTests(TestCase):
    async def test_healthCheck(self):
        """
        A LOCAL connection that closes without a byte opens no backend
        connection and is not logged at info level, though counted; one
        that sends bytes is served.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            ["--listen", "haproxy:tcp:0:interface=127.0.0.1"]
            + backendOption(backendPort),
        )
        check = connectRaw(gateway.port())
        check.sendall(V2_LOCAL_HEADER)
        check.close()
        await untilSample(
            gateway,
            1,
            "gateway_connections_closed_total",
            listener=PROXY_LISTENER,
            reason="client_closed",
        )
        # The close is counted just before its line is written.
        await gateway.loggedClosed("client_closed")
        # twistd -n writes debug events too, with their level.
        self.assertNotIn(f"#info] closed {PROXY_LISTENER}", gateway.log())
        self.assertIn(f"#debug] closed {PROXY_LISTENER}", gateway.log())
        self.assertEqual(backend.accepted, 0)
        client = connectRaw(gateway.port())
        self.addCleanup(client.close)
        client.sendall(V2_LOCAL_HEADER + b"hi\n")
        self.assertEqual(await deferToThread(client.recv, 3), b"HI\n")
        self.assertEqual(backend.accepted, 1)


class CloseLineTests(TLSTestCase):
    async def test_refusedLogged(self):
        """
        Connections refused over --max-connections are logged, one line per
        second at most, with the count of refusals each line stands for.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            ["--listen", "tcp:0:interface=127.0.0.1", "--max-connections", "1"]
            + backendOption(backendPort),
        )
        held = connectRaw(gateway.port())
        self.addCleanup(held.close)
        held.sendall(b"hold\n")
        self.assertEqual(await deferToThread(held.recv, 5), b"HOLD\n")
        for _ in range(3):
            refused = connectRaw(gateway.port())
            self.addCleanup(refused.close)
            self.assertEqual(await deferToThread(rawReceiveAll, refused), b"")
        await gateway.logged("refused 1 connection(s) on tcp:0: limit")
        await gateway.logged("refused 2 connection(s) on tcp:0: limit")

    async def test_tlsDetails(self):
        """
        A TLS connection's close line names the TLS version, cipher and
        SNI name; a failed handshake's, OpenSSL's reason.
        """
        backend, gateway = await self.tlsGateway()
        client = await self.handshake(gateway.port())
        await deferToThread(client.send, b"hi\n")
        self.assertEqual(await deferToThread(client.receive, 3), b"HI\n")
        version = client.tls.version()
        client.close()
        await gateway.logged(f"client_closed {version} ")
        self.assertIn("sni=gw.example", gateway.log())
        plain = connectRaw(gateway.port())
        self.addCleanup(plain.close)
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        await deferToThread(rawReceiveAll, plain)
        await gateway.logged("tls_error (http request)")
