"""
Tests for L{gateway.tap.makeService} and L{gateway.service.GatewayService}:
what the composed service holds, the order it starts and stops its parts in,
and how it drains, all on a memory reactor and a fake clock.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import trustme
from twisted.application.service import IService, Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway import stats
from gateway.demo import DemoBackendService, Echo
from gateway.metrics import QuietSite
from gateway.notify import NotifyService
from gateway.proxy import ProxyFactory
from gateway.service import (
    GatewayService,
    ListenerService,
    LogReopenService,
    SignalService,
    StopSignals,
)
from gateway.tap import Options, makeService
from gateway.tls import HalfCloseableTLSFactory
from tests.test_notify import Receiver
from tests.test_proxy import Harness

# --drain-timeout of the drain tests, in seconds.
DRAIN_TIMEOUT = 5.0


def parse(*arguments: str) -> Options:
    options = Options()
    options.parseOptions(list(arguments))
    return options


def recordStops(service: IService, stops: list[str]) -> None:
    """
    Note the name of each child of C{service} as it is stopped, in order.
    """
    for child in service:
        name = getattr(child, "listenerName", type(child).__name__)

        def stopService(child=child, name=name, stop=child.stopService):
            stops.append(name)
            return stop()

        child.stopService = stopService


class MakeServiceTests(SynchronousTestCase):
    """
    L{makeService} composes one L{GatewayService} holding every part the
    options ask for, in the order a start and a graceful stop need.
    """

    def setUp(self) -> None:
        # makeService reads NOTIFY_SOCKET: point it at a socket of our own.
        self.receiver = Receiver(self)
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            if name in os.environ:
                self.addCleanup(os.environ.__setitem__, name, os.environ[name])
                del os.environ[name]
        os.environ["NOTIFY_SOCKET"] = self.receiver.environValue
        self.addCleanup(os.environ.pop, "NOTIFY_SOCKET")
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.certFile = os.path.join(directory, "gateway.pem")
        leaf = trustme.CA().issue_cert("localhost")
        leaf.private_key_and_cert_chain_pem.write_to_path(self.certFile)

    def test_everything(self) -> None:
        """
        With no --backend, the demo backend comes first, so that it listens
        before any client can arrive; then the proxy listeners in the order
        given (plain, then TLS), the metrics listener, sd_notify and the
        SIGHUP handler.
        """
        options = parse(
            "--listen",
            "tcp:7001:interface=127.0.0.1",
            "--listen",
            r"tcp6:7002:interface=\:\:1",
            "--listen-tls",
            "tcp:7443:interface=127.0.0.1",
            "--tls-cert",
            self.certFile,
            "--metrics",
            "tcp:9181:interface=127.0.0.1",
            "--drain-timeout",
            "12",
            "--max-connections",
            "7",
        )
        reactor = MemoryReactor()
        service = makeService(options, reactor=reactor)
        self.assertIsInstance(service, GatewayService)
        self.assertEqual((service.drainTimeout, service.connections.limit), (12.0, 7))
        children = [
            (type(child), getattr(child, "listenerName", None), child.drains)
            if isinstance(child, ListenerService)
            else (type(child), None, None)
            for child in service
        ]
        self.assertEqual(
            children,
            [
                (DemoBackendService, None, None),
                (ListenerService, "tcp:7001", True),
                (ListenerService, "tcp6:7002", True),
                (ListenerService, "tls:7443", True),
                (ListenerService, "metrics", False),
                (NotifyService, None, None),
                (SignalService, None, None),
                (StopSignals, None, None),
                (LogReopenService, None, None),
            ],
        )

        service.privilegedStartService()
        bound = [
            (port, interface, type(factory))
            for port, factory, backlog, interface in reactor.tcpServers
        ]
        self.assertIs(reactor.tcpServers[0][1].protocol, Echo)
        self.assertEqual(
            bound,
            [
                (0, "127.0.0.1", Factory),
                (7001, "127.0.0.1", ProxyFactory),
                (7002, "::1", ProxyFactory),
                (7443, "127.0.0.1", HalfCloseableTLSFactory),
                (9181, "127.0.0.1", QuietSite),
            ],
        )
        self.assertEqual(self.receiver.received(), [], "not ready before starting")

    def test_backendAndNoMetrics(self) -> None:
        """
        With a --backend there is no demo backend, and with --metrics none no
        metrics listener.
        """
        options = parse(
            "--backend",
            "tcp:host=127.0.0.1:port=9000",
            "--metrics",
            "none",
        )
        service = makeService(options, reactor=MemoryReactor())
        self.assertEqual(
            [type(child) for child in service],
            [
                ListenerService,
                NotifyService,
                SignalService,
                StopSignals,
                LogReopenService,
            ],
        )
        [listener] = service.listeners()
        self.assertEqual(listener.listenerName, "tcp:7000")
        self.assertEqual(listener.description, "tcp:7000:interface=127.0.0.1")

    def test_lifecycle(self) -> None:
        """
        Starting sends READY=1 once every listener is bound and the reactor
        runs; the SIGHUP
        handler sends RELOADING=1 then READY=1; stopping sends STOPPING=1
        first, closes the proxy listeners, then stops the rest in reverse
        order, the demo backend last.
        """
        options = parse(
            "--listen",
            "tcp:7001:interface=127.0.0.1",
            "--metrics",
            "tcp:9181:interface=127.0.0.1",
        )
        reactor = MemoryReactorClock()
        service = makeService(options, reactor=reactor)
        service.privilegedStartService()
        service.startService()
        # twistd starts services before the reactor runs; SIGTERM is only
        # handled (drained) once it does.
        self.assertEqual(self.receiver.received(), [], "not before the reactor")
        reactor.run()
        self.assertTrue(service.ready())
        self.assertEqual(
            self.receiver.received(), [b"READY=1\nSTATUS=0 active connections"]
        )

        [reload] = [child for child in service if isinstance(child, SignalService)]
        with capturedLogs() as events:
            reload.function()
        [reloading, ready] = self.receiver.received()
        self.assertTrue(reloading.startswith(b"RELOADING=1\nMONOTONIC_USEC="))
        self.assertEqual(ready, b"READY=1\nSTATUS=0 active connections")
        self.assertEqual(
            [event["log_format"] for event in events],
            ["SIGHUP: no TLS files to reload"],
        )

        stops: list[str] = []
        recordStops(service, stops)
        [notify] = [child for child in service if isinstance(child, NotifyService)]
        sendStopping = notify.notifier.stopping

        def stopping(status: str | None = None) -> None:
            stops.append("STOPPING=1")
            sendStopping(status)

        notify.notifier.stopping = stopping
        self.successResultOf(service.stopService())
        self.assertFalse(service.ready())
        self.assertEqual(
            self.receiver.received(),
            [b"STOPPING=1\nSTATUS=draining, 0 active connections"],
        )
        self.assertEqual(
            stops,
            [
                "STOPPING=1",
                "tcp:7001",
                "LogReopenService",
                "StopSignals",
                "SignalService",
                "metrics",
                "DemoBackendService",
            ],
        )
        self.assertFalse(any(child.running for child in service))


class RecordingService(Service):
    """
    Stands for the services stopped after the drain (the demo backend, the
    metrics listener).
    """


class DrainTests(SynchronousTestCase):
    """
    L{GatewayService.stopService} closes the proxy listeners, waits up to the
    drain timeout for open pairs, closes the rest with reason C{shutdown},
    and only then stops its other services.
    """

    def setUp(self) -> None:
        self.harness = Harness()
        self.clock = self.harness.clock
        self.gateway = GatewayService(
            self.harness.connections, self.clock, DRAIN_TIMEOUT
        )
        self.listenReactor = MemoryReactor()
        self.listener = ListenerService(
            "tcp:7000",
            "--listen",
            "tcp:7000",
            TCP4ServerEndpoint(self.listenReactor, 7000),
            self.harness.factory,
        )
        self.listener.setServiceParent(self.gateway)
        self.other = RecordingService()
        self.other.setServiceParent(self.gateway)
        self.hookSaw: list[tuple[bool, bool]] = []
        self.gateway.drainingHooks.append(
            lambda: self.hookSaw.append((self.listener.running, self.other.running))
        )
        self.gateway.startService()
        self.assertTrue(self.gateway.ready())

    def closeReasons(self) -> list[str]:
        return [reason for reason, duration in self.harness.stats.named("closed")]

    def test_timeoutClosesTheRest(self) -> None:
        """
        Pairs still open when the drain timeout expires are aborted with
        reason C{shutdown}; the stop then completes and the other services
        stop.
        """
        first = self.harness.pair()
        second = self.harness.pair()
        with capturedLogs() as events:
            stopping = self.gateway.stopService()
            self.assertEqual(self.hookSaw, [(True, True)])
            self.assertFalse(self.listener.running)
            self.assertIsNone(self.listener.port)
            self.assertTrue(self.gateway.draining)
            self.assertFalse(self.gateway.ready())
            self.clock.advance(DRAIN_TIMEOUT - 0.1)
            self.assertNoResult(stopping)
            self.assertTrue(self.other.running)
            self.assertEqual(len(self.harness.connections), 2)
            self.clock.advance(0.1)
        self.successResultOf(stopping)
        self.assertEqual(self.closeReasons(), [stats.SHUTDOWN, stats.SHUTDOWN])
        for clientTransport in (first[1], second[1]):
            self.assertFalse(clientTransport.connected)
        for backendTransport in (first[3], second[3]):
            self.assertFalse(backendTransport.connected)
        self.assertFalse(self.other.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(
            [event["log_format"] for event in events if "count" in event],
            [
                "draining {count} connections for up to {timeout}s",
                "drain timeout: closing {count} connections",
            ],
        )

    def test_lastPairEndsTheDrain(self) -> None:
        """
        When the last open pair closes by itself, the stop completes at once,
        without waiting for the timeout, and nothing is closed as
        C{shutdown}.
        """
        client, clientTransport, backend, backendTransport = self.harness.pair()
        stopping = self.gateway.stopService()
        self.clock.advance(1)
        self.assertNoResult(stopping)
        self.assertTrue(self.other.running)
        clientTransport.loseConnection()
        self.successResultOf(stopping)
        self.assertEqual(self.closeReasons(), [stats.CLIENT_CLOSED])
        self.assertFalse(self.other.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothingOpen(self) -> None:
        """
        With no open pair, stopping completes at once.
        """
        with capturedLogs() as events:
            self.successResultOf(self.gateway.stopService())
        self.assertFalse(self.other.running)
        self.assertEqual([event for event in events if "count" in event], [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_boundAfterStop(self) -> None:
        """
        A listener whose endpoint binds only after the stop began closes its
        port at once, and the gateway does not become ready (no READY=1 to
        systemd from a stopping gateway).
        """
        gateway = GatewayService(self.harness.connections, self.clock, DRAIN_TIMEOUT)
        late: Deferred[None] = Deferred()
        listener = ListenerService(
            "tcp:7001",
            "--listen",
            "tcp:7001",
            _LateEndpoint(late),
            self.harness.factory,
        )
        listener.setServiceParent(gateway)
        readied: list[bool] = []
        gateway.readyHooks.append(lambda: readied.append(True))
        gateway.startService()
        self.successResultOf(gateway.stopService())
        port = _StoppablePort()
        with capturedLogs() as events:
            late.callback(port)
        self.assertTrue(port.stopped, "a port bound too late is closed at once")
        self.assertIsNone(listener.port)
        self.assertEqual(events, [])
        self.assertEqual(readied, [])
        self.assertFalse(gateway.ready())


class _StoppablePort:
    stopped = False

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 7001)

    def stopListening(self) -> None:
        self.stopped = True


class _LateEndpoint:
    """
    A server endpoint whose C{listen} fires when the test says.
    """

    def __init__(self, result: Deferred) -> None:
        self._result = result

    def listen(self, factory: object) -> Deferred:
        return self._result
