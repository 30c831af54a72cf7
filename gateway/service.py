"""
The services twistd runs: one per listener, and the gateway that holds them.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import stats
from gateway.addresses import describeListening
from gateway.proxy import Connections


class ListenFailed(Exception):
    """
    A listener could not be bound: start-up ends with this one line
    (L{GatewayService.startFailed}).
    """

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


def _exit(line: str) -> NoReturn:
    raise SystemExit(line)


# What a failed bind most often means, beyond the system's own words.
_BIND_HINTS = {
    errno.EADDRINUSE: "another process listens there",
    errno.EADDRNOTAVAIL: "no network interface of this host has that address",
}
_PRIVILEGED_PORTS = 1024


def bindFailure(failure: Failure) -> str:
    """
    Why a listen failed, in words: C{cannot listen on 127.0.0.1:7000:
    address already in use (another process listens there)}.
    """
    error = failure.value
    where = ""
    hints = dict(_BIND_HINTS)
    if isinstance(error, CannotListenError):
        if isinstance(error.port, int):
            host = error.interface or "*"
            host = f"[{host}]" if ":" in host else host
            where = f" on {host}:{error.port}"
            if 0 < error.port < _PRIVILEGED_PORTS:
                hints[errno.EACCES] = (
                    "ports below 1024 need privileges: use the systemd socket units"
                )
        elif isinstance(error.port, str | bytes):
            where = f" on {os.fsdecode(error.port)}"
        error = error.socketError
    number = getattr(error, "errno", None)
    if isinstance(number, int) and number:
        reason = os.strerror(number).lower()
        # symlink(pid, "PATH.lock") names the lock as its second file.
        filename = getattr(error, "filename2", None) or getattr(error, "filename", None)
        if not where and isinstance(filename, str | bytes):
            reason = f"{os.fsdecode(filename)}: {reason}"
        if number in hints:
            reason += f" ({hints[number]})"
    else:
        # Twisted's "Couldn't listen on any:-1: bind(): port must be 0-65535."
        reason = (str(error) or "unknown error").rstrip(".").split(": ")[-1]
    return f"cannot listen{where}: {reason}"


class ListenerService(Service):
    """
    Listens on one endpoint, binding as early as twistd allows.

    Binding happens in C{privilegedStartService} (before twistd drops
    privileges), and a failure there is raised at once: a gateway that cannot
    listen where it was told must not start at all.
    """

    log = Logger(namespace="gateway.service")
    port: IListeningPort | None = None
    _stopped = False

    def __init__(
        self,
        name: str,
        option: str,
        description: str,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        drains: bool = True,
    ) -> None:
        """
        @param drains: whether this listener closes when draining starts (the
            proxy's listeners) or stays until the end (the metrics listener,
            so that C{/readyz} can say the gateway is draining).
        """
        self.listenerName = name
        self.drains = drains
        self.option = option
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self._listening: Deferred[IListeningPort] | None = None
        self.bound: Deferred[None] = Deferred()

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._listening is not None:
            return
        self._listening = self.endpoint.listen(self.factory)
        if not self._listening.called:
            # An endpoint that binds later: report when it is done.
            self._listening.addCallbacks(self._bound, self._failedLate)
            return
        outcome: list[object] = []
        self._listening.addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            raise ListenFailed(self._failureLine(outcome[0]))
        self._bound(outcome[0])  # type: ignore[arg-type]

    def _failureLine(self, failure: Failure) -> str:
        return f"gateway: {self.option} {self.description}: {bindFailure(failure)}"

    def _bound(self, port: IListeningPort) -> None:
        if self._stopped:
            # Bound after the stop began: no one else would ever close it.
            port.stopListening()
            return
        self.port = port
        self.log.info(
            "listening on {listener} at {address}",
            listener=self.listenerName,
            address=describeListening(port.getHost()),
        )
        self.bound.callback(None)

    def _failedLate(self, failure: Failure) -> None:
        line = self._failureLine(failure)
        self.log.critical("{line}", line=line)
        self.bound.errback(ListenFailed(line))

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._stopped = True
        port, self.port = self.port, None
        if port is not None:
            return maybeDeferred(port.stopListening)
        return None


class GatewayService(MultiService):
    """
    Everything one gateway runs, stopped in the order a graceful stop needs.

    Stopping first closes every listener (the kernel then refuses new
    connections), then lets open connections finish for the drain timeout,
    then ends the ones left, and only then stops the other services (the
    demo backend among them), which open connections may still be using.

    It is ready (it logs C{gateway ready} and calls its C{readyHooks}, which
    send systemd C{READY=1}) once every listener is bound and, when C{clock}
    is a reactor, that reactor runs.
    """

    log = Logger(namespace="gateway.service")

    def __init__(
        self,
        connections: Connections,
        clock: IReactorTime,
        drainTimeout: float,
    ) -> None:
        super().__init__()
        self.connections = connections
        self.clock = clock
        self.drainTimeout = drainTimeout
        self.draining = False
        self.drainingHooks: list[Callable[[], None]] = []
        self.readyHooks: list[Callable[[], None]] = []
        # Ends the process when start-up fails (gateway.daemon in twistd).
        self.startFailed: Callable[[str], NoReturn] = _exit
        # Called first when starting, and with the line when a listener
        # fails to bind after the reactor started (the gateway then stops).
        self.startingHooks: list[Callable[[], None]] = []
        self.lateFailureHooks: list[Callable[[str], None]] = []
        # More reasons not to be ready (backend health), one line each.
        self.readinessChecks: list[Callable[[], list[str]]] = []
        self._drainEnded = False
        self._drainWaiter: Deferred[None] | None = None

    def privilegedStartService(self) -> None:
        for hook in self.startingHooks:
            hook()
        self._starting(super().privilegedStartService)

    def _starting(self, start: Callable[[], None]) -> None:
        """
        Run C{start}; a failure ends start-up through L{startFailed}, with
        its one line.
        """
        try:
            start()
        except ListenFailed as error:
            self.startFailed(error.line)
        except Exception:
            self.log.failure("start-up failed")
            self.startFailed(
                "gateway: start-up failed unexpectedly; the log says where"
            )

    def listeners(self) -> list[ListenerService]:
        return [child for child in self if isinstance(child, ListenerService)]

    def startService(self) -> None:
        self._starting(super().startService)
        self.whenBound().addCallbacks(self._whenRunning, self._boundLate)

    def _boundLate(self, failure: Failure) -> None:
        """
        A listener that binds only once the reactor runs failed: start-up
        failed, so the gateway stops.
        """
        error = failure.value
        error = getattr(getattr(error, "subFailure", None), "value", error)
        line = getattr(error, "line", "gateway: a listener failed to bind")
        for hook in self.lateFailureHooks:
            hook(line)
        if IReactorCore.providedBy(self.clock):
            self.clock.callWhenRunning(self.clock.stop)

    def _whenRunning(self, ignored: object) -> None:
        # twistd starts its services before its reactor runs, and the reactor
        # installs the SIGTERM and SIGINT handlers only when it starts: until
        # then a SIGTERM kills the process outright instead of draining it.
        # Ready means bound and stoppable.
        if IReactorCore.providedBy(self.clock):
            self.clock.callWhenRunning(self._allBound, None)
        else:
            self._allBound(None)

    def _allBound(self, ignored: object) -> None:
        if not self.running or self.draining:
            return
        self.log.info(
            "gateway ready: {count} listeners bound", count=len(self.listeners())
        )
        for hook in self.readyHooks:
            hook()

    def ready(self) -> bool:
        """
        Whether every listener is bound, the gateway is not draining, and
        no readiness check has a problem.
        """
        return not self.notReady()

    def notReady(self) -> list[str]:
        """
        Why the gateway should not get traffic, one line per reason, as
        C{/readyz} shows them (SPEC section 5): C{not started}, C{draining},
        C{listener tcp:7000: not bound}, then the C{readinessChecks}'
        (C{service default: no backend up}). Empty when it is ready.
        """
        if self.draining:
            # The listeners close as the drain starts: saying so is noise.
            return ["draining"]
        if not self.running:
            return ["not started"]
        problems = [
            f"listener {listener.listenerName}: not bound"
            for listener in self.listeners()
            if listener.port is None
        ]
        for check in self.readinessChecks:
            problems.extend(check())
        return problems

    def whenBound(self) -> Deferred[list[None]]:
        """
        A Deferred that fires once every listener is bound.
        """
        return gatherResults(
            [listener.bound for listener in self.listeners()], consumeErrors=True
        )

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    def _drained(self) -> Deferred[None]:
        """
        Fires when the open pairs have all closed, the drain timeout has
        passed, or L{endDrain} was called, whichever comes first.
        """
        waiter: Deferred[None] = Deferred()
        self._drainWaiter = waiter

        def done(result: object = None) -> None:
            if not waiter.called:
                waiter.callback(None)

        if self._drainEnded:
            done()
            return waiter
        timer = self.clock.callLater(self.drainTimeout, done)
        empty = self.connections.whenEmpty()
        # Both: the cancellation below ends here, not in an unhandled error.
        empty.addBoth(done)

        def cleanUp(result: None) -> None:
            if timer.active():
                timer.cancel()
            if not empty.called:
                empty.cancel()
            self._drainWaiter = None

        return waiter.addCallback(cleanUp)

    def endDrain(self, why: str) -> None:
        """
        End the drain at once (a second SIGTERM or SIGINT): the pairs still
        open are closed with reason C{shutdown}. Logged once; later calls do
        nothing.

        @param why: what ended it, for the log (C{SIGTERM}).
        """
        if self._drainEnded:
            return
        self._drainEnded = True
        self.log.info(
            "{why} while draining: ending the drain, closing {count} connections",
            why=why,
            count=len(self.connections),
        )
        if self._drainWaiter is not None and not self._drainWaiter.called:
            self._drainWaiter.callback(None)

    async def _stop(self) -> None:
        self.draining = True
        for hook in self.drainingHooks:
            hook()
        listeners = [listener for listener in self.listeners() if listener.drains]
        await gatherResults([maybeDeferred(s.stopService) for s in listeners])
        if len(self.connections):
            self.log.info(
                "draining {count} connections for up to {timeout}s",
                count=len(self.connections),
                timeout=self.drainTimeout,
            )
            await self._drained()
        if len(self.connections):
            if not self._drainEnded:
                self.log.info(
                    "drain timeout: closing {count} connections",
                    count=len(self.connections),
                )
            self.connections.closeAll(stats.SHUTDOWN)
            await self.connections.whenEmpty()
        # Services already stopped by a draining hook are not stopped twice.
        others = [s for s in reversed(list(self)) if s not in listeners and s.running]
        await gatherResults([maybeDeferred(IService(s).stopService) for s in others])


class SignalService(Service):
    """
    Calls a function in the reactor thread each time a signal arrives.

    Used for SIGHUP (reload), which twistd leaves alone. The previous handler
    is put back when the service stops.
    """

    log = Logger(namespace="gateway.service")

    def __init__(
        self, signalNumber: int, function: Callable[[], None], reactor
    ) -> None:
        self.signalNumber = signalNumber
        self.function = function
        self._reactor = reactor
        self._previous = None

    def startService(self) -> None:
        super().startService()
        import signal

        self._previous = signal.signal(self.signalNumber, self._received)

    def _received(self, signalNumber: int, frame: object) -> None:
        # A signal handler may interrupt the reactor anywhere: hand over.
        self._reactor.callFromThread(self.function)

    def stopService(self) -> None:
        super().stopService()
        import signal

        if self._previous is not None:
            signal.signal(self.signalNumber, self._previous)
            self._previous = None


class StopSignals(Service):
    """
    A second SIGTERM or SIGINT ends the drain the first one began.

    The reactor handles the first (it logs it, stops, and twistd then ends
    the process with that signal); once it is stopping, another signal would
    make it call C{reactor.stop} again, which logs a C{ReactorNotRunning}
    traceback and leaves the drain to run its full timeout. So once the
    reactor runs and has installed its handlers, they are wrapped: the
    first signal still reaches the reactor's handler, every later one calls
    L{GatewayService.endDrain} instead.
    """

    log = Logger(namespace="gateway.service")
    signalNumbers = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, gateway: GatewayService, reactor: Any, signals: Any = signal):
        """
        @param signals: the L{signal} module, or a stand-in for tests.
        """
        self._gateway = gateway
        self._reactor = reactor
        self._signals = signals
        self._previous: dict[int, Any] = {}
        self._received = False

    def startService(self) -> None:
        super().startService()
        if IReactorCore.providedBy(self._reactor):
            self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        if not self.running:
            return
        for number in self.signalNumbers:
            previous = self._signals.getsignal(number)
            if callable(previous):
                self._previous[number] = previous
                self._signals.signal(number, self._handle)

    def _handle(self, number: int, frame: object) -> None:
        if self._received or self._gateway.draining:
            # A signal handler may interrupt the reactor anywhere: hand over.
            name = signal.Signals(number).name
            self._reactor.callFromThread(self._gateway.endDrain, name)
            return
        self._received = True
        self._previous[number](number, frame)

    def stopService(self) -> None:
        super().stopService()
        if self._received:
            # The process is ending: a signal now must still not reach a
            # reactor that has already stopped.
            return
        for number, previous in self._previous.items():
            self._signals.signal(number, previous)
        self._previous = {}


class LogReopenService(Service):
    """
    SIGUSR1 reopens twistd's log file, or is logged and ignored.

    twistd installs a SIGUSR1 handler only when it writes a log file, and
    that handler I{rotates} it (renames it C{.1} and starts a new one),
    which does nothing once logrotate has moved the file: the log then
    goes on into the moved file. Without a log file, SIGUSR1 keeps its
    default action and ends the process. Here the file twistd writes is
    reopened at its path instead (C{LogFile.reopen}), as nginx and HAProxy
    do on their reopen signal, and otherwise the signal is logged and
    ignored.

    twistd keeps its C{LogFile} only in its handler's closure (the cell
    C{logFile} of C{UnixAppLogger._getLogObserver}'s C{rotateLog}): it is
    read from there, and C{tests.test_daemon} pins it. Should that change,
    twistd's own handler is called instead.
    """

    log = Logger(namespace="gateway.service")

    def __init__(self, reactor: Any, signals: Any = signal) -> None:
        self._reactor = reactor
        self._signals = signals
        self._previous: Any = None
        self._logFile: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = self._signals.getsignal(signal.SIGUSR1)
        self._logFile = twistdLogFile(self._previous)
        self._signals.signal(signal.SIGUSR1, self._handle)

    def _handle(self, number: int, frame: object) -> None:
        self._reactor.callFromThread(self.reopen)

    def reopen(self) -> None:
        """
        Reopen the log file, or say why there is none to reopen.
        """
        if self._logFile is not None:
            try:
                self._logFile.reopen()
            except OSError as error:
                self.log.error(
                    "SIGUSR1: cannot reopen the log file {path}: {reason}",
                    path=self._logFile.path,
                    reason=(error.strerror or "error").lower(),
                )
                return
            self.log.info("SIGUSR1: log file {path} reopened", path=self._logFile.path)
        elif callable(self._previous):
            self._previous(signal.SIGUSR1, None)
            self.log.info("SIGUSR1: twistd's own handler called (log rotated)")
        else:
            self.log.info("SIGUSR1: twistd writes no log file to reopen; ignored")

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            self._signals.signal(signal.SIGUSR1, self._previous)
            self._previous = None


def twistdLogFile(handler: object) -> Any:
    """
    The C{LogFile} twistd's SIGUSR1 handler rotates, or L{None}.
    """
    code = getattr(handler, "__code__", None)
    closure = getattr(handler, "__closure__", None)
    if code is None or not closure or "logFile" not in code.co_freevars:
        return None
    cell = closure[code.co_freevars.index("logFile")]
    try:
        logFile = cell.cell_contents
    except ValueError:
        return None
    if callable(getattr(logFile, "reopen", None)) and hasattr(logFile, "path"):
        return logFile
    return None
