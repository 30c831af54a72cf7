"""
End-to-end tests of a pair's life in a real gateway: which layer ended a
connection names its close reason.
"""

from __future__ import annotations

import socket

from twisted.internet.threads import deferToThread

from tests.e2e import listenBackend, runGateway
from tests.test_tls_e2e import (
    TLSTestCase,
    _fetchMetrics,
    backendOption,
    sample,
    waitForSample,
)
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
        await waitForSample(
            gateway,
            1,
            "gateway_connections_closed_total",
            listener=PROXY_TLS_LISTENER,
            reason="protocol_error",
        )
        metrics = await deferToThread(_fetchMetrics, gateway.port("metrics"))
        self.assertEqual(
            sample(
                metrics,
                "gateway_protocol_errors_total",
                listener=PROXY_TLS_LISTENER,
                peer="client",
                reason="proxy_header",
            ),
            1,
        )
        self.assertEqual(
            sample(
                metrics,
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
        await waitForSample(
            gateway,
            1,
            "gateway_connections_closed_total",
            listener=PROXY_TLS_LISTENER,
            reason="client_closed",
        )
        metrics = await deferToThread(_fetchMetrics, gateway.port("metrics"))
        self.assertEqual(
            sample(
                metrics,
                "gateway_tls_handshake_failures_total",
                listener=PROXY_TLS_LISTENER,
            ),
            0,
        )
        self.assertEqual(
            sample(
                metrics,
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
        await waitForSample(
            gateway,
            1,
            "gateway_connections_closed_total",
            listener=PROXY_TLS_LISTENER,
            reason="tls_error",
        )
        await waitForSample(
            gateway,
            1,
            "gateway_tls_handshake_failures_total",
            listener=PROXY_TLS_LISTENER,
        )
