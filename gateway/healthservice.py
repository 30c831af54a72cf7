"""
A service's backend health checks in the running gateway, and the status
page's data (SPEC section 8).

L{gateway.health} checks backends and L{gateway.status} renders a page; this
module joins them to the rest: one L{HealthCheckService} per gateway
service, whose checker reaches each backend through the very endpoint the
service's L{BackendPool} uses (the same TLS verification, the same PROXY
header writer) and tells the pool which backends are down; and
L{StatusSource}, which fills a L{Snapshot} from the objects the metrics
count with, so that the page and C{/metrics} show the same numbers.

Everything here is per service (L{serviceHealth}, L{ServiceView}): a gateway
with several services calls it once for each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from zope.interface import implementer

from gateway.addresses import describeListening
from gateway.backends import Backend, BackendPool
from gateway.headerfirst import HEADER_ATTRIBUTE, HeaderFirstEndpoint
from gateway.health import (
    CHECK_PROXY_HEADERS,
    HealthChecker,
    HealthSettings,
    HealthTarget,
    readinessProblems,
)
from gateway.proxy import Connections
from gateway.service import GatewayService, ListenerService
from gateway.status import (
    BackendStatus,
    ListenerStatus,
    ServiceStatus,
    Snapshot,
    backendStatus,
)


@implementer(IStreamClientEndpoint)
class CheckHeaderEndpoint:
    """
    The pool's L{HeaderFirstEndpoint}, writing a check's own PROXY header
    (a v2 C{LOCAL} or v1 C{PROXY UNKNOWN}, L{CHECK_PROXY_HEADERS}) first on
    each connection, in clear before any TLS handshake, exactly where a
    client's header goes.

    The header is given to the endpoint through the connecting factory's
    C{proxyHeader}, as the pool's connections give theirs; the check's
    L{HealthTarget} then has no C{proxyHeader}, so that the header is
    written once.
    """

    def __init__(self, endpoint: HeaderFirstEndpoint, header: bytes) -> None:
        self.endpoint = endpoint
        self.header = header

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        setattr(protocolFactory, HEADER_ATTRIBUTE, self.header)
        return self.endpoint.connect(protocolFactory)


def checkTargets(
    backends: Sequence[Backend], proxyVersion: str | None
) -> list[HealthTarget]:
    """
    One L{HealthTarget} per backend of a pool, reaching it through the
    pool's own endpoint and reporting to its metrics.

    For a C{tls:} backend that endpoint completes the TLS handshake and
    verifies the backend's certificate and host name before the check
    counts as connected. With C{proxyVersion} (C{v1}, C{v2}, C{v2-ssl}),
    the pool's endpoints are L{HeaderFirstEndpoint}s, and each check writes
    its C{LOCAL}/C{UNKNOWN} header through them.
    """
    targets = []
    for backend in backends:
        endpoint: IStreamClientEndpoint = backend.endpoint
        if proxyVersion is not None and isinstance(endpoint, HeaderFirstEndpoint):
            endpoint = CheckHeaderEndpoint(endpoint, CHECK_PROXY_HEADERS[proxyVersion])
        targets.append(HealthTarget(backend.name, endpoint, stats=backend.stats))
    return targets


class HealthCheckService(Service):
    """
    Runs one service's L{HealthChecker} while the gateway runs: checks
    start with the service, and stopping it cancels the checks under way.
    """

    def __init__(self, checker: HealthChecker) -> None:
        self.checker = checker

    def startService(self) -> None:
        super().startService()
        self.checker.start()

    def stopService(self) -> None:
        super().stopService()
        self.checker.stop()


def serviceHealth(
    service: str,
    pool: BackendPool,
    settings: HealthSettings,
    clock: IReactorTime,
    proxyVersion: str | None = None,
) -> HealthCheckService:
    """
    The health checks of the backends of C{pool}, which from now on gives
    new clients only backends that are up (and none when all are down).

    @param service: the service's name, for logs and C{/readyz}.
    @param proxyVersion: the service's C{--backend-proxy-protocol}, or
        C{None}.
    @return: the service to hang under the gateway; its C{checker} holds
        the states.
    """
    checker = HealthChecker(
        service, checkTargets(pool.backends, proxyVersion), settings, clock
    )
    pool.isUp = checker.isUp
    return HealthCheckService(checker)


@dataclass
class ServiceView:
    """
    What the status page shows of one service, as live objects.

    @ivar listeners: the service's listeners, in the configuration's order.
    @ivar pool: its backends (their connect failures).
    @ivar checker: their health.
    """

    listeners: Sequence[ListenerService]
    pool: BackendPool
    checker: HealthChecker


class StatusSource:
    """
    Fills a L{Snapshot} for each request of the status page, from the
    objects the metrics count with: a listener's active, accepted and
    rejected connections and a backend's connect failures are the plain
    counts L{gateway.metrics.ListenerMetrics} and
    L{gateway.metrics.BackendMetrics} keep beside their series, so the page
    and C{/metrics} agree.

    The active pairs of each backend are counted over the open
    connections, once per request, so that the connections' own path does
    nothing for the page. With 100 backends and 10,000 open pairs, on a
    loaded 2-core test machine, that walk took 6 to 9 ms, and rendering the
    page 0.5 ms (the JSON 0.7 ms): a pause of the order of one C{/metrics}
    scrape, once per page load (the page reloads every 5 s while open).
    """

    def __init__(
        self,
        version: str,
        gateway: GatewayService,
        connections: Connections,
        recorder: Any,
        services: Mapping[str, ServiceView],
        clock: IReactorTime,
    ) -> None:
        """
        @param recorder: the L{gateway.metrics.GatewayMetrics} the
            listeners and backends report to.
        """
        self._version = version
        self._gateway = gateway
        self._connections = connections
        self._recorder = recorder
        self._services = services
        self._clock = clock
        self._started: float | None = None

    def markStarted(self) -> None:
        """
        The gateway is up (a C{readyHook}: every listener bound, the reactor
        running); the uptime counts from here, a moment after the process
        started.
        """
        if self._started is None:
            self._started = self._clock.seconds()

    def __call__(self) -> Snapshot:
        now = self._clock.seconds()
        started = now if self._started is None else self._started
        pairs: Counter[tuple[str, str]] = Counter(
            (connection.factory.name, connection.backendName)
            for connection in self._connections
            if connection.backendName
        )
        services = {}
        for name, view in self._services.items():
            listenerNames = [listener.listenerName for listener in view.listeners]
            services[name] = ServiceStatus(
                listeners=[self._listener(listener) for listener in view.listeners],
                backends=[
                    self._backend(backend, view, now, pairs, listenerNames)
                    for backend in view.pool.backends
                ],
            )
        return Snapshot(
            version=self._version,
            uptime_seconds=now - started,
            draining=self._gateway.draining,
            connections_active=len(self._connections),
            services=services,
        )

    def _listener(self, listener: ListenerService) -> ListenerStatus:
        counts = self._recorder.listener(listener.listenerName)
        port = listener.port
        return ListenerStatus(
            name=listener.listenerName,
            address=None if port is None else describeListening(port.getHost()),
            active=counts.activeCount,
            accepted=counts.acceptedCount,
            rejected=counts.rejectedCount,
        )

    def _backend(
        self,
        backend: Backend,
        view: ServiceView,
        now: float,
        pairs: Counter[tuple[str, str]],
        listenerNames: list[str],
    ) -> BackendStatus:
        active = sum(pairs[listener, backend.name] for listener in listenerNames)
        return backendStatus(
            view.checker.states[backend.name],
            now,
            active,
            self._recorder.backend(backend.name).connectFailures,
        )


def healthProblems(checkers: Mapping[str, HealthChecker]) -> Callable[[], list[str]]:
    """
    A readiness check for L{GatewayService.readinessChecks}: one line per
    service, by name C{->} its checker, whose backends are all down.
    """
    return lambda: readinessProblems(checkers)
