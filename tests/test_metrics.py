"""
Tests for L{gateway.metrics}.
"""

import json
import os
import shutil
import subprocess
import sys

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from zope.interface import implementer

import gateway
from gateway.metrics import GatewayMetrics, metricsSite
from gateway.proxy import Connections
from gateway.service import GatewayService, ListenerService
from gateway.stats import (
    BACKEND,
    CLIENT,
    CLIENT_CLOSED,
    CLOSE_REASONS,
    IDLE_TIMEOUT,
    PROTOCOL_ERROR,
    BackendStats,
    ListenerStats,
    Recorder,
)
from gateway.tap import Options, makeService
from tests.e2e import Scrape

LISTENER = "tcp:7000"
OTHER_LISTENER = "tls:7443"
BACKEND_NAME = "tcp:127.0.0.1:9000"
VERSION = "1.2.3"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"

# SPEC section 5, as exposed: name -> (type, label names).
SPEC_METRICS = {
    "gateway_build_info": ("gauge", {"version"}),
    "gateway_connections_accepted_total": ("counter", {"service", "listener"}),
    "gateway_connections_active": ("gauge", {"service", "listener"}),
    "gateway_connections_rejected_total": (
        "counter",
        {"service", "listener", "reason"},
    ),
    "gateway_connections_closed_total": ("counter", {"service", "listener", "reason"}),
    "gateway_connection_duration_seconds": ("histogram", {"service", "listener"}),
    "gateway_messages_total": ("counter", {"service", "listener", "direction"}),
    "gateway_message_bytes_total": ("counter", {"service", "listener", "direction"}),
    "gateway_protocol_errors_total": (
        "counter",
        {"service", "listener", "peer", "reason"},
    ),
    "gateway_backend_connect_seconds": ("histogram", {"service", "backend"}),
    "gateway_backend_connect_failures_total": ("counter", {"service", "backend"}),
    "gateway_backend_up": ("gauge", {"service", "backend"}),
    "gateway_backend_checks_total": ("counter", {"service", "backend", "result"}),
    "gateway_tls_handshake_failures_total": ("counter", {"service", "listener"}),
    "gateway_draining": ("gauge", set()),
    "gateway_config_last_reload_successful": ("gauge", set()),
    "gateway_config_last_reload_success_timestamp_seconds": ("gauge", set()),
    "gateway_config_reloads_total": ("counter", {"result"}),
}


