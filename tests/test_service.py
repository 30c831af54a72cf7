"""
Tests for L{gateway.tap.makeService} and L{gateway.service.GatewayService}:
what the composed service holds, the order it starts and stops its parts in,
and how it drains, all on a memory reactor and a fake clock.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import tempfile

import trustme
from twisted.application.service import IService, Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway import stats
from gateway.demo import DemoBackendService, Echo
from gateway.endpoints import LISTEN_BACKLOG
from gateway.healthservice import HealthCheckService
from gateway.metrics import QuietSite
from gateway.notify import NotifyService
from gateway.proxy import ProxyFactory
from gateway.service import (
    GatewayService,
    ListenerService,
    LogReopenService,
    SignalService,
    StopSignals,
    bindFailure,
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
                (HealthCheckService, None, None),
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
        # Every pair's backend connection arrives at the demo: its accept
        # queue is as long as the listeners'.
        self.assertEqual(
            [server[2] for server in reactor.tcpServers], [LISTEN_BACKLOG] * 5
        )
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

    def test_backlog(self) -> None:
        """
        Every listener the gateway binds, of every kind that has a backlog
        (behind C{haproxy:} and with TLS too, the metrics listener as well),
        listens with L{LISTEN_BACKLOG}, unless its string sets C{backlog=}.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        socketPath = os.path.join(directory, "gw.sock")
        options = parse(
            "--listen",
            "tcp:7001:interface=127.0.0.1",
            "--listen",
            r"tcp6:7002:interface=\:\:1",
            "--listen",
            f"unix:{socketPath}",
            "--listen",
            "haproxy:tcp:7003:interface=127.0.0.1",
            "--listen",
            "tcp:7004:interface=127.0.0.1:backlog=10",
            "--listen-tls",
            "tcp:7443:interface=127.0.0.1",
            "--tls-cert",
            self.certFile,
            "--metrics",
            "tcp:9181:interface=127.0.0.1",
            "--backend",
            "tcp:host=127.0.0.1:port=9000",
        )
        reactor = MemoryReactor()
        service = makeService(options, reactor=reactor)
        service.privilegedStartService()
        self.assertEqual(
            [
                (port, backlog)
                for port, factory, backlog, interface in reactor.tcpServers
            ],
            [
                (7001, LISTEN_BACKLOG),
                (7002, LISTEN_BACKLOG),
                (7003, LISTEN_BACKLOG),
                (7004, 10),
                (7443, LISTEN_BACKLOG),
                (9181, LISTEN_BACKLOG),
            ],
        )
        self.assertEqual(
            [
                (path, backlog)
                for path, factory, backlog, mode, pid in reactor.unixServers
            ],
            [(socketPath, LISTEN_BACKLOG)],
        )
        # The names stay those of the strings as given.
        self.assertEqual(
            [listener.description for listener in service.listeners()][-2:],
            ["tcp:7443:interface=127.0.0.1", "tcp:9181:interface=127.0.0.1"],
        )

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
                HealthCheckService,
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
                "HealthCheckService",
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

    def test_endDrain(self) -> None:
        """
        L{GatewayService.endDrain} (a second SIGTERM) ends the drain at once:
        the pairs left are closed with reason C{shutdown}, logged in one
        line, and the stop completes without waiting for the timeout.
        """
        self.harness.pair()
        self.harness.pair()
        with capturedLogs() as events:
            stopping = self.gateway.stopService()
            self.clock.advance(1)
            self.assertNoResult(stopping)
            self.gateway.endDrain("SIGTERM")
            self.gateway.endDrain("SIGINT")
        self.successResultOf(stopping)
        self.assertEqual(self.closeReasons(), [stats.SHUTDOWN, stats.SHUTDOWN])
        self.assertFalse(self.other.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(
            [
                (event["log_format"], event.get("why"), event["count"])
                for event in events
                if "count" in event
            ],
            [
                ("draining {count} connections for up to {timeout}s", None, 2),
                (
                    "{why} while draining: ending the drain, closing {count}"
                    " connections",
                    "SIGTERM",
                    2,
                ),
            ],
        )

    def test_endDrainBeforeItStarts(self) -> None:
        """
        A second signal that arrives before the drain began (the reactor
        had not yet run its shutdown triggers) still ends it at once.
        """
        self.harness.pair()
        self.gateway.endDrain("SIGINT")
        self.successResultOf(self.gateway.stopService())
        self.assertEqual(self.closeReasons(), [stats.SHUTDOWN])

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


class _Signals:
    """
    Stands in for the L{signal} module: handlers kept, not installed.
    """

    def __init__(self, handlers: dict) -> None:
        self.handlers = dict(handlers)

    def getsignal(self, number: int) -> object:
        return self.handlers.get(number, signal.SIG_DFL)

    def signal(self, number: int, handler: object) -> object:
        previous = self.getsignal(number)
        self.handlers[number] = handler
        return previous


class _ThreadlessReactor(MemoryReactorClock):
    def callFromThread(self, function, *args) -> None:
        function(*args)


class StopSignalsTests(SynchronousTestCase):
    """
    L{StopSignals}: the first SIGTERM or SIGINT reaches the reactor's
    handler, any later one ends the drain.
    """

    def setUp(self) -> None:
        self.reactorSaw: list[int] = []
        self.signals = _Signals(
            {
                signal.SIGTERM: lambda number, frame: self.reactorSaw.append(number),
                signal.SIGINT: lambda number, frame: self.reactorSaw.append(number),
            }
        )
        self.original = dict(self.signals.handlers)
        self.reactor = _ThreadlessReactor()
        self.ended: list[str] = []
        self.gateway = GatewayService(Harness().connections, self.reactor, 5)
        self.gateway.endDrain = self.ended.append
        self.service = StopSignals(self.gateway, self.reactor, self.signals)

    def test_installedWhenRunning(self) -> None:
        """
        The reactor installs its handlers when it starts; they are wrapped
        only then.
        """
        self.service.startService()
        self.assertEqual(self.signals.handlers, self.original)
        self.reactor.run()
        self.assertNotEqual(
            self.signals.handlers[signal.SIGTERM], self.original[signal.SIGTERM]
        )

    def test_secondSignal(self) -> None:
        self.service.startService()
        self.reactor.run()
        handler = self.signals.handlers[signal.SIGTERM]
        handler(signal.SIGTERM, None)
        self.assertEqual((self.reactorSaw, self.ended), ([signal.SIGTERM], []))
        self.signals.handlers[signal.SIGINT](signal.SIGINT, None)
        handler(signal.SIGTERM, None)
        self.assertEqual(self.reactorSaw, [signal.SIGTERM])
        self.assertEqual(self.ended, ["SIGINT", "SIGTERM"])
        # The process is ending: the reactor's handlers stay wrapped.
        self.service.stopService()
        self.assertIs(self.signals.handlers[signal.SIGTERM], handler)

    def test_alreadyDraining(self) -> None:
        """
        A stop that began otherwise: the first signal already ends the drain.
        """
        self.service.startService()
        self.reactor.run()
        self.gateway.draining = True
        self.signals.handlers[signal.SIGTERM](signal.SIGTERM, None)
        self.assertEqual((self.reactorSaw, self.ended), ([], ["SIGTERM"]))

    def test_restored(self) -> None:
        """
        Stopped without a signal, the reactor's handlers are put back.
        """
        self.service.startService()
        self.reactor.run()
        self.service.stopService()
        self.assertEqual(self.signals.handlers, self.original)


class _LogFile:
    path = "/var/log/gateway/twistd.log"

    def __init__(self) -> None:
        self.reopened = 0

    def reopen(self) -> None:
        self.reopened += 1


class LogReopenTests(SynchronousTestCase):
    """
    L{LogReopenService}: SIGUSR1 reopens twistd's log file, or is logged
    and ignored; it never ends the process.
    """

    def test_reopen(self) -> None:
        logFile = _LogFile()

        def rotateLog(signal, frame):
            # Shaped like twistd's own handler: a closure over logFile.
            logFile.rotate()

        signals = _Signals({signal.SIGUSR1: rotateLog})
        service = LogReopenService(_ThreadlessReactor(), signals)
        service.startService()
        with capturedLogs() as events:
            signals.handlers[signal.SIGUSR1](signal.SIGUSR1, None)
        self.assertEqual(logFile.reopened, 1)
        self.assertEqual(
            [event["log_format"] for event in events],
            ["SIGUSR1: log file {path} reopened"],
        )
        service.stopService()
        self.assertIs(signals.handlers[signal.SIGUSR1], rotateLog)

    def test_noLogFile(self) -> None:
        signals = _Signals({})
        service = LogReopenService(_ThreadlessReactor(), signals)
        service.startService()
        self.assertTrue(callable(signals.handlers[signal.SIGUSR1]))
        with capturedLogs() as events:
            signals.handlers[signal.SIGUSR1](signal.SIGUSR1, None)
        self.assertEqual(
            [event["log_format"] for event in events],
            ["SIGUSR1: twistd writes no log file to reopen; ignored"],
        )
        service.stopService()
        self.assertEqual(signals.handlers[signal.SIGUSR1], signal.SIG_DFL)


class BindFailureTests(SynchronousTestCase):
    """
    L{bindFailure} says why a listen failed without Python's words.
    """

    def test_inUse(self) -> None:
        error = CannotListenError("127.0.0.1", 7000, OSError(errno.EADDRINUSE, "x"))
        self.assertEqual(
            bindFailure(Failure(error)),
            "cannot listen on 127.0.0.1:7000: address already in use"
            " (another process listens there)",
        )

    def test_privileged(self) -> None:
        error = CannotListenError("", 80, OSError(errno.EACCES, "x"))
        self.assertEqual(
            bindFailure(Failure(error)),
            "cannot listen on *:80: permission denied (ports below 1024 need"
            " privileges: use the systemd socket units)",
        )

    def test_ipv6(self) -> None:
        error = CannotListenError("::1", 7000, OSError(errno.EADDRNOTAVAIL, "x"))
        self.assertEqual(
            bindFailure(Failure(error)),
            "cannot listen on [::1]:7000: cannot assign requested address"
            " (no network interface of this host has that address)",
        )

    def test_unixLock(self) -> None:
        """
        The lock file's symlink names the PID first, the path second.
        """
        error = FileNotFoundError(
            errno.ENOENT, "No such file", "21417", None, "/gone/gw.sock.lock"
        )
        self.assertEqual(
            bindFailure(Failure(error)),
            "cannot listen: /gone/gw.sock.lock: no such file or directory",
        )

    def test_unixSocket(self) -> None:
        error = CannotListenError(None, "/run/gw.sock", OSError(errno.EACCES, "x"))
        self.assertEqual(
            bindFailure(Failure(error)),
            "cannot listen on /run/gw.sock: permission denied",
        )

    def test_notAnOSError(self) -> None:
        error = CannotListenError(
            "", -1, OverflowError("bind(): port must be 0-65535.")
        )
        self.assertEqual(
            bindFailure(Failure(error)),
            "cannot listen on *:-1: port must be 0-65535",
        )


class StartFailedTests(SynchronousTestCase):
    """
    A listener that cannot bind ends start-up through
    L{GatewayService.startFailed}, with its one line.
    """

    def test_listenFailed(self) -> None:
        reactor = MemoryReactor()
        gateway = GatewayService(Harness().connections, reactor, 5)
        ListenerService(
            "tcp:7000",
            "--listen",
            "tcp:7000",
            _FailingEndpoint(),
            Factory(),
        ).setServiceParent(gateway)
        lines: list[str] = []

        def startFailed(line: str):
            lines.append(line)
            raise SystemExit(1)

        gateway.startFailed = startFailed
        self.assertRaises(SystemExit, gateway.privilegedStartService)
        self.assertEqual(
            lines,
            [
                "gateway: --listen tcp:7000: cannot listen on 127.0.0.1:7000:"
                " address already in use (another process listens there)"
            ],
        )

    def test_unexpected(self) -> None:
        """
        Any other exception: its traceback is logged, the line says so.
        """
        gateway = GatewayService(Harness().connections, MemoryReactor(), 5)
        _Exploding().setServiceParent(gateway)
        lines: list[str] = []
        gateway.startFailed = lines.append
        gateway.startService()
        self.assertEqual(
            lines, ["gateway: start-up failed unexpectedly; the log says where"]
        )
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class LateBindTests(SynchronousTestCase):
    def test_stops(self) -> None:
        """
        A listener whose endpoint fails once the reactor runs ends start-up:
        the late-failure hooks get its line and the reactor is stopped.
        """
        reactor = MemoryReactorClock()
        gateway = GatewayService(Harness().connections, reactor, 5)
        late: Deferred = Deferred()
        ListenerService(
            "tcp:7001", "--listen", "tcp:7001", _LateEndpoint(late), Factory()
        ).setServiceParent(gateway)
        lines: list[str] = []
        gateway.lateFailureHooks.append(lines.append)
        gateway.startService()
        reactor.run()
        with capturedLogs():
            late.errback(
                CannotListenError("127.0.0.1", 7001, OSError(errno.EADDRINUSE, "x"))
            )
        self.assertEqual(
            lines,
            [
                "gateway: --listen tcp:7001: cannot listen on 127.0.0.1:7001:"
                " address already in use (another process listens there)"
            ],
        )
        self.assertFalse(reactor.running)


class _FailingEndpoint:
    def listen(self, factory: object) -> Deferred:
        from twisted.internet.defer import fail

        return fail(
            CannotListenError("127.0.0.1", 7000, OSError(errno.EADDRINUSE, "x"))
        )


class _Exploding(Service):
    def startService(self) -> None:
        raise ZeroDivisionError("a bug")
