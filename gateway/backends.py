"""
Choosing a backend: round robin over the configured ones, skipping failures.

A backend whose connection attempt fails or times out is skipped by later
attempts until its backoff has passed (passive health checking); the
attempt that saw it fail moves straight on to the next backend.

Given the active health checks' verdict (L{gateway.health.HealthChecker.isUp}),
the pool also leaves out the backends they say are down, and when every
backend is down it fails a client at once, without trying to connect
(SPEC section 8); the passive backoff applies among those up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import NotConnectingError
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.stats import BackendStats

# After the first failure a backend is skipped for this long; each further
# failure in a row doubles it, up to the maximum.
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0


@runtime_checkable
class BackendConnection(Protocol):
    """
    What the pool needs of the protocol of a backend connection: to know
    when it can carry messages.
    """

    @property
    def ready(self) -> Deferred[Any]:
        """
        Fires once the connection can carry messages (at once over TCP, once
        the backend's certificate is verified over TLS); fails with the
        reason when the connection ends before; cancelling it aborts the
        connection.
        """


class BackendConnector(Protocol):
    """
    What the pool needs of its caller: a factory for each backend it tries.
    """

    def factoryFor(self, backendName: str) -> IProtocolFactory:
        """
        The factory for a connection to the backend called C{backendName};
        the protocols it builds are L{BackendConnection}s.
        """


class NoBackendAvailable(Exception):
    """
    Every backend tried for one client failed, or every backend is down.
    """


# Why a client got no backend when the health checks say none is up.
ALL_DOWN = "every backend is down (health checks)"


@dataclass
class Backend:
    """
    One backend endpoint and what the pool remembers of its health.
    """

    name: str
    endpoint: IStreamClientEndpoint
    stats: BackendStats
    failures: int = 0
    retryAt: float = field(default=0.0)

    def failed(self, now: float) -> None:
        self.failures += 1
        backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (self.failures - 1))
        self.retryAt = now + backoff

    def succeeded(self) -> None:
        self.failures = 0
        self.retryAt = 0.0


class BackendPool:
    """
    Connects each client to one of the backends, in turn.
    """

    log = Logger(namespace="gateway.backends")

    def __init__(
        self,
        backends: list[Backend],
        clock: IReactorTime,
        connectTimeout: float,
        isUp: Callable[[str], bool] | None = None,
        log: Logger | None = None,
    ) -> None:
        """
        @param isUp: whether the backend of that name is up by its health
            checks (L{gateway.health.HealthChecker.isUp}); without it every
            backend counts as up.
        @param log: where connect failures are logged (a service's own
            namespace); the class's when None.
        """
        if not backends:
            raise ValueError("a backend pool needs at least one backend")
        if log is not None:
            self.log = log
        self.backends = backends
        self._clock = clock
        self._connectTimeout = connectTimeout
        self._next = 0
        self.isUp = isUp
        # Plain TCP backends are connected with the reactor's connectTCP
        # (see directTCP) when the clock is a reactor that has it.
        self._tcp: IReactorTCP | None = clock if IReactorTCP.providedBy(clock) else None

    def adopt(self, previous: BackendPool) -> None:
        """
        Take over the passive health of each backend C{previous} also has
        (same name): a reload keeps a backend's state (SPEC section 7), so a
        backend in backoff stays skipped until its backoff ends.
        """
        old = {backend.name: backend for backend in previous.backends}
        for backend in self.backends:
            kept = old.get(backend.name)
            if kept is not None:
                backend.failures = kept.failures
                backend.retryAt = kept.retryAt

    def candidates(self) -> list[Backend]:
        """
        The backends to try for the next client, in order.

        Of the backends up by their health checks, those not in backoff in
        round-robin order; when all of them are in backoff, the one whose
        backoff ends first, so that a recovered backend is found. None when
        every backend is down.
        """
        backends = self.backends
        start = self._next
        self._next = (start + 1) % len(backends)
        rotated = backends[start:] + backends[:start]
        isUp = self.isUp
        if isUp is not None:
            rotated = [backend for backend in rotated if isUp(backend.name)]
            if not rotated:
                return []
        now = self._clock.seconds()
        healthy = [backend for backend in rotated if backend.retryAt <= now]
        return healthy or [min(rotated, key=lambda backend: backend.retryAt)]

    def connect(self, connector: BackendConnector) -> Deferred[BackendConnection]:
        """
        Connect a factory of C{connector}'s to the first backend that
        accepts; fires with the connection's protocol.

        An attempt lasts until the protocol's L{BackendConnection.ready}
        fires, so a TLS backend whose certificate fails verification counts
        as a failed connection, and the connect timeout covers the
        handshake. A plain TCP backend (L{directTCP}) is ready once
        connected: its attempt fires as its protocol is built, before the
        protocol's C{connectionMade}.
        Cancelling the result cancels the attempt under way: the caller
        abandons it (its client left, a timer of its own fired, the drain
        ended), which says nothing about the backend, so it is neither
        counted as the backend's failure nor logged, and puts no backend
        into backoff (SPEC section 3). It fails with L{CancelledError}.

        @raise NoBackendAvailable: (asynchronously) when every one failed.
        """
        candidates = self.candidates()
        if not candidates:
            return fail(NoBackendAvailable(ALL_DOWN))
        attempt = _Attempt(self, connector, candidates)
        attempt.next()
        return attempt.result

    def _failed(self, backend: Backend, error: Exception) -> None:
        backend.failed(self._clock.seconds())
        backend.stats.connectFailed()
        self.log.warn(
            "backend {backend} connect failed: {error}",
            backend=backend.name,
            error=_describe(error),
        )

    def _succeeded(self, backend: Backend, started: float) -> None:
        backend.succeeded()
        backend.stats.connected(self._clock.seconds() - started)


@dataclass(frozen=True)
class DirectTCP:
    """
    Where a plain TCP backend is, for connecting it with
    L{IReactorTCP.connectTCP} itself rather than through its endpoint.

    @ivar host: a host name or IPv4 address, as the endpoint had it.
    @ivar port: the TCP port.
    @ivar timeout: the endpoint's own connect timeout, in seconds (its
        C{timeout=} parameter, 30 by default): the pool's applies too.
    @ivar bindAddress: the local C{(host, port)} to bind first, or None.
    """

    host: str
    port: int
    timeout: float
    bindAddress: tuple[str, int] | None


def directTCP(endpoint: IStreamClientEndpoint) -> DirectTCP | None:
    """
    Where C{endpoint} connects, when it is a plain L{TCP4ClientEndpoint}
    (what C{tcp:host=H:port=P} makes): None for any other endpoint.

    A L{TCP4ClientEndpoint} wraps the caller's factory and protocol in
    objects of its own (C{_WrappingFactory}, C{_WrappingProtocol}) that
    stay with the connection for its life: one more call on every chunk the
    backend sends, and a few hundred bytes per open pair. Its
    C{connect} is C{reactor.connectTCP(host, port, ...)} and nothing else,
    so the pool makes that call itself. The attributes read are private to
    Twisted (unchanged since Twisted 10.1); the tests pin them, and an
    endpoint without them is connected through its C{connect} as any other.
    """
    if type(endpoint) is not TCP4ClientEndpoint:
        return None
    host = getattr(endpoint, "_host", None)
    port = getattr(endpoint, "_port", None)
    timeout = getattr(endpoint, "_timeout", None)
    bindAddress = getattr(endpoint, "_bindAddress", _MISSING)
    if (
        not isinstance(host, str)
        or not isinstance(port, int)
        or not isinstance(timeout, int | float)
        or bindAddress is _MISSING
        or not (bindAddress is None or isinstance(bindAddress, tuple))
    ):
        return None
    return DirectTCP(host, port, timeout, bindAddress)


_MISSING = object()


class _Attempt:
    """
    One client's connect: the candidates tried in turn until one is ready.

    A L{DirectTCP} backend is connected with a L{_DirectFactory} of its
    own, so that such a connect costs no Deferred, endpoint or wrapper; the
    attempt is over, and lets go of everything it held, once connected.

    @ivar result: what L{BackendPool.connect} returned.
    """

    def __init__(
        self, pool: BackendPool, connector: BackendConnector, candidates: list[Backend]
    ) -> None:
        self.pool: BackendPool | None = pool
        self.connector: BackendConnector | None = connector
        self.candidates = candidates
        self.tried: list[str] = []
        self.result: Deferred[BackendConnection] = Deferred(self._abandon)
        # The backend being tried, and when it started.
        self.backend: Backend | None = None
        self.started = 0.0
        # The attempt under way: a connector (direct) or a Deferred.
        self.pending: IConnector | Deferred[BackendConnection] | None = None
        self.abandoned = False

    def next(self) -> None:
        pool = self.pool
        assert pool is not None and self.connector is not None
        if not self.candidates:
            error = NoBackendAvailable("every backend failed: " + ", ".join(self.tried))
            result = self.result
            self._over()
            result.errback(error)
            return
        backend = self.backend = self.candidates.pop(0)
        self.started = pool._clock.seconds()
        tcp = pool._tcp
        direct = directTCP(backend.endpoint)
        if direct is not None and tcp is not None:
            self.pending = tcp.connectTCP(
                direct.host,
                direct.port,
                # Not a ClientFactory, but has all of it that connectTCP uses.
                _DirectFactory(self),  # type: ignore[arg-type]
                # The endpoint's own timeout applied under the pool's.
                timeout=min(pool._connectTimeout, direct.timeout),
                bindAddress=direct.bindAddress,
            )
            return
        connected = backend.endpoint.connect(self.connector.factoryFor(backend.name))
        attempt: Deferred[BackendConnection] = connected.addCallback(_whenReady)
        attempt.addTimeout(pool._connectTimeout, pool._clock)
        self.pending = attempt
        attempt.addCallbacks(self._ready, self._failedThrough)

    # The endpoint path.

    def _ready(self, protocol: BackendConnection) -> None:
        self.pending = None
        if not self.abandoned:
            self._done(protocol)

    def _failedThrough(self, failure: Failure) -> None:
        self.pending = None
        if self.abandoned:
            # CancelledError, or an endpoint's own words for it, such as
            # ConnectingCancelledError: the attempt was ours to end.
            return
        self._failed(failure.value)

    # The direct path (through _DirectFactory).

    def buildProtocol(self, addr: IAddress) -> IProtocol:
        self.pending = None
        assert self.connector is not None and self.backend is not None
        protocol = self.connector.factoryFor(self.backend.name).buildProtocol(addr)
        assert protocol is not None
        self._done(protocol)  # type: ignore[arg-type]
        return protocol

    def connectFailed(self, reason: Failure) -> None:
        self.pending = None
        self._failed(reason.value)

    # Either.

    def _done(self, protocol: BackendConnection) -> None:
        assert self.pool is not None and self.backend is not None
        self.pool._succeeded(self.backend, self.started)
        result = self.result
        self._over()
        result.callback(protocol)

    def _failed(self, error: BaseException | None) -> None:
        if self.abandoned:
            return
        assert self.pool is not None and self.backend is not None
        self.pool._failed(
            self.backend, error if isinstance(error, Exception) else Exception(error)
        )
        self.tried.append(self.backend.name)
        self.next()

    def _abandon(self, result: Deferred[BackendConnection]) -> None:
        self.abandoned = True
        pending, self.pending = self.pending, None
        self._over()
        if isinstance(pending, Deferred):
            pending.cancel()
        elif pending is not None:
            try:
                pending.stopConnecting()
            except NotConnectingError:
                # Connected or failed in the meantime: nothing to stop.
                pass

    def _over(self) -> None:
        # Kept by the connector for the connection's life: hold nothing.
        self.pool = self.connector = self.backend = None
        self.candidates = []
        self.tried = []


@implementer(IProtocolFactory)
class _DirectFactory:
    """
    The client factory of one direct connect (L{IReactorTCP.connectTCP}
    calls what L{ClientFactory} has): it hands the connection's events to
    its L{_Attempt}. Twisted's connector keeps its factory for the
    connection's life, so this one is one slot, emptied once connected.
    """

    __slots__ = ("attempt",)

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt: _Attempt | None = attempt

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        attempt, self.attempt = self.attempt, None
        if attempt is None:
            return None
        return attempt.buildProtocol(addr)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        attempt, self.attempt = self.attempt, None
        if attempt is not None:
            attempt.connectFailed(reason)

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def startedConnecting(self, connector: IConnector) -> None:
        pass

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        pass


def _whenReady(protocol: IProtocol) -> Deferred[BackendConnection]:
    ready = getattr(protocol, "ready", None)
    if not isinstance(ready, Deferred):
        raise TypeError(f"{protocol!r} is not a BackendConnection")
    return ready


def _describe(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
