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

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger

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
    ) -> None:
        """
        @param isUp: whether the backend of that name is up by its health
            checks (L{gateway.health.HealthChecker.isUp}); without it every
            backend counts as up.
        """
        if not backends:
            raise ValueError("a backend pool needs at least one backend")
        self.backends = backends
        self._clock = clock
        self._connectTimeout = connectTimeout
        self._next = 0
        self.isUp = isUp

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
        handshake.
        Cancelling the result cancels the attempt under way: the caller
        abandons it (its client left, a timer of its own fired, the drain
        ended), which says nothing about the backend, so it is neither
        counted as the backend's failure nor logged, and puts no backend
        into backoff (SPEC section 3). It fails with L{CancelledError}.

        @raise NoBackendAvailable: (asynchronously) when every one failed.
        """
        abandoned = _Abandoned()

        def abandon(result: Deferred[BackendConnection]) -> None:
            abandoned.yes = True
            connecting.cancel()

        result: Deferred[BackendConnection] = Deferred(abandon)
        connecting = Deferred.fromCoroutine(self._connect(connector, abandoned))
        connecting.chainDeferred(result)
        return result

    async def _connect(
        self, connector: BackendConnector, abandoned: _Abandoned
    ) -> BackendConnection:
        tried = []
        candidates = self.candidates()
        if not candidates:
            raise NoBackendAvailable(ALL_DOWN)
        for backend in candidates:
            started = self._clock.seconds()
            connected = backend.endpoint.connect(connector.factoryFor(backend.name))
            attempt: Deferred[BackendConnection] = connected.addCallback(_whenReady)
            attempt.addTimeout(self._connectTimeout, self._clock)
            try:
                protocol = await attempt
            except CancelledError:
                raise
            except Exception as error:
                if abandoned.yes:
                    # An endpoint says so in its own words, such as
                    # ConnectingCancelledError: the attempt was ours to end.
                    raise CancelledError() from None
                backend.failed(self._clock.seconds())
                backend.stats.connectFailed()
                self.log.warn(
                    "backend {backend} connect failed: {error}",
                    backend=backend.name,
                    error=_describe(error),
                )
                tried.append(backend.name)
                continue
            backend.succeeded()
            backend.stats.connected(self._clock.seconds() - started)
            return protocol
        raise NoBackendAvailable("every backend failed: " + ", ".join(tried))


def _whenReady(protocol: IProtocol) -> Deferred[BackendConnection]:
    if not isinstance(protocol, BackendConnection):
        raise TypeError(f"{protocol!r} is not a BackendConnection")
    ready: Deferred[BackendConnection] = protocol.ready
    return ready


class _Abandoned:
    """
    Whether the caller has abandoned one L{BackendPool.connect}.
    """

    yes = False


def _describe(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
