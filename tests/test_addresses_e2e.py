"""
End to end: an IPv4 client of a dual-stack listener is an IPv4 client in
the log and in the PROXY header the backend gets.
"""

import socket

from twisted.trial.unittest import TestCase

from tests.e2e import backendOption, runGateway
from tests.reliability import connect
from tests.test_proxyprotocol_e2e import headerBackend


def _dualStackUnavailable() -> str | None:
    """
    Why this machine cannot take IPv4 connections on an IPv6 socket, or
    C{None} when it can.
    """
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6) as listener:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listener.bind(("::", 0))
            listener.listen(1)
            port = listener.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
    except OSError as error:
        return f"no dual-stack IPv6 socket on this machine: {error}"
    return None


class DualStackTests(TestCase):
    skip = _dualStackUnavailable()

    async def _check(self, listen: str, version: str) -> None:
        backend, backendPort = headerBackend(self)
        gateway = await runGateway(
            self,
            ["--listen", listen]
            + backendOption(backendPort)
            + ["--backend-proxy-protocol", version],
        )
        client = await connect(gateway.port())
        client.send(b"hello\n")
        await client.untilLines(1)
        self.assertEqual(client.received, b"HELLO\n")
        ((source, destination),) = backend.headers
        # Twisted's parser gives IPv4Address for TCP4 / AF_INET only.
        self.assertEqual(type(source).__name__, "IPv4Address", version)
        self.assertEqual((source.host, source.port), ("127.0.0.1", client.localPort))
        self.assertEqual(
            (destination.host, destination.port), ("127.0.0.1", gateway.port())
        )
        client.halfClose()
        await client.untilClosed()
        await gateway.logged(f"closed tcp6:0 127.0.0.1:{client.localPort} via")
        self.assertNotIn("ffff", gateway.log())

    async def test_anyAddressV1(self):
        """
        tcp6 on C{::}, an IPv4 client: C{PROXY TCP4 127.0.0.1 ...}, and the
        closed line names C{127.0.0.1:PORT}.
        """
        await self._check("tcp6:0:interface=\\:\\:", "v1")

    async def test_mappedInterfaceV2(self):
        """
        tcp6 on C{::ffff:127.0.0.1}: an C{AF_INET} version 2 header.
        """
        await self._check("tcp6:0:interface=\\:\\:ffff\\:127.0.0.1", "v2")
