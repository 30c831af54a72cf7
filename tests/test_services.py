"""
Tests for L{gateway.services}: building services and applying a reload, on
a memory reactor; and the metrics a reload keeps or drops.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.backends import Backend, BackendPool
from gateway.codec import framing
from gateway.config import Configuration, parseText
from gateway.metrics import GatewayMetrics
from gateway.proxy import Connections, ProxyFactory
from gateway.service import GatewayService
from gateway.services import ReloadFailed, ServiceConnections, Services
from gateway.stats import NoRecorder

FILE = "gateway.toml"


def configuration(text: str) -> Configuration:
    return parseText(text.encode("utf-8"), FILE)


ONE = """
[services.a]
listen = ["tcp:7001:interface=127.0.0.1", "tcp:7002:interface=127.0.0.1"]
backend = "tcp:host=127.0.0.1:port=9001"
"""

TWO = """
[services.a]
listen = ["tcp:7001:interface=127.0.0.1"]
backend-framing = "netstring"
backend = ["tcp:host=127.0.0.1:port=9001", "tcp:host=127.0.0.1:port=9002"]

[services.b]
listen = ["tcp:7003:interface=127.0.0.1"]
backend = "tcp:host=127.0.0.1:port=9003"
"""


def run(coroutine: Any) -> Any:
    result: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(result.append)
    (outcome,) = result
    return outcome


class ReloadTests(SynchronousTestCase):
    """
    L{Services.reload} swaps what kept listeners serve, stops removed ones
    and binds added ones, as one step.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.connections = Connections(100)
        self.gateway = GatewayService(self.connections, self.reactor, 5)
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, "1")
        self.services = Services(
            self.gateway, self.reactor, self.metrics, self.connections
        )
        self.services.start(configuration(ONE))
        self.gateway.privilegedStartService()
        self.gateway.startService()

    def ports(self) -> dict[int, Any]:
        return {port: factory for port, factory, _, _ in self.reactor.tcpServers}

    def test_reload(self) -> None:
        """
        The kept listener keeps its port object and serves new connections
        with the new settings; the removed one stops listening; the added
        one is bound; the kept backend keeps its backoff.
        """
        kept = self.services.listeners[("tcp:7001:interface=127.0.0.1", 0)]
        removed = self.services.listeners[("tcp:7002:interface=127.0.0.1", 0)]
        port = kept.port
        before = kept.factory.current
        pool = self.services.built["a"].pool
        pool.backends[0].failed(self.reactor.seconds())
        summary = run(self.services.reload(configuration(TWO)))
        self.assertEqual(
            summary,
            "services added: b; services changed: a;"
            " listeners added: tcp:7003:interface=127.0.0.1;"
            " listeners removed: tcp:7002:interface=127.0.0.1",
        )
        self.assertIs(kept.port, port)
        after = kept.factory.current
        self.assertIsNot(after, before)
        self.assertIsInstance(after, ProxyFactory)
        self.assertEqual(
            (type(before.backendFraming), type(after.backendFraming)),
            (type(framing("int32", 1)), type(framing("netstring", 1))),
        )
        newPool = self.services.built["a"].pool
        self.assertEqual([b.failures for b in newPool.backends], [1, 0])
        self.assertEqual(
            sorted(self.services.listeners),
            [
                ("tcp:7001:interface=127.0.0.1", 0),
                ("tcp:7003:interface=127.0.0.1", 0),
            ],
        )
        self.assertEqual(sorted(self.ports()), [7001, 7002, 7003])
        # The removed listener stopped listening and left the gateway.
        self.assertEqual(
            (removed.running, removed.port, removed.parent), (0, None, None)
        )
        self.assertEqual(
            [child.listenerName for child in self.gateway.listeners()],
            ["tcp:7001", "tcp:7003"],
        )

    def test_healthKept(self) -> None:
        """
        A backend kept by a reload keeps its health state: the new checker
        adopts it, the old one stops, and /readyz's check and the status
        page read the services in use.
        """
        old = self.services.built["a"].health
        old.checker.states["tcp:127.0.0.1:9001"].up = False
        run(self.services.reload(configuration(TWO)))
        new = self.services.built["a"].health
        self.assertIsNot(new, old)
        self.assertEqual((old.running, old.parent), (0, None))
        self.assertEqual((new.running, new.parent), (1, self.gateway))
        self.assertFalse(new.checker.isUp("tcp:127.0.0.1:9001"))
        self.assertTrue(new.checker.isUp("tcp:127.0.0.1:9002"))
        self.assertFalse(self.services.built["a"].pool.isUp("tcp:127.0.0.1:9001"))
        self.assertEqual(sorted(self.services.checkers), ["a", "b"])
        self.assertIs(self.services.checkers["a"], new.checker)
        self.assertEqual(
            [listener.listenerName for listener in self.services.views["b"].listeners],
            ["tcp:7003"],
        )

    def test_admissionKept(self) -> None:
        """
        A kept service keeps its admission state (one object, its counts),
        and takes the new rules when the reload applies, not before: a
        reload that fails leaves the old rules.
        """
        old = self.services._admissions["a"]
        denying = TWO.replace("[services.b]", 'deny = ["127.0.0.0/8"]\n\n[services.b]')
        failed = run(
            self.services.reload(configuration('metrics = "tcp:1"\n' + denying))
        )
        self.assertIsInstance(failed.value, ReloadFailed)
        self.assertTrue(old.permitted(ip_address("127.0.0.1")))
        run(self.services.reload(configuration(denying)))
        kept = self.services.listeners[("tcp:7001:interface=127.0.0.1", 0)]
        self.assertIs(kept.factory.current.admission, old)
        self.assertFalse(old.permitted(ip_address("127.0.0.1")))

    def test_openPairKeepsSettings(self) -> None:
        """
        A connection accepted before the reload was built by the factory of
        its time, and keeps it.
        """
        kept = self.services.listeners[("tcp:7001:interface=127.0.0.1", 0)]
        protocol = kept.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        old = protocol.factory
        run(self.services.reload(configuration(TWO)))
        self.assertIs(protocol.factory, old)
        self.assertIsNot(kept.factory.current, old)

    def test_metricsChangeRefused(self) -> None:
        """
        Moving the metrics endpoint needs a restart: the reload fails.
        """
        failure = run(
            self.services.reload(configuration('metrics = "tcp:9999"\n' + TWO))
        )
        self.assertIsInstance(failure.value, ReloadFailed)
        self.assertIn("metrics: the metrics endpoint cannot change", str(failure.value))
        self.assertEqual(len(self.services.listeners), 2)

    def test_seriesOfRemovedListener(self) -> None:
        """
        The series of a removed listener stay while a pair it accepted is
        open, and go with its last one; the added service's exist at once.
        """
        stats = self.metrics.listener("tcp:7002", "a")
        stats.accepted()
        run(self.services.reload(configuration(TWO)))

        def accepted(service: str, listener: str) -> float | None:
            return self.registry.get_sample_value(
                "gateway_connections_accepted_total",
                {"service": service, "listener": listener},
            )

        self.assertEqual(accepted("a", "tcp:7002"), 1)
        self.assertEqual(accepted("b", "tcp:7003"), 0)
        self.assertEqual(
            self.registry.get_sample_value(
                "gateway_backend_connect_failures_total",
                {"service": "b", "backend": "tcp:127.0.0.1:9003"},
            ),
            0,
        )
        stats.closed("client_closed", 1.0)
        self.assertIsNone(accepted("a", "tcp:7002"))
        self.assertIsNone(
            self.registry.get_sample_value(
                "gateway_messages_total",
                {"service": "a", "listener": "tcp:7002", "direction": "upstream"},
            )
        )
        self.assertEqual(accepted("a", "tcp:7001"), 0)


