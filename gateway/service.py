"""
The services twistd runs: one per listener, and the gateway that holds them.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
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


class ListenFailed(SystemExit):
    """
    A listener could not be bound: startup ends with this one line.

    It is a L{SystemExit} so that twistd, which calls
    C{privilegedStartService} before its reactor runs, exits with a clear
    message and no traceback.
    """


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
        return (
            f"gateway: {self.option} {self.description}: cannot listen:"
            f" {failure.getErrorMessage()}"
        )

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
        self.log.critical("{line}", line=self._failureLine(failure))
        self.bound.errback(failure)

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

    def listeners(self) -> list[ListenerService]:
        return [child for child in self if isinstance(child, ListenerService)]

    def startService(self) -> None:
        super().startService()
        self.whenBound().addCallbacks(self._whenRunning, lambda failure: None)

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
        Whether every listener is bound and the gateway is not draining.
        """
        return (
            self.running
            and not self.draining
            and all(listener.port is not None for listener in self.listeners())
        )

    def whenBound(self) -> Deferred[list[None]]:
        """
        A Deferred that fires once every listener is bound.
        """
        return gatherResults([listener.bound for listener in self.listeners()])

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

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
            drained = self.connections.whenEmpty()
            drained.addTimeout(self.drainTimeout, self.clock, lambda result, t: None)
            await drained
        if len(self.connections):
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
