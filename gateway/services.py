"""
The running services: built from a L{gateway.config.Configuration} at
start-up, and rebuilt from a new one on a reload (SPEC section 7).

A service, once built (L{BuiltService}), is its backend pool and one proxy
factory per listener, holding the settings its connections are handled
with. L{Services} owns the listeners of every service (children of the
L{gateway.service.GatewayService}) and swaps what they hand connections
to on a reload, as one step:

 1. the new services are built (pools adopt the state of the backends they
    keep), nothing is touched yet;
 2. the listeners added are bound; if one fails, those bound are closed
    again and the reload fails: nothing changed;
 3. each kept listener (same endpoint string) gets its new factory: its
    socket stays open, new connections get the new settings, accepted ones
    keep the factory that built them; removed listeners stop accepting
    (their open pairs run on); added ones join the gateway;
 4. the metrics of what went away are dropped once idle, and one line says
    what changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger

from gateway.admission import Admission
from gateway.backends import Backend, BackendPool
from gateway.codec import framing
from gateway.config import PROXY_V2_SSL, Configuration, ServiceSettings
from gateway.demo import DemoBackendService
from gateway.endpoints import withBacklog
from gateway.headerfirst import backendEndpoint, wrapEndpoint
from gateway.health import HealthChecker
from gateway.healthservice import HealthCheckService, ServiceView, serviceHealth
from gateway.names import backendName, listenerName
from gateway.proxy import ClientProtocol, Connections, ProxyFactory
from gateway.proxyprotocol import HEADERS, isBehindProxy, serverEndpoint
from gateway.refusals import RefusalLog
from gateway.service import GatewayService, ListenerService, ListenFailed
from gateway.stats import Recorder
from gateway.tls import wrapFactory

log = Logger(namespace="gateway.services")


# A listener: its endpoint string, and how many listeners before it have the
# same string (a string such as tcp:0 may be given twice: two sockets).
ListenerKey = tuple[str, int]


def listenerKeys(settings: Iterable[ServiceSettings]) -> list[tuple[ListenerKey, str]]:
    """
    Every listener of C{settings}, in order, as (key, service name).
    """
    seen: dict[str, int] = {}
    keys = []
    for service in settings:
        for description, _ in service.listeners():
            count = seen.get(description, 0)
            seen[description] = count + 1
            keys.append(((description, count), service.name))
    return keys


class ReloadFailed(Exception):
    """
    A reload changed nothing; C{str()} is the line saying why.
    """


class ServiceConnections:
    """
    The open connections of one service, counted against the service's own
    C{max-connections} and, through C{process}, the process's.

    Kept across reloads for as long as the service exists, so that its
    limit counts the pairs every generation of its settings opened.
    """

    def __init__(self, limit: int, process: Connections) -> None:
        self.limit = limit
        self.process = process
        self._open: set[ClientProtocol] = set()

    def __len__(self) -> int:
        return len(self._open)

    def full(self) -> bool:
        return len(self._open) >= self.limit or self.process.full()

    def add(self, connection: ClientProtocol) -> None:
        self._open.add(connection)
        self.process.add(connection)

    def remove(self, connection: ClientProtocol) -> None:
        self._open.discard(connection)
        self.process.remove(connection)


@dataclass
class BuiltService:
    """
    One service as built from its settings.

    @ivar factories: listener key to (listener name, whether TLS, the
        factory its port hands connections to).
    @ivar health: its backends' health checks (started once it is in use).
    """

    settings: ServiceSettings
    pool: BackendPool
    factories: dict[ListenerKey, tuple[str, bool, IProtocolFactory]]
    health: HealthCheckService

    @property
    def name(self) -> str:
        return self.settings.name


class Services:
    """
    The services of one gateway, and their reload.
    """

    def __init__(
        self,
        gateway: GatewayService,
        reactor: Any,
        recorder: Recorder,
        connections: Connections,
    ) -> None:
        self.gateway = gateway
        self.reactor = reactor
        self.recorder = recorder
        self.connections = connections
        self.configuration: Configuration | None = None
        self.built: dict[str, BuiltService] = {}
        self.listeners: dict[ListenerKey, ListenerService] = {}
        self._serviceConnections: dict[str, ServiceConnections] = {}
        self._demo: DemoBackendService | None = None
        # Live views, read at each request: /readyz's health problems, and
        # the status page's services.
        self.checkers: dict[str, HealthChecker] = {}
        self.views: dict[str, ServiceView] = {}
        self._admissions: dict[str, Admission] = {}
        self._refusals: dict[str, RefusalLog] = {}
        gateway.drainingHooks.append(self._stopRefusals)

    def _stopRefusals(self) -> None:
        # Draining: the refusal logs' timers must not hold the reactor up.
        for refusals in self._refusals.values():
            refusals.stop()

    # Building.

    def _demoBackend(self, proxyHeaders: bool, service: str) -> Backend:
        if self._demo is None:
            self._demo = DemoBackendService(self.reactor)
            self._demo.setServiceParent(self.gateway)
        endpoint = self._demo.endpoint()
        if proxyHeaders:
            endpoint = wrapEndpoint(endpoint, tls=False)
        return Backend("demo", endpoint, self.recorder.backend("demo", service))

    def _build(
        self, settings: ServiceSettings, keys: list[ListenerKey]
    ) -> BuiltService:
        name = settings.name
        reactor = self.reactor
        proxyVersion = settings["backend-proxy-protocol"]
        proxyHeaders = proxyVersion is not None
        if settings["backend"]:
            backends = [
                Backend(
                    backendName(description),
                    backendEndpoint(reactor, description, proxyHeaders),
                    self.recorder.backend(backendName(description), name),
                )
                for description in settings["backend"]
            ]
        else:
            backends = [self._demoBackend(proxyHeaders, name)]
        pool = BackendPool(
            backends,
            reactor,
            settings["connect-timeout"],
            log=Logger(namespace=f"gateway.backends.{name}"),
        )
        health = serviceHealth(name, pool, settings.health, reactor, proxyVersion)
        previous = self.built.get(name)
        if previous is not None:
            # A kept backend keeps its passive backoff and its health.
            pool.adopt(previous.pool)
            health.checker.adopt(previous.health.checker)
        connections = self._serviceConnections.get(name)
        if connections is None:
            # Kept from now on: services built for a reload share one count
            # with the ones they replace.
            connections = self._serviceConnections[name] = ServiceConnections(
                settings["max-connections"], self.connections
            )
        maxSize = settings["max-message-size"]
        # WebSocket clients have no byte-stream framing (SPEC section 10).
        clientFraming = None
        if settings.websocket is None:
            clientFraming = framing(settings["client-framing"], maxSize)
        backendFraming = framing(settings["backend-framing"], maxSize)
        sendProxySSL = proxyVersion == PROXY_V2_SSL
        headerVersion = "v2" if sendProxySSL else proxyVersion
        sendProxyHeader = HEADERS[headerVersion] if headerVersion else None
        # Every line about one of its connections names the service.
        proxyLog = Logger(namespace=f"gateway.proxy.{name}")
        # Kept for as long as the service exists, as its connection count:
        # the per-source counts and the refusal log's rate span reloads;
        # the new rules apply when the reload does (_commit).
        admission = self._admissions.get(name)
        if admission is None:
            admission = self._admissions[name] = Admission(settings.admission, reactor)
        refusals = self._refusals.get(name)
        if refusals is None:
            refusals = self._refusals[name] = RefusalLog(proxyLog, reactor)
        factories: dict[ListenerKey, tuple[str, bool, IProtocolFactory]] = {}
        for key, (description, tls) in zip(keys, settings.listeners()):
            listener = listenerName(description, tls=tls)
            factory = ProxyFactory(
                listener,
                clientFraming,
                backendFraming,
                pool.connect,
                connections,  # type: ignore[arg-type]
                reactor,
                self.recorder.listener(listener, name),
                idleTimeout=settings["idle-timeout"],
                tls=tls,
                proxyHeader=isBehindProxy(description),
                sendProxyHeader=sendProxyHeader,
                refusals=refusals,
                admission=admission,
                handshakeTimeout=settings["handshake-timeout"],
                sendProxySSL=sendProxySSL,
                websocket=settings.websocket,
            )
            factory.log = proxyLog
            served: IProtocolFactory = factory
            if tls:
                # checkService read the TLS files of every service with a
                # TLS listener.
                assert settings.tls is not None
                served = wrapFactory(settings.tls, factory, reactor)
            factories[key] = (listener, tls, served)
        return BuiltService(settings, pool, factories, health)

    def _listener(
        self, service: BuiltService, key: ListenerKey, option: str
    ) -> ListenerService:
        description = key[0]
        name, tls, factory = service.factories[key]
        return ListenerService(
            name,
            option + ("listen-tls" if tls else "listen"),
            description,
            serverEndpoint(self.reactor, withBacklog(description)),
            factory,
        )

    def _option(self) -> str:
        if self.configuration is None or self.configuration.path is None:
            return "--"
        return ""

    def _optionOf(self, service: str) -> str:
        prefix = self._option()
        return prefix if prefix == "--" else f"services.{service}: "

    def start(self, configuration: Configuration) -> None:
        """
        Build every service and add its listeners to the gateway (which
        binds them when it starts).
        """
        self.configuration = configuration
        self._apply(configuration)
        for built in self.built.values():
            built.health.setServiceParent(self.gateway)
            for key in built.factories:
                option = self._optionOf(built.name)
                listener = self._listener(built, key, option)
                listener.setServiceParent(self.gateway)
                self.listeners[key] = listener
        self._refreshViews()

    def _refreshViews(self) -> None:
        """
        Point the status page and the readiness checks at the services now
        in use.
        """
        self.checkers.clear()
        self.views.clear()
        for name, built in self.built.items():
            self.checkers[name] = built.health.checker
            listeners = [self.listeners[key] for key in built.factories]
            self.views[name] = ServiceView(listeners, built.pool, built.health.checker)

    def _buildAll(self, configuration: Configuration) -> dict[str, BuiltService]:
        keys: dict[str, list[ListenerKey]] = {
            name: [] for name in configuration.services
        }
        for key, name in listenerKeys(configuration.services.values()):
            keys[name].append(key)
        return {
            name: self._build(settings, keys[name])
            for name, settings in configuration.services.items()
        }

    def _apply(self, configuration: Configuration) -> dict[str, BuiltService]:
        return self._commit(configuration, self._buildAll(configuration))

    def _commit(
        self, configuration: Configuration, built: dict[str, BuiltService]
    ) -> dict[str, BuiltService]:
        previous = self.built
        self.built = built
        self.configuration = configuration
        limit = configuration.process["max-connections"]
        self.connections.limit = limit
        self.gateway.drainTimeout = configuration.process["drain-timeout"]
        kept: dict[str, ServiceConnections] = {}
        for name, service in built.items():
            serviceConnections = self._serviceConnections[name]
            serviceConnections.limit = service.settings["max-connections"]
            kept[name] = serviceConnections
            self._admissions[name].configure(service.settings.admission)
        # A removed service's open pairs keep the count they were added to.
        self._serviceConnections = kept
        self._keepSeries(built)
        return previous

    def _keepSeries(self, built: dict[str, BuiltService]) -> None:
        """
        Keep the metrics of the listeners and backends of C{built} only.
        """
        self.recorder.keepOnly(
            {
                (name, listener)
                for name, service in built.items()
                for listener, _, _ in service.factories.values()
            },
            {
                (name, backend.name)
                for name, service in built.items()
                for backend in service.pool.backends
            },
        )

    # Reloading.

    async def reload(self, configuration: Configuration) -> str:
        """
        Apply C{configuration} as one step (the module's docstring says
        how), and say what changed.

        @raise ReloadFailed: nothing changed; the line says why.
        """
        old = self.configuration
        assert old is not None
        if configuration.process["metrics"] != old.process["metrics"]:
            raise ReloadFailed(
                f"{configuration.path}: metrics: the metrics endpoint cannot"
                " change while the gateway runs: restart it to move it"
            )
        # The service each listener endpoint string belongs to, before and
        # after.
        newOwners = dict(listenerKeys(configuration.services.values()))
        added = [key for key in newOwners if key not in self.listeners]
        removed = [key for key in self.listeners if key not in newOwners]
        built = self._buildAll(configuration)
        newListeners = {
            key: self._listener(
                built[newOwners[key]], key, f"services.{newOwners[key]}: "
            )
            for key in added
        }
        bound: list[ListenerService] = []
        try:
            for listener in newListeners.values():
                await listener.bind()
                bound.append(listener)
        except ListenFailed as error:
            await gatherResults(
                [
                    maybeDeferred(listener.port.stopListening)
                    for listener in bound
                    if listener.port is not None
                ]
            )
            # The series the new services made go again: nothing changed.
            self._keepSeries(self.built)
            line = error.line.removeprefix("gateway: ")
            raise ReloadFailed(f"{configuration.path}: {line}")
        summary = self._describe(
            old,
            configuration,
            [key[0] for key in added],
            [key[0] for key in removed],
        )
        previous = self._commit(configuration, built)
        for key, listener in list(self.listeners.items()):
            if key in removed:
                del self.listeners[key]
                listener.disownServiceParent()
                continue
            owner = built[newOwners[key]]
            name, _, factory = owner.factories[key]
            listener.replaceFactory(factory, name)
            listener.option = (
                f"services.{owner.name}: " + listener.option.rsplit(" ", 1)[-1]
            )
        for key, listener in newListeners.items():
            listener.setServiceParent(self.gateway)
            self.listeners[key] = listener
        # The old checks stop (their states were adopted), the new start.
        for service in previous.values():
            service.health.disownServiceParent()
        for service in built.values():
            service.health.setServiceParent(self.gateway)
        self._refreshViews()
        return summary

    def _describe(
        self,
        old: Configuration,
        new: Configuration,
        added: Iterable[str],
        removed: Iterable[str],
    ) -> str:
        """
        C{services added: x; removed: y; changed: z; listeners added: ...}
        """
        oldNames, newNames = set(old.services), set(new.services)
        changed = sorted(
            name
            for name in oldNames & newNames
            if not old.services[name].sameAs(new.services[name])
        )
        parts = []
        for label, names in (
            ("services added", sorted(newNames - oldNames)),
            ("services removed", sorted(oldNames - newNames)),
            ("services changed", changed),
            ("listeners added", list(added)),
            ("listeners removed", list(removed)),
        ):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        return "; ".join(parts) or "no service changed (TLS files re-read)"

    def reloadTLS(self) -> list[str]:
        """
        Re-read the TLS files of every service (the command line's reload).

        @return: the services whose TLS files were re-read.
        @raise gateway.tls.TLSError: a file cannot be used; that service keeps
            the material it had.
        """
        reloaded = []
        for name, service in self.built.items():
            if service.settings.tls is not None:
                service.settings.tls.reload()
                reloaded.append(name)
        return reloaded