def exposedText(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode("utf-8")


class GatewayMetricsTests(SynchronousTestCase):
    """
    L{GatewayMetrics} records the proxy's events under the names of SPEC 5.
    """

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, VERSION)

    def value(self, name: str, **labels: str) -> float | None:
        # The command line's one service, unless the test names another.
        if ("listener" in labels or "backend" in labels) and "service" not in labels:
            labels["service"] = "default"
        return self.registry.get_sample_value(name, labels)

    def test_recorder(self) -> None:
        """
        L{GatewayMetrics} and what it hands out match the interfaces the proxy
        is written against.
        """
        recorder: Recorder = self.metrics
        listener: ListenerStats = recorder.listener(LISTENER)
        backend: BackendStats = recorder.backend(BACKEND_NAME)
        for method in [
            "accepted",
            "rejected",
            "closed",
            "upstream",
            "downstream",
            "protocolError",
            "tlsHandshakeFailed",
        ]:
            self.assertTrue(callable(getattr(listener, method)), method)
        for method in ["connected", "connectFailed"]:
            self.assertTrue(callable(getattr(backend, method)), method)

    def test_exposedNamesTypesAndLabels(self) -> None:
        """
        Every metric of SPEC 5 is exposed under its name, with its type and
        exactly its label names.
        """
        self.metrics.listener(LISTENER).protocolError(CLIENT, "too_long")
        self.metrics.backend(BACKEND_NAME)
        text = exposedText(self.registry)
        types = {}
        labelNames: dict[str, set[str]] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                types[name] = kind
        for family in self.registry.collect():
            for sample in family.samples:
                labelNames.setdefault(sample.name, set()).update(sample.labels)
        for name, (kind, labels) in SPEC_METRICS.items():
            self.assertEqual(types.get(name), kind, name)
            sampleName = name + "_count" if kind == "histogram" else name
            labelNames[sampleName].discard("le")
            self.assertEqual(labelNames[sampleName], labels, name)

    def test_backendHealth(self) -> None:
        """
        A backend's C{gateway_backend_up} is 1 and each check result of
        C{gateway_backend_checks_total} is at 0 as soon as it exists (SPEC
        sections 5 and 8); the checker's reports move them.
        """
        backend = self.metrics.backend(BACKEND_NAME)
        self.assertEqual(self.value("gateway_backend_up", backend=BACKEND_NAME), 1)
        for result in ["success", "failure"]:
            self.assertEqual(
                self.value(
                    "gateway_backend_checks_total", backend=BACKEND_NAME, result=result
                ),
                0,
            )
        backend.checked("failure")
        backend.checked("failure")
        backend.checked("success")
        backend.setUp(False)
        self.assertEqual(self.value("gateway_backend_up", backend=BACKEND_NAME), 0)
        self.assertEqual(
            [
                self.value(
                    "gateway_backend_checks_total", backend=BACKEND_NAME, result=result
                )
                for result in ["success", "failure"]
            ],
            [1, 2],
        )
        backend.setUp(True)
        self.assertEqual(self.value("gateway_backend_up", backend=BACKEND_NAME), 1)

    def test_noReactorImport(self) -> None:
        """
        Importing L{gateway.metrics} imports neither the reactor nor
        C{prometheus_client.twisted}, so the plugin can reach it safely.
        """
        code = (
            "import sys, gateway.metrics;"
            "print('twisted.internet.reactor' in sys.modules,"
            " 'prometheus_client.twisted' in sys.modules)"
        )
        # trial runs in _trial_temp: import the package from where it is here.
        projectRoot = os.path.dirname(os.path.dirname(gateway.__file__))
        output = subprocess.run(
            [sys.executable, "-c", code],
            cwd=projectRoot,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        self.assertEqual(output, b"False False\n")

    def test_defaultCollectors(self) -> None:
        """
        The process, platform and GC collectors are on the same registry.
        """
        text = exposedText(self.registry)
        self.assertIn("\npython_info{", text)
        self.assertIn("\npython_gc_collections_total{", text)
        # ProcessCollector exposes nothing where there is no /proc.
        if self.value("process_start_time_seconds") is not None:
            self.assertIn("\nprocess_open_fds ", text)

    def test_buildInfo(self) -> None:
        """
        C{gateway_build_info} is 1 with the version as its label.
        """
        self.assertEqual(self.value("gateway_build_info", version=VERSION), 1)

    def test_draining(self) -> None:
        """
        C{gateway_draining} is 0 until draining starts, then 1.
        """
        self.assertEqual(self.value("gateway_draining"), 0)
        self.metrics.setDraining(True)
        self.assertEqual(self.value("gateway_draining"), 1)
        self.metrics.setDraining(False)
        self.assertEqual(self.value("gateway_draining"), 0)

    def test_listenerSeriesStartAtZero(self) -> None:
        """
        Asking for a listener makes all of its known series, at zero.
        """
        self.assertIsNone(self.value("gateway_connections_active", listener=LISTENER))
        self.metrics.listener(LISTENER)
        zeros = (
            [
                ("gateway_connections_accepted_total", {}),
                ("gateway_connections_active", {}),
                ("gateway_connections_rejected_total", {"reason": "limit"}),
                ("gateway_connection_duration_seconds_count", {}),
                ("gateway_connection_duration_seconds_sum", {}),
                ("gateway_messages_total", {"direction": "upstream"}),
                ("gateway_messages_total", {"direction": "downstream"}),
                ("gateway_message_bytes_total", {"direction": "upstream"}),
                ("gateway_message_bytes_total", {"direction": "downstream"}),
                ("gateway_tls_handshake_failures_total", {}),
            ]
            + [
                ("gateway_connections_closed_total", {"reason": reason})
                for reason in CLOSE_REASONS
            ]
            + [
                ("gateway_protocol_errors_total", {"peer": peer, "reason": reason})
                for peer in [CLIENT, BACKEND]
                for reason in ["too_long", "malformed", "unencodable", "truncated"]
            ]
        )
        for name, labels in zeros:
            self.assertEqual(
                self.value(name, listener=LISTENER, **labels), 0, (name, labels)
            )
        self.assertIn(
            'gateway_connections_active{listener="tcp:7000",service="default"} 0.0\n',
            exposedText(self.registry),
        )

    def test_everySpecLabelValueAtZero(self) -> None:
        """
        Every label value SPEC section 5 lists has its series at 0 as soon
        as the listener exists, in a fresh registry: the lists are written
        out here from the SPEC, not taken from the module under test.
        """
        self.metrics.listener(LISTENER)
        closed = [
            "client_closed",
            "backend_closed",
            "idle_timeout",
            "handshake_timeout",
            "protocol_error",
            "backend_unavailable",
            "tls_error",
            "shutdown",
        ]
        rejected = ["limit", "per_source_limit", "rate_limit", "denied"]
        errors = ["too_long", "malformed", "unencodable", "truncated", "proxy_header"]
        expected = (
            [("gateway_connections_closed_total", {"reason": r}) for r in closed]
            + [("gateway_connections_rejected_total", {"reason": r}) for r in rejected]
            + [
                ("gateway_protocol_errors_total", {"peer": peer, "reason": reason})
                for peer in ["client", "backend"]
                for reason in errors
            ]
            + [
                (name, {"direction": direction})
                for name in ["gateway_messages_total", "gateway_message_bytes_total"]
                for direction in ["upstream", "downstream"]
            ]
            + [("gateway_tls_handshake_failures_total", {})]
        )
        for name, labels in expected:
            self.assertEqual(
                self.value(name, listener=LISTENER, **labels), 0, (name, labels)
            )
        text = exposedText(self.registry)
        self.assertIn(
            'gateway_protocol_errors_total{listener="tcp:7000",peer="client",'
            'reason="proxy_header",service="default"} 0.0\n',
            text,
        )
        self.assertIn(
            'gateway_connections_closed_total{listener="tcp:7000",'
            'reason="handshake_timeout",service="default"} 0.0\n',
            text,
        )

    def test_rejectedReasons(self) -> None:
        """
        A rejection is counted under its reason, C{limit} when none is given;
        each leaves the active count as it was before the accept.
        """
        stats = self.metrics.listener(LISTENER)
        for reason in (None, "per_source_limit", "rate_limit", "denied", "denied"):
            stats.accepted()
            if reason is None:
                stats.rejected()
            else:
                stats.rejected(reason)

        def rejected(reason: str) -> float | None:
            return self.value(
                "gateway_connections_rejected_total", listener=LISTENER, reason=reason
            )

        self.assertEqual(
            [
                rejected(r)
                for r in ("limit", "per_source_limit", "rate_limit", "denied")
            ],
            [1, 1, 1, 2],
        )
        self.assertEqual(self.value("gateway_connections_active", listener=LISTENER), 0)

    def test_closedHandshakeTimeout(self) -> None:
        """
        A connection closed for a reason SPEC 9 adds is counted under it.
        """
        stats = self.metrics.listener(LISTENER)
        stats.accepted()
        stats.closed("handshake_timeout", 10.0)
        self.assertEqual(
            self.value(
                "gateway_connections_closed_total",
                listener=LISTENER,
                reason="handshake_timeout",
            ),
            1,
        )

    def test_backendSeriesStartAtZero(self) -> None:
        """
        Asking for a backend makes its series, at zero.
        """
        self.metrics.backend(BACKEND_NAME)
        self.assertEqual(
            self.value("gateway_backend_connect_seconds_count", backend=BACKEND_NAME),
            0,
        )
        self.assertEqual(
            self.value("gateway_backend_connect_failures_total", backend=BACKEND_NAME),
            0,
        )

    def test_sameObject(self) -> None:
        """
        Asking twice for the same name gives the same object.
        """
        self.assertIs(self.metrics.listener(LISTENER), self.metrics.listener(LISTENER))
        self.assertIsNot(
            self.metrics.listener(LISTENER), self.metrics.listener(OTHER_LISTENER)
        )
        self.assertIs(
            self.metrics.backend(BACKEND_NAME), self.metrics.backend(BACKEND_NAME)
        )

    def test_connectionLifecycle(self) -> None:
        """
        Accepted connections are active until rejected or closed; closes are
        counted by reason and their durations observed.
        """
        stats = self.metrics.listener(LISTENER)
        for _ in range(4):
            stats.accepted()
        stats.rejected()
        stats.closed(CLIENT_CLOSED, 0.2)
        stats.closed(IDLE_TIMEOUT, 400.0)

        def value(name: str, **labels: str) -> float | None:
            return self.value(name, listener=LISTENER, **labels)

        self.assertEqual(value("gateway_connections_accepted_total"), 4)
        self.assertEqual(value("gateway_connections_rejected_total", reason="limit"), 1)
        # 4 accepted - 1 rejected - 2 closed
        self.assertEqual(value("gateway_connections_active"), 1)
        self.assertEqual(
            value("gateway_connections_closed_total", reason=CLIENT_CLOSED), 1
        )
        self.assertEqual(
            value("gateway_connections_closed_total", reason=IDLE_TIMEOUT), 1
        )
        self.assertEqual(
            value("gateway_connections_closed_total", reason=PROTOCOL_ERROR), 0
        )
        # The rejected connection has no duration: only the two closed ones.
        self.assertEqual(value("gateway_connection_duration_seconds_count"), 2)
        self.assertAlmostEqual(value("gateway_connection_duration_seconds_sum"), 400.2)
        # 0.2 s falls in the 0.5 s bucket, 400 s only from the 900 s bucket on.
        self.assertEqual(
            value("gateway_connection_duration_seconds_bucket", le="0.5"), 1
        )
        self.assertEqual(
            value("gateway_connection_duration_seconds_bucket", le="300.0"), 1
        )
        self.assertEqual(
            value("gateway_connection_duration_seconds_bucket", le="900.0"), 2
        )

    def test_listenersAreSeparate(self) -> None:
        """
        Events of one listener do not show under another.
        """
        self.metrics.listener(LISTENER).accepted()
        self.metrics.listener(OTHER_LISTENER)
        self.assertEqual(
            self.value("gateway_connections_accepted_total", listener=LISTENER), 1
        )
        self.assertEqual(
            self.value("gateway_connections_accepted_total", listener=OTHER_LISTENER),
            0,
        )

    def test_messages(self) -> None:
        """
        Messages and their payload bytes are counted per direction, a chunk
        at a time.
        """
        stats = self.metrics.listener(LISTENER)
        stats.upstream(3, 30)
        stats.upstream(1, 0)
        stats.downstream(2, 7)
        expected = {
            ("gateway_messages_total", "upstream"): 4,
            ("gateway_message_bytes_total", "upstream"): 30,
            ("gateway_messages_total", "downstream"): 2,
            ("gateway_message_bytes_total", "downstream"): 7,
        }
        for (name, direction), count in expected.items():
            self.assertEqual(
                self.value(name, listener=LISTENER, direction=direction),
                count,
                (name, direction),
            )

    def test_protocolErrors(self) -> None:
        """
        Protocol errors are counted by the peer that sent the bytes and the
        reason.
        """
        stats = self.metrics.listener(LISTENER)
        stats.protocolError(CLIENT, "too_long")
        stats.protocolError(CLIENT, "too_long")
        stats.protocolError(BACKEND, "unencodable")

        def value(peer: str, reason: str) -> float | None:
            return self.value(
                "gateway_protocol_errors_total",
                listener=LISTENER,
                peer=peer,
                reason=reason,
            )

        self.assertEqual(value(CLIENT, "too_long"), 2)
        self.assertEqual(value(BACKEND, "unencodable"), 1)
        self.assertEqual(value(BACKEND, "too_long"), 0)
        # A reason that is not known yet gets its series when it happens.
        self.assertIsNone(value(CLIENT, "surprising"))
        stats.protocolError(CLIENT, "surprising")
        self.assertEqual(value(CLIENT, "surprising"), 1)

    def test_tlsHandshakeFailures(self) -> None:
        """
        Failed TLS handshakes are counted per listener.
        """
        self.metrics.listener(OTHER_LISTENER).tlsHandshakeFailed()
        self.assertEqual(
            self.value("gateway_tls_handshake_failures_total", listener=OTHER_LISTENER),
            1,
        )

    def test_backendConnects(self) -> None:
        """
        Connect times are observed and failures counted per backend.
        """
        stats = self.metrics.backend(BACKEND_NAME)
        stats.connected(0.0004)
        stats.connected(2.0)
        stats.connectFailed()

        def value(name: str, **labels: str) -> float | None:
            return self.value(name, backend=BACKEND_NAME, **labels)

        self.assertEqual(value("gateway_backend_connect_seconds_count"), 2)
        self.assertAlmostEqual(value("gateway_backend_connect_seconds_sum"), 2.0004)
        # 0.4 ms is in the smallest bucket, 2 s from the 2.5 s bucket on.
        self.assertEqual(
            value("gateway_backend_connect_seconds_bucket", le="0.0005"), 1
        )
        self.assertEqual(value("gateway_backend_connect_seconds_bucket", le="1.0"), 1)
        self.assertEqual(value("gateway_backend_connect_seconds_bucket", le="2.5"), 2)
        self.assertEqual(value("gateway_backend_connect_failures_total"), 1)

    def test_promtool(self) -> None:
        """
        C{promtool check metrics} accepts what C{/metrics} serves.
        """
        promtool = shutil.which("promtool")
        if promtool is None:
            raise self.skipTest(
                "promtool is not on PATH (Debian: apt-get install prometheus)"
            )
        stats = self.metrics.listener(LISTENER)
        stats.accepted()
        stats.closed(CLIENT_CLOSED, 1.5)
        stats.protocolError(CLIENT, "malformed_length")
        self.metrics.backend(BACKEND_NAME).connected(0.01)
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=generate_latest(self.registry),
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr), (0, b"", b"")
        )


