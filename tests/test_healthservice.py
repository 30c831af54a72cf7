"""
Tests for L{gateway.healthservice}: the checks reach each backend through
the pool's own endpoint (TLS verification, the PROXY header once, in clear),
never count as client connections, and the gateway C{makeService} builds
acts on their verdict.
"""

from __future__ import annotations

import os

import trustme
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.backends import Backend, BackendPool
from gateway.headerfirst import backendEndpoint
from gateway.health import (
    CHECK_PROXY_HEADERS,
    CheckFailed,
    HealthSettings,
    runCheck,
)
from gateway.healthservice import HealthCheckService, checkTargets, serviceHealth
from gateway.proxy import Connections
from gateway.service import GatewayService, ListenerService
from gateway.tap import Options, makeService
from tests.e2e import DEADLINE, BackendFactory, UpperBackend, listenUntilClosed
from tests.test_headerfirst import TLS_HANDSHAKE_RECORD, HeaderThenTLS
from tests.test_metrics import BindsLater, get


class RecordingStats:
    """
    A backend's L{gateway.stats.BackendStats}, writing down every event.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def connected(self, seconds: float) -> None:
        self.events.append(("connected", seconds))

    def connectFailed(self) -> None:
        self.events.append(("connectFailed", None))

    def checked(self, result: str) -> None:
        self.events.append(("checked", result))

    def setUp(self, up: bool) -> None:
        self.events.append(("setUp", up))


class Recording(Protocol):
    """
    A backend that keeps every byte of each connection.
    """

    def connectionMade(self) -> None:
        self.factory.opened(self)
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        self.factory.received.append(self.data)
        self.factory.closed(self)


SETTINGS = HealthSettings(timeout=DEADLINE)


class RealBackendTests(TestCase):
    """
    Checks against real backends on the loopback interface.
    """

    def backend(
        self, description: str, proxyVersion: str | None
    ) -> tuple[Backend, RecordingStats]:
        stats = RecordingStats()
        endpoint = backendEndpoint(reactor, description, proxyVersion is not None)
        return Backend("backend", endpoint, stats), stats

    async def test_proxyHeaderOnce(self) -> None:
        """
        With PROXY headers, a check writes the header of a connection the
        gateway makes for itself (v1 C{UNKNOWN}, v2 C{LOCAL}) once, and
        nothing else; the backend's statistics hear of the check only.
        """
        for version in ("v1", "v2", "v2-ssl"):
            factory = BackendFactory(Recording)
            port = listenUntilClosed(self, factory)
            backend, stats = self.backend(
                f"tcp:host=127.0.0.1:port={port}", proxyVersion=version
            )
            [target] = checkTargets([backend], version)
            await runCheck(target, SETTINGS, reactor)
            await factory.allClosed()
            self.assertEqual(factory.received, [CHECK_PROXY_HEADERS[version]])
            self.assertEqual(stats.events, [])

    async def test_noHeader(self) -> None:
        """
        Without PROXY headers a C{connect} check writes nothing at all.
        """
        factory = BackendFactory(Recording)
        port = listenUntilClosed(self, factory)
        backend, stats = self.backend(f"tcp:host=127.0.0.1:port={port}", None)
        [target] = checkTargets([backend], None)
        await runCheck(target, SETTINGS, reactor)
        await factory.allClosed()
        self.assertEqual(factory.received, [b""])

    def tlsBackend(self, ca: trustme.CA) -> tuple[BackendFactory, BackendFactory, int]:
        issued = ca.issue_cert("localhost")
        options = PrivateCertificate.loadPEM(
            issued.cert_chain_pems[0].bytes() + issued.private_key_pem.bytes()
        ).options()
        upper = BackendFactory(UpperBackend)
        outer = BackendFactory(HeaderThenTLS)
        outer.headers = []  # type: ignore[attr-defined]
        outer.afterHeader = []  # type: ignore[attr-defined]
        outer.tls = TLSMemoryBIOFactory(options, False, upper)  # type: ignore[attr-defined]
        return outer, upper, listenUntilClosed(self, outer)

    def roots(self, ca: trustme.CA) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        ca.cert_pem.write_to_path(os.path.join(directory, "ca.pem"))
        return directory

    async def test_tlsWithHeader(self) -> None:
        """
        A C{tls:} backend behind PROXY headers: the check's C{LOCAL} header
        goes in clear, then the TLS handshake, which completes and is
        verified (the backend's TLS side sees one connection); a backend
        whose certificate does not verify fails the check.
        """
        ca = trustme.CA()
        outer, upper, port = self.tlsBackend(ca)
        backend, stats = self.backend(
            f"tls:localhost:{port}:trustRoots={self.roots(ca)}", proxyVersion="v2"
        )
        [target] = checkTargets([backend], "v2")
        await runCheck(target, SETTINGS, reactor)
        await outer.allClosed()
        # LOCAL carries no addresses; then a TLS record, not a second header.
        self.assertEqual(outer.headers, [(None, None)])  # type: ignore[attr-defined]
        self.assertEqual(outer.afterHeader, [bytes([TLS_HANDSHAKE_RECORD])])  # type: ignore[attr-defined]
        self.assertEqual(upper.accepted, 1)

        other = trustme.CA()
        backend, stats = self.backend(
            f"tls:localhost:{port}:trustRoots={self.roots(other)}", proxyVersion="v2"
        )
        [target] = checkTargets([backend], "v2")
        with self.assertRaises(CheckFailed) as caught:
            await runCheck(target, SETTINGS, reactor)
        self.assertIn("TLS: certificate verify failed", str(caught.exception))
        await outer.allClosed()
        self.assertEqual(stats.events, [])


# The checks of the gateway built below, in seconds and counts.
INTERVAL = 1.0
FALL = 3
RISE = 2


class MakeServiceTests(SynchronousTestCase):
    """
    The gateway C{makeService} builds checks its backend, and when the
    checks say it is down, C{/readyz} says so and clients are closed
    without a connect.
    """

    def setUp(self) -> None:
        options = Options()
        options.parseOptions(
            [
                "--listen",
                "tcp:7000:interface=127.0.0.1",
                "--backend",
                "tcp:host=127.0.0.1:port=9000",
                "--metrics",
                "tcp:9180:interface=127.0.0.1",
                "--health-check-interval",
                str(INTERVAL),
                "--health-check-fall",
                str(FALL),
                "--health-check-rise",
                str(RISE),
            ]
        )
        self.reactor = MemoryReactorClock()
        self.service = makeService(options, reactor=self.reactor)
        self.listeners = {
            listener.listenerName: listener.factory
            for listener in self.service.listeners()
        }
        self.service.privilegedStartService()
        self.service.startService()
        self.reactor.run()

    def checkConnects(self) -> list:
        """
        The connects made so far to the backend's port (checks and pairs).
        """
        return [client for client in self.reactor.tcpClients if client[1] == 9000]

    def runChecks(self, outcome: str) -> None:
        """
        Let one interval pass; the check it starts is refused or accepted.
        """
        before = len(self.checkConnects())
        self.reactor.advance(INTERVAL)
        [(host, port, factory, timeout, bind)] = self.checkConnects()[before:]
        if outcome == "refused":
            factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        else:
            protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
            protocol.makeConnection(StringTransport())

    def test_downAndUp(self) -> None:
        """
        C{fall} refused checks take the backend down: one log line,
        C{/readyz} 503 naming the service, C{gateway_backend_up} 0, and a
        new client is closed at once (C{backend_unavailable}) with no
        connect; C{rise} passed checks bring it back.
        """
        site = self.listeners["metrics"]
        [health] = [c for c in self.service if isinstance(c, HealthCheckService)]
        self.assertEqual(get(site, b"/readyz").code, 200)
        # The first check comes at once (offset 0 of the spread).
        self.reactor.advance(0)
        self.reactor.tcpClients[-1][2].clientConnectionFailed(
            None, Failure(ConnectionRefusedError())
        )
        with capturedLogs() as events:
            for _ in range(FALL - 1):
                self.runChecks("refused")
        self.assertFalse(health.checker.isUp("tcp:127.0.0.1:9000"))
        self.assertEqual(
            [
                formatEvent(event)
                for event in events
                if event["log_namespace"] == "gateway.health"
                and event["log_level"] != LogLevel.debug
            ],
            [
                "backend tcp:127.0.0.1:9000 of default is down:"
                " 3 checks failed: connection refused"
            ],
        )
        response = get(site, b"/readyz")
        self.assertEqual(
            (response.code, response.body), (503, b"service default: no backend up\n")
        )
        self.assertIn(
            b'gateway_backend_up{backend="tcp:127.0.0.1:9000"} 0.0',
            get(site, b"/metrics").body,
        )

        connects = len(self.checkConnects())
        client = self.listeners["tcp:7000"].buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40000)
        )
        transport = StringTransport()
        client.makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.checkConnects()), connects)
        body = get(site, b"/metrics").body
        self.assertIn(
            b'gateway_connections_closed_total{listener="tcp:7000",'
            b'reason="backend_unavailable"} 1.0',
            body,
        )
        self.assertIn(
            b'gateway_backend_connect_failures_total{backend="tcp:127.0.0.1:9000"} 0.0',
            body,
        )

        for _ in range(RISE):
            self.runChecks("accepted")
        self.assertTrue(health.checker.isUp("tcp:127.0.0.1:9000"))
        self.assertEqual(get(site, b"/readyz").code, 200)

    def test_stopCancels(self) -> None:
        """
        Stopping the gateway stops the checks: none is started afterwards.
        """
        self.successResultOf(self.service.stopService())
        connects = len(self.checkConnects())
        self.reactor.advance(INTERVAL * 10)
        self.assertEqual(len(self.checkConnects()), connects)


class ServiceHealthTests(SynchronousTestCase):
    def test_poolFollowsChecker(self) -> None:
        """
        L{serviceHealth} hands the pool its checker's verdict.
        """
        stats = RecordingStats()
        pool = BackendPool(
            [Backend("a", backendEndpoint(reactor, "tcp:host=h:port=1", False), stats)],
            MemoryReactorClock(),
            10,
        )
        health = serviceHealth("default", pool, HealthSettings(), MemoryReactorClock())
        self.assertEqual(pool.isUp, health.checker.isUp)
        health.checker.states["a"].up = False
        self.assertEqual(pool.candidates(), [])


class NotReadyTests(SynchronousTestCase):
    def test_reasons(self) -> None:
        """
        L{GatewayService.notReady} gives C{/readyz} one line per reason:
        not started, then each unbound listener and each readiness check's
        lines, then only C{draining} once the drain has begun.
        """
        clock = MemoryReactorClock()
        service = GatewayService(Connections(10), clock, drainTimeout=5)
        endpoint = BindsLater()
        ListenerService(
            "tcp:7000", "--listen", "tcp:7000", endpoint, Factory()
        ).setServiceParent(service)
        problems: list[str] = []
        service.readinessChecks.append(lambda: problems)
        self.assertEqual(service.notReady(), ["not started"])
        service.privilegedStartService()
        service.startService()
        problems.append("service default: no backend up")
        self.assertEqual(
            service.notReady(),
            ["listener tcp:7000: not bound", "service default: no backend up"],
        )
        self.assertFalse(service.ready())
        endpoint.listening.callback(clock.listenTCP(7000, Factory()))
        self.assertEqual(service.notReady(), ["service default: no backend up"])
        problems.clear()
        self.assertEqual(service.notReady(), [])
        self.assertTrue(service.ready())
        self.successResultOf(service.stopService())
        self.assertEqual(service.notReady(), ["draining"])


class DemoTests(SynchronousTestCase):
    def test_demoChecked(self) -> None:
        """
        The built-in demo backend is checked like any other: once it
        listens, its checks pass and it stays up.
        """
        options = Options()
        options.parseOptions(["--metrics", "none", "--health-check-fall", "1"])
        reactor = MemoryReactorClock()
        service = makeService(options, reactor=reactor)
        [health] = [c for c in service if isinstance(c, HealthCheckService)]
        self.assertEqual(list(health.checker.states), ["demo"])
        service.privilegedStartService()
        service.startService()
        reactor.advance(0)
        # The demo listens on a port the kernel chose (0 here); the check
        # connects there, and the connection completes.
        [(host, port, factory, timeout, bind)] = reactor.tcpClients
        self.assertEqual(host, "127.0.0.1")
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        protocol.makeConnection(StringTransport())
        self.assertEqual(health.checker.states["demo"].lastResult, "success")
        self.assertTrue(health.checker.isUp("demo"))