class ServiceConnectionsTests(SynchronousTestCase):
    """
    A service's cap and the process's both count.
    """

    def test_caps(self) -> None:
        process = Connections(3)
        first = ServiceConnections(2, process)
        second = ServiceConnections(5, process)
        a, b, c = object(), object(), object()
        first.add(a)  # type: ignore[arg-type]
        self.assertFalse(first.full())
        first.add(b)  # type: ignore[arg-type]
        self.assertTrue(first.full())
        self.assertFalse(second.full())
        second.add(c)  # type: ignore[arg-type]
        self.assertTrue(second.full(), "the process is full")
        first.remove(a)  # type: ignore[arg-type]
        self.assertEqual((len(first), len(process)), (1, 2))
        self.assertFalse(second.full())


class AdoptTests(SynchronousTestCase):
    """
    L{BackendPool.adopt}: a backend kept by a reload keeps its backoff.
    """

    def test_adopt(self) -> None:
        clock = Clock()
        stats = NoRecorder().backend("x")
        old = BackendPool(
            [Backend("x", None, stats), Backend("y", None, stats)],  # type: ignore[arg-type]
            clock,
            1,
        )
        old.backends[0].failed(0)
        old.backends[0].failed(0)
        new = BackendPool(
            [Backend("x", None, stats), Backend("z", None, stats)],  # type: ignore[arg-type]
            clock,
            1,
        )
        new.adopt(old)
        self.assertEqual(
            [(b.name, b.failures, b.retryAt) for b in new.backends],
            [("x", 2, 2.0), ("z", 0, 0.0)],
        )
        self.assertEqual([b.name for b in new.candidates()], ["z"])
