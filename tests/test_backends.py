"""
Tests for L{gateway.backends}: round robin, passive health and backoff,
driven by a L{Clock} and endpoints the test answers by hand.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
)
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionRefusedError,
    NotConnectingError,
)
from twisted.internet.error import TimeoutError as TCPTimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.backends import (
    ALL_DOWN,
    FIRST_BACKOFF,
    MAX_BACKOFF,
    Backend,
    BackendPool,
    DirectTCP,
    NoBackendAvailable,
    directTCP,
)
from gateway.headerfirst import HeaderFirstEndpoint

CONNECT_TIMEOUT = 10.0


class FakeEndpoint:
    """
    A client endpoint that accepts, refuses, or leaves an attempt hanging,
    as told, and writes down every attempt and cancellation.
    """

    def __init__(self, name, log, behaviour="accept"):
        self.name = name
        self.log = log
        self.behaviour = behaviour
        self.cancelled = 0
        self.pending = []

    def connect(self, factory):
        self.log.append(self.name)
        if self.behaviour == "accept":
            return succeed(factory.buildProtocol(None))
        if self.behaviour == "refuse":
            return Deferred.fromCoroutine(_refused())

        def cancel(attempt):
            self.cancelled += 1

        attempt = Deferred(cancel)
        self.pending.append(attempt)
        return attempt


async def _refused():
    raise ConnectionRefusedError()


class RecordingBackendStats:
    def __init__(self):
        self.connects = []
        self.failures = 0

    def connected(self, seconds):
        self.connects.append(seconds)

    def connectFailed(self):
        self.failures += 1


class ReadyProtocol(Protocol):
    """
    Like L{gateway.proxy.BackendProtocol} over plain TCP: ready at once.
    """

    def __init__(self):
        self.ready = succeed(self)


class NamedFactory(Factory):
    """
    A L{gateway.backends.BackendConnector} that is its own factory for
    every backend, and remembers the name of the last one tried; its
    protocols have a C{ready} Deferred.
    """

    protocol = ReadyProtocol
    backendName = ""

    def factoryFor(self, backendName):
        self.backendName = backendName
        return self


class PoolHarness:
    def __init__(self, *behaviours):
        self.clock = Clock()
        self.log = []
        self.endpoints = [
            FakeEndpoint(name, self.log, behaviour)
            for name, behaviour in zip("abc", behaviours, strict=False)
        ]
        self.stats = [RecordingBackendStats() for _ in self.endpoints]
        self.backends = [
            Backend(endpoint.name, endpoint, stats)
            for endpoint, stats in zip(self.endpoints, self.stats, strict=True)
        ]
        self.pool = BackendPool(self.backends, self.clock, CONNECT_TIMEOUT)

    def connect(self):
        factory = NamedFactory()
        return factory, self.pool.connect(factory)

    def served(self, testCase):
        """
        Connect once, which must succeed at once; the backend's name.
        """
        factory, attempt = self.connect()
        testCase.successResultOf(attempt)
        return factory.backendName

    def behave(self, name, behaviour):
        self.endpoints["abc".index(name)].behaviour = behaviour


class RoundRobinTests(SynchronousTestCase):
    def test_order(self):
        """
        Healthy backends take clients in turn.
        """
        harness = PoolHarness("accept", "accept", "accept")
        served = [harness.served(self) for _ in range(7)]
        self.assertEqual(served, list("abcabca"))
        self.assertEqual(harness.log, list("abcabca"))

    def test_connectTimeRecorded(self):
        harness = PoolHarness("hang")
        factory, attempt = harness.connect()
        harness.clock.advance(2.5)
        harness.endpoints[0].pending[0].callback(ReadyProtocol())
        self.successResultOf(attempt)
        self.assertEqual(harness.stats[0].connects, [2.5])

    def test_needsOne(self):
        self.assertRaises(ValueError, BackendPool, [], Clock(), CONNECT_TIMEOUT)


class HealthTests(SynchronousTestCase):
    def test_failoverAndSkip(self):
        """
        A client whose backend refuses is passed to the next one at once;
        later clients skip the failed backend while it backs off (its turns
        go to the backend after it).
        """
        harness = PoolHarness("accept", "refuse", "accept")
        self.assertEqual(harness.served(self), "a")
        self.assertEqual(harness.served(self), "c")
        self.assertEqual([harness.served(self) for _ in range(4)], list("cacc"))
        self.assertEqual(harness.log.count("b"), 1)
        self.assertEqual(harness.stats[1].failures, 1)

    def test_retryAfterBackoff(self):
        """
        Once its backoff has passed, the failed backend is tried again; when
        it answers, it is healthy again.
        """
        harness = PoolHarness("accept", "refuse", "accept")
        for _ in range(3):
            harness.served(self)
        harness.clock.advance(FIRST_BACKOFF - 0.001)
        self.assertEqual([harness.served(self) for _ in range(3)], list("acc"))
        harness.clock.advance(0.001)
        harness.behave("b", "accept")
        self.assertEqual([harness.served(self) for _ in range(3)], list("abc"))
        self.assertEqual(harness.backends[1].failures, 0)

    def test_backoffDoubles(self):
        """
        Each further failure in a row doubles the backoff, up to the maximum.
        (A lone backend is tried even while it backs off: there is no other.)
        """
        harness = PoolHarness("refuse")
        backoffs = []
        for _ in range(7):
            factory, attempt = harness.connect()
            self.failureResultOf(attempt, NoBackendAvailable)
            backoffs.append(harness.backends[0].retryAt - harness.clock.seconds())
            harness.clock.advance(0.5)
        self.assertEqual(backoffs, [1, 2, 4, 8, 16, MAX_BACKOFF, MAX_BACKOFF])
        self.assertEqual(MAX_BACKOFF, 30)

    def test_timeoutIsFailure(self):
        """
        An attempt that does not finish within the connect timeout is
        cancelled, counted as the backend's failure, and the next backend is
        tried.
        """
        harness = PoolHarness("hang", "accept")
        factory, attempt = harness.connect()
        harness.clock.advance(CONNECT_TIMEOUT - 0.001)
        self.assertNoResult(attempt)
        harness.clock.advance(0.001)
        self.successResultOf(attempt)
        self.assertEqual(factory.backendName, "b")
        self.assertEqual(harness.endpoints[0].cancelled, 1)
        self.assertEqual(harness.stats[0].failures, 1)
        self.assertEqual(harness.backends[0].retryAt, CONNECT_TIMEOUT + FIRST_BACKOFF)

    def test_allDown(self):
        """
        When every backend refuses, the client learns it at once: no time
        passes. While all of them back off, a client costs one attempt only.
        """
        harness = PoolHarness("refuse", "refuse", "refuse")
        factory, attempt = harness.connect()
        failure = self.failureResultOf(attempt, NoBackendAvailable)
        self.assertEqual(str(failure.value), "every backend failed: a, b, c")
        self.assertEqual(harness.clock.seconds(), 0)
        harness.log.clear()
        factory, attempt = harness.connect()
        self.failureResultOf(attempt, NoBackendAvailable)
        self.assertEqual(len(harness.log), 1)

    def test_allBackingOff(self):
        """
        While every backend backs off, the one whose backoff ends first is
        tried, whatever the turn, so that a recovered backend is found.
        """
        harness = PoolHarness("accept", "refuse", "accept")
        self.assertEqual([harness.served(self) for _ in range(2)], list("ac"))
        harness.clock.advance(0.5)
        harness.behave("a", "refuse")
        harness.behave("c", "refuse")
        factory, attempt = harness.connect()
        self.failureResultOf(attempt, NoBackendAvailable)
        # b backs off until 1.0, a and c until 1.5; a has the turn.
        harness.behave("b", "accept")
        harness.log.clear()
        self.assertEqual(harness.served(self), "b")
        self.assertEqual(harness.log, ["b"])

    def test_cancelNotFailure(self):
        """
        Cancelling a connect (the client left) cancels the attempt under way
        and says nothing about the backend's health.
        """
        harness = PoolHarness("hang", "accept")
        factory, attempt = harness.connect()
        attempt.cancel()
        self.failureResultOf(attempt, CancelledError)
        self.assertEqual(harness.endpoints[0].cancelled, 1)
        self.assertEqual(harness.backends[0].failures, 0)
        self.assertEqual(harness.stats[0].failures, 0)
        self.assertEqual(harness.log, ["a"])
        harness.clock.advance(CONNECT_TIMEOUT)
        self.assertEqual(harness.stats[0].failures, 0)


class SlowEndpoint(FakeEndpoint):
    """
    An endpoint whose connect never completes and, cancelled, fails as
    Twisted's own do: with L{ConnectingCancelledError}, not
    L{CancelledError}.
    """

    def connect(self, factory):
        self.log.append(self.name)

        def cancel(attempt):
            self.cancelled += 1
            attempt.errback(ConnectingCancelledError(None))

        attempt = Deferred(cancel)
        self.pending.append(attempt)
        return attempt


class AbandonTests(SynchronousTestCase):
    def test_abandonedNotFailure(self):
        """
        A connect the caller abandons is not the backend's failure, in
        whatever words the endpoint reports the cancellation: not counted,
        not logged, no backoff; the next client gets the next backend, and
        the one after it the slow one again.
        """
        harness = PoolHarness("hang", "accept")
        slow = SlowEndpoint("a", harness.log)
        harness.backends[0].endpoint = slow
        factory, attempt = harness.connect()
        with capturedLogs() as events:
            attempt.cancel()
        self.failureResultOf(attempt, CancelledError)
        self.assertEqual(slow.cancelled, 1)
        self.assertEqual(harness.backends[0].failures, 0)
        self.assertEqual(harness.backends[0].retryAt, 0.0)
        self.assertEqual(harness.stats[0].failures, 0)
        self.assertEqual(events, [])
        self.assertEqual(harness.served(self), "b")
        harness.connect()
        self.assertEqual(harness.log, ["a", "b", "a"])

    def test_ownTimeoutIsFailure(self):
        """
        The pool's own connect timeout is the backend's failure.
        """
        harness = PoolHarness("hang", "accept")
        slow = SlowEndpoint("a", harness.log)
        harness.backends[0].endpoint = slow
        factory, attempt = harness.connect()
        harness.clock.advance(CONNECT_TIMEOUT)
        self.successResultOf(attempt)
        self.assertEqual(harness.stats[0].failures, 1)
        self.assertEqual(harness.backends[0].failures, 1)


class ContractTests(SynchronousTestCase):
    def test_factoryUntouched(self):
        """
        The pool asks its caller for a factory per backend and sets nothing
        on it.
        """

        class Connector:
            def __init__(self):
                self.asked = []

            def factoryFor(self, backendName):
                self.asked.append(backendName)
                return Factory.forProtocol(ReadyProtocol)

        harness = PoolHarness("refuse", "accept")
        connector = Connector()
        protocol = self.successResultOf(harness.pool.connect(connector))
        self.assertIsInstance(protocol, ReadyProtocol)
        self.assertEqual(connector.asked, ["a", "b"])
        self.assertEqual(vars(connector), {"asked": ["a", "b"]})


class ActiveHealthTests(SynchronousTestCase):
    """
    With the health checks' verdict (SPEC section 8), down backends get no
    new clients, and when all are down a client fails without a connect.
    """

    def harness(self, *behaviours):
        harness = PoolHarness(*behaviours)
        harness.down = set()
        harness.pool.isUp = lambda name: name not in harness.down
        return harness

    def test_downSkipped(self):
        """
        A backend the checks say is down is never tried, whatever its turn;
        once up again it takes its turns again.
        """
        harness = self.harness("accept", "accept", "accept")
        harness.down.add("b")
        self.assertEqual([harness.served(self) for _ in range(4)], list("acca"))
        self.assertNotIn("b", harness.log)
        harness.down.clear()
        self.assertEqual([harness.served(self) for _ in range(3)], list("bca"))

    def test_allDownNoConnect(self):
        """
        Every backend down: the client fails at once with
        L{NoBackendAvailable}, no endpoint is asked to connect, and no
        backend counts a connect failure or goes into backoff.
        """
        harness = self.harness("accept", "refuse")
        harness.down.update("ab")
        factory, attempt = harness.connect()
        failure = self.failureResultOf(attempt, NoBackendAvailable)
        self.assertEqual(str(failure.value), ALL_DOWN)
        self.assertEqual(harness.log, [])
        self.assertEqual([stats.failures for stats in harness.stats], [0, 0])
        self.assertEqual([backend.retryAt for backend in harness.backends], [0, 0])

    def test_backoffAmongUp(self):
        """
        The passive backoff stays: among the backends up, one that refused
        is skipped while it backs off; one that is down is not tried even
        when every up one backs off.
        """
        harness = self.harness("refuse", "accept", "accept")
        harness.down.add("c")
        self.assertEqual(harness.served(self), "b")
        self.assertEqual([harness.served(self) for _ in range(3)], list("bbb"))
        self.assertEqual(harness.log.count("a"), 1)
        harness.behave("b", "refuse")
        harness.log.clear()
        factory, attempt = harness.connect()
        self.failureResultOf(attempt, NoBackendAvailable)
        self.assertNotIn("c", harness.log)


class DirectTCPTests(SynchronousTestCase):
    """
    A plain TCP backend is connected with the reactor's C{connectTCP}
    itself, with no endpoint wrapper; any other endpoint through its
    C{connect}.
    """

    def test_pinned(self):
        """
        L{directTCP} reads where a C{tcp:} description connects from
        Twisted's L{TCP4ClientEndpoint}: the private attributes it reads
        are there in this Twisted.
        """
        reactor = MemoryReactorClock()
        self.assertEqual(
            directTCP(clientFromString(reactor, "tcp:host=127.0.0.1:port=7001")),
            DirectTCP("127.0.0.1", 7001, 30, None),
        )
        self.assertEqual(
            directTCP(
                clientFromString(
                    reactor,
                    "tcp:host=backend.example:port=7:bindAddress=127.0.0.2:timeout=4",
                )
            ),
            DirectTCP("backend.example", 7, 4, ("127.0.0.2", 0)),
        )

    def test_othersNot(self):
        """
        Any other endpoint, a subclass or wrapper of the TCP one included,
        is not connected directly.
        """
        reactor = MemoryReactorClock()

        class Subclass(TCP4ClientEndpoint):
            pass

        others = [
            clientFromString(reactor, "unix:path=/run/backend.sock"),
            TCP6ClientEndpoint(reactor, "::1", 7),
            clientFromString(reactor, "tls:host=127.0.0.1:port=7"),
            Subclass(reactor, "127.0.0.1", 7),
            HeaderFirstEndpoint(clientFromString(reactor, "tcp:host=127.0.0.1:port=7")),
            FakeEndpoint("a", []),
        ]
        for endpoint in others:
            self.assertIsNone(directTCP(endpoint), endpoint)

    def test_missingAttributes(self):
        """
        A L{TCP4ClientEndpoint} without the attributes read (another
        Twisted) is connected through its C{connect}, as any other.
        """
        endpoint = TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 7)
        del endpoint._bindAddress
        self.assertIsNone(directTCP(endpoint))


class DirectHarness:
    """
    A pool of plain TCP backends on a memory reactor.
    """

    def __init__(self, count=2):
        self.reactor = MemoryReactorClock()
        self.stats = [RecordingBackendStats() for _ in range(count)]
        self.backends = [
            Backend(
                f"tcp:127.0.0.1:{7000 + index}",
                clientFromString(
                    self.reactor, f"tcp:host=127.0.0.1:port={7000 + index}"
                ),
                stats,
            )
            for index, stats in enumerate(self.stats)
        ]
        self.pool = BackendPool(self.backends, self.reactor, CONNECT_TIMEOUT)

    def connect(self):
        factory = NamedFactory()
        return factory, self.pool.connect(factory)

    def last(self):
        """
        The last connectTCP call: host, port, factory, timeout, bindAddress.
        """
        return self.reactor.tcpClients[-1]


class DirectConnectTests(SynchronousTestCase):
    def test_connectTCP(self):
        """
        The pool calls connectTCP with the backend's address and its own
        connect timeout; once Twisted builds the protocol, the connect
        succeeds with the caller's factory's protocol, and the time it took
        is recorded.
        """
        harness = DirectHarness()
        factory, attempt = harness.connect()
        host, port, clientFactory, timeout, bindAddress = harness.last()
        self.assertEqual(
            (host, port, timeout, bindAddress), ("127.0.0.1", 7000, 10.0, None)
        )
        self.assertNoResult(attempt)
        harness.reactor.advance(0.25)
        protocol = clientFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7000))
        self.assertIs(self.successResultOf(attempt), protocol)
        self.assertIsInstance(protocol, ReadyProtocol)
        self.assertEqual(factory.backendName, "tcp:127.0.0.1:7000")
        self.assertEqual(harness.stats[0].connects, [0.25])

    def test_endpointTimeout(self):
        """
        A backend description's own C{timeout=} shorter than the pool's
        connect timeout still applies, as it did through the endpoint.
        """
        harness = DirectHarness(1)
        harness.backends[0].endpoint = clientFromString(
            harness.reactor, "tcp:host=127.0.0.1:port=7000:timeout=3"
        )
        harness.connect()
        self.assertEqual(harness.last()[3], 3)

    def test_connectedHoldsNothing(self):
        """
        Twisted's connector keeps the client factory for the connection's
        life: once connected, it refers to nothing, and the attempt, no
        longer referred to, holds nothing either.
        """
        harness = DirectHarness()
        factory, attempt = harness.connect()
        clientFactory = harness.last()[2]
        held = clientFactory.attempt
        clientFactory.buildProtocol(None)
        self.assertIsNone(clientFactory.attempt)
        self.assertEqual([held.pool, held.connector, held.backend], [None, None, None])
        self.assertEqual((held.candidates, held.tried), ([], []))
        self.assertFalse(hasattr(clientFactory, "__dict__"))

    def test_failover(self):
        """
        A refused or timed-out connect is the backend's failure, logged and
        counted, and the next backend is tried.
        """
        harness = DirectHarness(3)
        factory, attempt = harness.connect()
        first = harness.last()
        with capturedLogs() as events:
            first[2].clientConnectionFailed(
                harness.reactor.connectors[-1], Failure(ConnectionRefusedError())
            )
            second = harness.last()
            second[2].clientConnectionFailed(
                harness.reactor.connectors[-1],
                Failure(TCPTimeoutError(string="User timeout")),
            )
        self.assertEqual([first[1], second[1], harness.last()[1]], [7000, 7001, 7002])
        self.assertEqual([stats.failures for stats in harness.stats], [1, 1, 0])
        self.assertEqual(
            [event["backend"] for event in events],
            ["tcp:127.0.0.1:7000", "tcp:127.0.0.1:7001"],
        )
        self.assertIn("ConnectionRefusedError", events[0]["error"])
        self.assertIn("TimeoutError", events[1]["error"])
        harness.last()[2].buildProtocol(None)
        self.successResultOf(attempt)

    def test_everyOneFailed(self):
        """
        When every backend failed, the connect fails naming them.
        """
        harness = DirectHarness(2)
        factory, attempt = harness.connect()
        for _ in range(2):
            harness.last()[2].clientConnectionFailed(
                harness.reactor.connectors[-1], Failure(ConnectionRefusedError())
            )
        failure = self.failureResultOf(attempt, NoBackendAvailable)
        self.assertEqual(
            str(failure.value),
            "every backend failed: tcp:127.0.0.1:7000, tcp:127.0.0.1:7001",
        )

    def test_abandoned(self):
        """
        Cancelling the connect stops the connector; the failure Twisted
        then reports is not the backend's, and nothing else is tried.
        """
        harness = DirectHarness(2)
        factory, attempt = harness.connect()
        connector = harness.reactor.connectors[-1]
        with capturedLogs() as events:
            attempt.cancel()
            harness.last()[2].clientConnectionFailed(
                connector, Failure(ConnectionRefusedError())
            )
        self.failureResultOf(attempt, CancelledError)
        self.assertTrue(connector.stoppedConnecting)
        self.assertEqual(len(harness.reactor.tcpClients), 1)
        self.assertEqual(harness.stats[0].failures, 0)
        self.assertEqual(harness.backends[0].retryAt, 0.0)
        self.assertEqual(events, [])

    def test_abandonedNotConnecting(self):
        """
        Abandoning a connect whose connector is no longer connecting (it
        says so with L{NotConnectingError}) fails the connect all the same,
        and raises nothing to the caller.
        """
        harness = DirectHarness(1)
        factory, attempt = harness.connect()
        connector = harness.reactor.connectors[-1]

        def stopConnecting():
            raise NotConnectingError()

        connector.stopConnecting = stopConnecting
        attempt.cancel()
        self.failureResultOf(attempt, CancelledError)

    def test_clockWithoutTCP(self):
        """
        Given a clock that is not a reactor, the pool connects even a TCP
        backend through its endpoint.
        """
        reactor = MemoryReactorClock()
        endpoint = clientFromString(reactor, "tcp:host=127.0.0.1:port=7000")
        pool = BackendPool(
            [Backend("a", endpoint, RecordingBackendStats())], Clock(), CONNECT_TIMEOUT
        )
        pool.connect(NamedFactory())
        factory = reactor.tcpClients[-1][2]
        self.assertNotIsInstance(factory, NamedFactory)
        self.assertEqual(reactor.tcpClients[-1][3], 30)