class Response:
    """
    A parsed HTTP/1.1 response.
    """

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        statusLine, *headerLines = head.split(b"\r\n")
        self.code = int(statusLine.split(b" ")[1])
        self.headers = {}
        for line in headerLines:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()


def get(site: Site, path: bytes, headers: dict[bytes, bytes] | None = None) -> Response:
    """
    Send one request for C{path} to C{site} over a fake connection.
    """
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: localhost", b"Connection: close"]
    lines += [name + b": " + value for name, value in (headers or {}).items()]
    channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
    return Response(transport.value())


class MetricsSiteTests(SynchronousTestCase):
    """
    L{metricsSite} serves C{/metrics}, C{/healthz} and C{/readyz}.
    """

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, VERSION)
        self.metrics.listener(LISTENER)
        self.ready = True
        self.site = metricsSite(self.registry, lambda: self.ready, reactor=Clock())

    def test_metrics(self) -> None:
        """
        C{/metrics} is the Prometheus text format by default.
        """
        response = get(self.site, b"/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers[b"content-type"],
            b"text/plain; version=0.0.4; charset=utf-8",
        )
        self.assertIn(
            b"\ngateway_connections_active"
            b'{listener="tcp:7000",service="default"} 0.0\n',
            response.body,
        )
        self.assertIn(b'\ngateway_build_info{version="1.2.3"} 1.0\n', response.body)

    def test_openMetrics(self) -> None:
        """
        C{/metrics} is OpenMetrics when the C{Accept} header asks for it.
        """
        response = get(
            self.site,
            b"/metrics",
            {b"Accept": OPENMETRICS.encode("ascii") + b",text/plain;q=0.5"},
        )
        self.assertEqual(response.code, 200)
        self.assertTrue(
            response.headers[b"content-type"].startswith(
                b"application/openmetrics-text; version=1.0.0"
            ),
            response.headers[b"content-type"],
        )
        self.assertTrue(response.body.endswith(b"# EOF\n"))
        self.assertIn(
            b"\ngateway_connections_active"
            b'{listener="tcp:7000",service="default"} 0.0\n',
            response.body,
        )

    def test_healthz(self) -> None:
        """
        C{/healthz} is 200 whether or not the gateway is ready.
        """
        for self.ready in [True, False]:
            response = get(self.site, b"/healthz")
            self.assertEqual((response.code, response.body), (200, b"ok\n"))
            self.assertEqual(
                response.headers[b"content-type"], b"text/plain; charset=utf-8"
            )

    def test_readyz(self) -> None:
        """
        C{/readyz} is 200 while the readiness callable says so, 503 otherwise.
        """
        response = get(self.site, b"/readyz")
        self.assertEqual((response.code, response.body), (200, b"ready\n"))
        self.ready = False
        response = get(self.site, b"/readyz")
        self.assertEqual((response.code, response.body), (503, b"not ready\n"))
        self.assertEqual(
            response.headers[b"content-type"], b"text/plain; charset=utf-8"
        )

    def test_readyzReasons(self) -> None:
        """
        Given the reasons, C{/readyz} is 503 with one line per reason while
        there are any (SPEC section 5), 200 C{ready} once there are none.
        """
        problems = ["listener tcp:7000: not bound", "service default: no backend up"]
        site = metricsSite(
            self.registry, lambda: not problems, Clock(), problems=lambda: problems
        )
        response = get(site, b"/readyz")
        self.assertEqual(
            (response.code, response.body),
            (503, b"listener tcp:7000: not bound\nservice default: no backend up\n"),
        )
        problems.clear()
        response = get(site, b"/readyz")
        self.assertEqual((response.code, response.body), (200, b"ready\n"))

    def test_noAccessLog(self) -> None:
        """
        Requests leave no log event behind, where a plain twisted.web
        L{Site} logs a line for each.
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        plain = Site(self.site.resource, reactor=Clock())
        for site in [plain, self.site]:
            site.doStart()
            self.addCleanup(site.doStop)
        get(plain, b"/metrics")
        self.assertTrue(
            any("GET /metrics" in formatEvent(event) for event in events), events
        )
        del events[:]
        for path in [b"/metrics", b"/healthz", b"/readyz", b"/nope"]:
            get(self.site, path)
        self.assertEqual(events, [])

    def test_otherPaths(self) -> None:
        """
        Any other path is 404.
        """
        for path in [b"/", b"/nope", b"/metrics/extra", b"/healthz/x", b"/readyzz"]:
            self.assertEqual(get(self.site, path).code, 404, path)


@implementer(IStreamServerEndpoint)
class BindsLater:
    """
    An endpoint whose C{listen} fires only when the test says so.
    """

    def __init__(self) -> None:
        self.listening: Deferred[IListeningPort] = Deferred()

    def listen(self, factory: Factory) -> Deferred[IListeningPort]:
        return self.listening


class LingeringConnection:
    """
    What L{Connections} holds: a connection that leaves only when aborted.
    """

    def __init__(self, connections: Connections) -> None:
        self.connections = connections
        self.abortedFor: str | None = None

    def abort(self, reason: str) -> None:
        self.abortedFor = reason
        self.connections.remove(self)


class ReadinessTests(SynchronousTestCase):
    """
    C{/readyz} follows L{GatewayService.ready}: 503 until every listener is
    bound, 200 while serving, 503 again from the moment draining starts.
    """

    def readyz(self, site: Site) -> int:
        return get(site, b"/readyz").code

    def test_gatewayService(self) -> None:
        """
        A listener that binds late keeps the gateway unready until it does;
        stopping makes it unready at once, before the drain ends.
        """
        clock = MemoryReactorClock()
        connections = Connections(10)
        service = GatewayService(connections, clock, drainTimeout=5)
        endpoint = BindsLater()
        ListenerService(
            "tcp:7000", "--listen", "tcp:7000", endpoint, Factory()
        ).setServiceParent(service)
        site = metricsSite(CollectorRegistry(), service.ready, clock)

        self.assertEqual(self.readyz(site), 503)
        service.privilegedStartService()
        service.startService()
        self.assertEqual(self.readyz(site), 503)
        endpoint.listening.callback(clock.listenTCP(7000, Factory()))
        self.assertEqual(self.readyz(site), 200)

        connection = LingeringConnection(connections)
        connections.add(connection)
        stopped = service.stopService()
        self.assertNoResult(stopped)
        self.assertEqual(self.readyz(site), 503)
        clock.advance(5)  # the drain timeout
        self.assertEqual(connection.abortedFor, "shutdown")
        self.successResultOf(stopped)
        self.assertEqual(self.readyz(site), 503)

    def test_makeService(self) -> None:
        """
        In the service C{makeService} builds, C{/readyz} turns 503 and
        C{gateway_draining} 1 when stopping starts, while a connection is
        still open; C{/metrics} has no C{_created} series.
        """
        options = Options()
        options.parseOptions(
            [
                "--listen",
                "tcp:7000:interface=127.0.0.1",
                "--backend",
                "tcp:host=127.0.0.1:port=9000",
                "--metrics",
                "tcp:9180:interface=127.0.0.1",
                "--drain-timeout",
                "5",
            ]
        )
        reactor = MemoryReactorClock()
        service = makeService(options, reactor=reactor)
        listeners = {
            listener.listenerName: listener.factory.current
            for listener in service.listeners()
        }
        self.assertEqual(set(listeners), {"tcp:7000", "metrics"})
        site = listeners["metrics"]

        def metric(name: str, **labels: str) -> float | None:
            if "listener" in labels:
                labels["service"] = "default"
            body = get(site, b"/metrics").body.decode("utf-8")
            self.assertNotIn("_created", body)
            return Scrape(body).value(name, **labels)

        self.assertEqual(self.readyz(site), 503)
        service.privilegedStartService()
        service.startService()
        self.assertEqual(self.readyz(site), 200)
        self.assertEqual(metric("gateway_draining"), 0)

        client = listeners["tcp:7000"].buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40000)
        )
        client.makeConnection(StringTransport())
        self.assertEqual(metric("gateway_connections_active", listener="tcp:7000"), 1)

        stopped = service.stopService()
        self.assertNoResult(stopped)
        self.assertEqual(self.readyz(site), 503)
        self.assertEqual(get(site, b"/healthz").code, 200)
        self.assertEqual(metric("gateway_draining"), 1)
        self.assertEqual(metric("gateway_connections_active", listener="tcp:7000"), 1)

        client.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertEqual(metric("gateway_connections_active", listener="tcp:7000"), 0)
        self.assertEqual(
            metric(
                "gateway_connections_closed_total",
                listener="tcp:7000",
                reason="client_closed",
            ),
            1,
        )


def projectFile(*parts: str) -> str:
    """
    A file of the checkout (trial runs in _trial_temp).
    """
    return os.path.join(os.path.dirname(os.path.dirname(gateway.__file__)), *parts)


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    """
    One input series of a promtool rule test, scraped from instance
    C{gw:9180}.
    """
    labels = {"instance": "gw:9180", "job": "gateway"} | labels
    inner = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


class PrometheusConfigTests(SynchronousTestCase):
    """
    The example Prometheus configuration and alerting rules in C{etc/} are
    valid, and the alerts fire when, and only when, they should.
    """

    def promtool(self, *args: str) -> None:
        promtool = shutil.which("promtool")
        if promtool is None:
            raise self.skipTest(
                "promtool is not on PATH (Debian: apt-get install prometheus)"
            )
        result = subprocess.run([promtool, *args], capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_config(self) -> None:
        """
        C{promtool check config} accepts C{etc/prometheus.yml} and the rule
        file it loads.
        """
        self.promtool("check", "config", projectFile("etc", "prometheus.yml"))

    def test_alerts(self) -> None:
        """
        Each example alert fires for the series it is about once its C{for}
        has passed, and not for the healthy series next to it.
        """
        # Per minute: backend .5 fails 10 connects of 100, .6 fails 1 of 100.
        # Listener tcp:7000 closes 5 pairs of 105 on a client protocol error,
        # tcp:7443 1 of 1001.
        failing, healthy = "tcp:10.0.0.5:9000", "tcp:10.0.0.6:9000"
        tests = {
            "rule_files": [projectFile("etc", "gateway-alerts.yml")],
            "evaluation_interval": "1m",
            "tests": [
                {
                    "interval": "1m",
                    "input_series": [
                        series(
                            "gateway_backend_connect_failures_total",
                            "0+10x40",
                            backend=failing,
                        ),
                        series(
                            "gateway_backend_connect_seconds_count",
                            "0+90x40",
                            backend=failing,
                        ),
                        series(
                            "gateway_backend_connect_failures_total",
                            "0+1x40",
                            backend=healthy,
                        ),
                        series(
                            "gateway_backend_connect_seconds_count",
                            "0+99x40",
                            backend=healthy,
                        ),
                        series(
                            "gateway_connections_closed_total",
                            "0+100x40",
                            listener="tcp:7000",
                            reason="client_closed",
                        ),
                        series(
                            "gateway_connections_closed_total",
                            "0+5x40",
                            listener="tcp:7000",
                            reason="protocol_error",
                        ),
                        series(
                            "gateway_protocol_errors_total",
                            "0+5x40",
                            listener="tcp:7000",
                            peer="client",
                            reason="too_long",
                        ),
                        series(
                            "gateway_protocol_errors_total",
                            "0+0x40",
                            listener="tcp:7000",
                            peer="backend",
                            reason="too_long",
                        ),
                        series(
                            "gateway_connections_closed_total",
                            "0+1000x40",
                            listener="tcp:7443",
                            reason="client_closed",
                        ),
                        series(
                            "gateway_connections_closed_total",
                            "0+1x40",
                            listener="tcp:7443",
                            reason="protocol_error",
                        ),
                        series(
                            "gateway_protocol_errors_total",
                            "0+1x40",
                            listener="tcp:7443",
                            peer="client",
                            reason="malformed",
                        ),
                    ],
                    "alert_rule_test": [
                        # Before the rules' "for" has passed: nothing yet.
                        {
                            "eval_time": "4m",
                            "alertname": "GatewayBackendConnectFailures",
                            "exp_alerts": [],
                        },
                        {
                            "eval_time": "9m",
                            "alertname": "GatewayProtocolErrors",
                            "exp_alerts": [],
                        },
                        {
                            "eval_time": "30m",
                            "alertname": "GatewayBackendConnectFailures",
                            "exp_alerts": [
                                {
                                    "exp_labels": {
                                        "severity": "warning",
                                        "instance": "gw:9180",
                                        "backend": failing,
                                    },
                                    "exp_annotations": {
                                        "summary": "gw:9180: over 5% of connects"
                                        f" to {failing} fail"
                                    },
                                }
                            ],
                        },
                        {
                            "eval_time": "30m",
                            "alertname": "GatewayProtocolErrors",
                            "exp_alerts": [
                                {
                                    "exp_labels": {
                                        "severity": "warning",
                                        "instance": "gw:9180",
                                        "listener": "tcp:7000",
                                        "peer": "client",
                                    },
                                    "exp_annotations": {
                                        "summary": "gw:9180: over 1% of pairs on"
                                        " tcp:7000 end in a client protocol error"
                                    },
                                }
                            ],
                        },
                    ],
                }
            ],
        }
        path = self.mktemp() + ".yml"
        # JSON is YAML.
        with open(path, "w") as file:
            json.dump(tests, file)
        self.promtool("test", "rules", path)
