"""
Tests for L{gateway.metrics}.
"""

import os
import shutil
import subprocess
import sys

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

import gateway
from gateway.metrics import GatewayMetrics, metricsSite
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

LISTENER = "tcp:7000"
OTHER_LISTENER = "tls:7443"
BACKEND_NAME = "tcp:127.0.0.1:9000"
VERSION = "1.2.3"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"

# SPEC section 5, as exposed: name -> (type, label names).
SPEC_METRICS = {
    "gateway_build_info": ("gauge", {"version"}),
    "gateway_connections_accepted_total": ("counter", {"listener"}),
    "gateway_connections_active": ("gauge", {"listener"}),
    "gateway_connections_rejected_total": ("counter", {"listener", "reason"}),
    "gateway_connections_closed_total": ("counter", {"listener", "reason"}),
    "gateway_connection_duration_seconds": ("histogram", {"listener"}),
    "gateway_messages_total": ("counter", {"listener", "direction"}),
    "gateway_message_bytes_total": ("counter", {"listener", "direction"}),
    "gateway_protocol_errors_total": ("counter", {"listener", "peer", "reason"}),
    "gateway_backend_connect_seconds": ("histogram", {"backend"}),
    "gateway_backend_connect_failures_total": ("counter", {"backend"}),
    "gateway_tls_handshake_failures_total": ("counter", {"listener"}),
    "gateway_draining": ("gauge", set()),
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
        zeros = [
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
        ] + [
            ("gateway_connections_closed_total", {"reason": reason})
            for reason in CLOSE_REASONS
        ]
        for name, labels in zeros:
            self.assertEqual(
                self.value(name, listener=LISTENER, **labels), 0, (name, labels)
            )
        self.assertIn(
            'gateway_connections_active{listener="tcp:7000"} 0.0\n',
            exposedText(self.registry),
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
        self.assertIsNone(value(BACKEND, "too_long"))

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
            b'\ngateway_connections_active{listener="tcp:7000"} 0.0\n',
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
            b'\ngateway_connections_active{listener="tcp:7000"} 0.0\n',
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

    def test_otherPaths(self) -> None:
        """
        Any other path is 404.
        """
        for path in [b"/", b"/nope", b"/metrics/extra", b"/healthz/x", b"/readyzz"]:
            self.assertEqual(get(self.site, path).code, 404, path)
