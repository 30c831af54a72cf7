"""
Every Prometheus metric of the gateway, and the web resources that serve them.

L{GatewayMetrics} is the L{gateway.stats.Recorder} the proxy is given: it
defines the metrics of SPEC section 5 on a registry passed in, and hands out
per-listener and per-backend objects whose labelled children are looked up
once. The two counters a read chunk moves (messages and their bytes) are
plain integers, read only when scraped: a read chunk costs two additions.

L{metricsSite} serves C{/metrics}, C{/healthz} and C{/readyz}, and logs no
request. C{/metrics} is rendered in the reactor thread: on a 2-core test
machine one render for 5 listeners and 3 backends (about 280 samples with
the default collectors) took about 2 ms as text and 3 ms as OpenMetrics,
and for 20 listeners and 4 backends (930 samples) about 10 ms and 14 ms:
a pause the connections can afford once per scrape interval. A thread would
not take that work off the reactor's interpreter (the GIL), only spread it
out; docs/metrics.rst has the figures measured under load.

This module imports neither the reactor nor C{prometheus_client.twisted},
which imports the reactor when it is imported.
"""

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Request, Site

from gateway.codec._base import MALFORMED, TOO_LONG, TRUNCATED, UNENCODABLE
from gateway.health import RESULTS
from gateway.proxyprotocol import PROXY_HEADER
from gateway.stats import BACKEND, CLIENT, CLOSE_REASONS
from gateway.status import Snapshot, statusRoot

# Connections last from a refused request (milliseconds) to a long-lived
# session (hours).
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
)

# Backend connects take well under a millisecond on loopback and at most
# the connect timeout (10 s by default) elsewhere.
CONNECT_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

UPSTREAM = "upstream"
DOWNSTREAM = "downstream"
DIRECTIONS = (UPSTREAM, DOWNSTREAM)

# SPEC section 5: every series of every label value that can occur exists,
# at 0, from start-up, so that rate() and increase() see the very first
# event of each kind. These are the label values each listener gets.

# Why an accepted connection was closed at once (admission, SPEC 9).
REJECTED_LIMIT = "limit"
REJECTED_PER_SOURCE_LIMIT = "per_source_limit"
REJECTED_RATE_LIMIT = "rate_limit"
REJECTED_DENIED = "denied"
REJECTED_REASONS = (
    REJECTED_LIMIT,
    REJECTED_PER_SOURCE_LIMIT,
    REJECTED_RATE_LIMIT,
    REJECTED_DENIED,
)
# The close reasons of SPEC section 5, the handshake timeout of SPEC
# section 9 among them (gateway.stats), in SPEC's order.
CLOSED_REASONS = CLOSE_REASONS
# The reasons the codecs give, and a malformed incoming PROXY header.
PROTOCOL_ERROR_REASONS = (TOO_LONG, MALFORMED, UNENCODABLE, TRUNCATED, PROXY_HEADER)
PEERS = (CLIENT, BACKEND)

_PLAIN_TEXT = b"text/plain; charset=utf-8"


class ListenerMetrics:
    """
    The L{gateway.stats.ListenerStats} of one listener, with every labelled
    child bound when it is made, and the counts of forwarded messages and
    bytes kept as plain integers that L{TrafficCollector} reads, so that the
    calls per read chunk only add.
    """

    __slots__ = (
        "_name",
        "_accepted",
        "_active",
        "_rejected",
        "_rejectedFamily",
        "_closed",
        "_closedFamily",
        "_duration",
        "messagesUp",
        "bytesUp",
        "messagesDown",
        "bytesDown",
        "_protocolErrors",
        "_protocolErrorFamily",
        "_tlsFailures",
        "acceptedCount",
        "activeCount",
        "rejectedCount",
    )

    def __init__(self, metrics: "GatewayMetrics", name: str) -> None:
        self._name = name
        self._accepted = metrics.connectionsAccepted.labels(name)
        self._active = metrics.connectionsActive.labels(name)
        self._rejectedFamily = metrics.connectionsRejected
        self._rejected = {
            reason: metrics.connectionsRejected.labels(name, reason)
            for reason in REJECTED_REASONS
        }
        self._closedFamily = metrics.connectionsClosed
        self._closed = {
            reason: metrics.connectionsClosed.labels(name, reason)
            for reason in CLOSED_REASONS
        }
        self._duration = metrics.connectionDuration.labels(name)
        self.messagesUp = self.bytesUp = self.messagesDown = self.bytesDown = 0
        self._protocolErrorFamily = metrics.protocolErrors
        self._protocolErrors = {
            (peer, reason): metrics.protocolErrors.labels(name, peer, reason)
            for peer in PEERS
            for reason in PROTOCOL_ERROR_REASONS
        }
        self._tlsFailures = metrics.tlsHandshakeFailures.labels(name)
        # The same counts as plain integers, for the status page (once per
        # connection, not per chunk).
        self.acceptedCount = self.activeCount = self.rejectedCount = 0

    def accepted(self) -> None:
        self._accepted.inc()
        self._active.inc()
        self.acceptedCount += 1
        self.activeCount += 1

    def rejected(self, reason: str = REJECTED_LIMIT) -> None:
        child = self._rejected.get(reason)
        if child is None:
            # A reason a newer admission rule added: its series starts now.
            child = self._rejected[reason] = self._rejectedFamily.labels(
                self._name, reason
            )
        child.inc()
        self._active.dec()
        self.rejectedCount += 1
        self.activeCount -= 1

    def closed(self, reason: str, duration: float) -> None:
        child = self._closed.get(reason)
        if child is None:
            child = self._closed[reason] = self._closedFamily.labels(self._name, reason)
        child.inc()
        self._active.dec()
        self.activeCount -= 1
        self._duration.observe(duration)

    # A prometheus_client Counter takes a lock and makes three calls per
    # increment, about 0.7 us, twice per read chunk; these run in the reactor
    # thread, as scrapes do, so plain additions need no lock.
    def upstream(self, messages: int, payloadBytes: int) -> None:
        self.messagesUp += messages
        self.bytesUp += payloadBytes

    def downstream(self, messages: int, payloadBytes: int) -> None:
        self.messagesDown += messages
        self.bytesDown += payloadBytes

    def protocolError(self, peer: str, reason: str) -> None:
        child = self._protocolErrors.get((peer, reason))
        if child is None:
            # A reason a newer codec added: its series starts now.
            child = self._protocolErrorFamily.labels(self._name, peer, reason)
            self._protocolErrors[peer, reason] = child
        child.inc()

    def tlsHandshakeFailed(self) -> None:
        self._tlsFailures.inc()


class TrafficCollector:
    """
    C{gateway_messages_total} and C{gateway_message_bytes_total}, made from
    every listener's plain counts when the registry is collected.
    """

    def __init__(self, listeners: dict[str, ListenerMetrics]) -> None:
        self._listeners = listeners

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        messages, payload = self._families()
        for name, listener in self._listeners.items():
            messages.add_metric([name, UPSTREAM], listener.messagesUp)
            messages.add_metric([name, DOWNSTREAM], listener.messagesDown)
            payload.add_metric([name, UPSTREAM], listener.bytesUp)
            payload.add_metric([name, DOWNSTREAM], listener.bytesDown)
        yield messages
        yield payload

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily]:
        # CounterMetricFamily adds _total to these names when exposed.
        return (
            CounterMetricFamily(
                "gateway_messages",
                "Messages forwarded, upstream (client to backend) or downstream.",
                labels=["listener", "direction"],
            ),
            CounterMetricFamily(
                "gateway_message_bytes",
                "Payload bytes of the messages forwarded, without framing.",
                labels=["listener", "direction"],
            ),
        )


class BackendMetrics:
    """
    The L{gateway.stats.BackendStats} of one backend, and the
    L{gateway.health.HealthStats} its health checks report to, children
    bound at once: C{gateway_backend_up} starts at 1 (a backend counts as up
    until its checks say otherwise, SPEC section 8), every check result at 0.

    @ivar connectFailures: the count C{gateway_backend_connect_failures_total}
        shows, as a plain integer for the status page.
    """

    __slots__ = ("_connect", "_failures", "_up", "_checks", "connectFailures")

    def __init__(self, metrics: "GatewayMetrics", name: str) -> None:
        self._connect = metrics.backendConnect.labels(name)
        self._failures = metrics.backendConnectFailures.labels(name)
        self._up = metrics.backendUp.labels(name)
        self._up.set(1)
        self._checks = {
            result: metrics.backendChecks.labels(name, result) for result in RESULTS
        }
        self.connectFailures = 0

    def connected(self, seconds: float) -> None:
        self._connect.observe(seconds)

    def connectFailed(self) -> None:
        self._failures.inc()
        self.connectFailures += 1

    def checked(self, result: str) -> None:
        self._checks[result].inc()

    def setUp(self, up: bool) -> None:
        self._up.set(1 if up else 0)


class GatewayMetrics:
    """
    The gateway's metrics, defined on C{registry}, as a
    L{gateway.stats.Recorder}.

    The registry is explicit so that tests and several gateways in one
    process each get their own; the process, platform and GC collectors are
    registered on it too.
    """

    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        self._listeners: dict[str, ListenerMetrics] = {}
        self._backends: dict[str, BackendMetrics] = {}

        self.buildInfo = Gauge(
            "gateway_build_info",
            "Always 1; the gateway's version is in the label.",
            ["version"],
            registry=registry,
        )
        self.buildInfo.labels(version).set(1)

        # Counter appends _total to these names when it exposes them.
        self.connectionsAccepted = Counter(
            "gateway_connections_accepted",
            "Client connections accepted, including those rejected at once.",
            ["listener"],
            registry=registry,
        )
        self.connectionsActive = Gauge(
            "gateway_connections_active",
            "Client connections open now.",
            ["listener"],
            registry=registry,
        )
        self.connectionsRejected = Counter(
            "gateway_connections_rejected",
            "Client connections closed as soon as they were accepted.",
            ["listener", "reason"],
            registry=registry,
        )
        self.connectionsClosed = Counter(
            "gateway_connections_closed",
            "Client connections that ended, by why they ended.",
            ["listener", "reason"],
            registry=registry,
        )
        self.connectionDuration = Histogram(
            "gateway_connection_duration_seconds",
            "How long client connections that were not rejected lasted.",
            ["listener"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        registry.register(TrafficCollector(self._listeners))
        self.protocolErrors = Counter(
            "gateway_protocol_errors",
            "Framing errors, by the peer that sent the offending bytes.",
            ["listener", "peer", "reason"],
            registry=registry,
        )
        self.backendConnect = Histogram(
            "gateway_backend_connect_seconds",
            "How long successful backend connects took.",
            ["backend"],
            buckets=CONNECT_BUCKETS,
            registry=registry,
        )
        self.backendConnectFailures = Counter(
            "gateway_backend_connect_failures",
            "Backend connects that failed or timed out.",
            ["backend"],
            registry=registry,
        )
        self.backendUp = Gauge(
            "gateway_backend_up",
            "1 while the backend's health checks say it is up, else 0.",
            ["backend"],
            registry=registry,
        )
        self.backendChecks = Counter(
            "gateway_backend_checks",
            "Active health checks of the backend, by result.",
            ["backend", "result"],
            registry=registry,
        )
        self.tlsHandshakeFailures = Counter(
            "gateway_tls_handshake_failures",
            "TLS handshakes that failed or did not complete in time.",
            ["listener"],
            registry=registry,
        )
        self.draining = Gauge(
            "gateway_draining",
            "1 while the gateway is shutting down and draining connections.",
            registry=registry,
        )

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def listener(self, name: str) -> ListenerMetrics:
        """
        The event sink of listener C{name}, made the first time it is asked
        for; all its series then exist, at zero, so they are scraped before
        the first connection: every close reason, every rejection reason,
        every peer and protocol error reason, both directions, TLS handshake
        failures. Some cannot move on some listeners (C{tls_error} on a
        plain one, C{proxy_header} without C{haproxy:}); they are made all
        the same, since a series that stays at 0 costs a line per scrape
        and one that is missing hides the first event from C{increase()}.
        """
        stats = self._listeners.get(name)
        if stats is None:
            stats = self._listeners[name] = ListenerMetrics(self, name)
        return stats

    def backend(self, name: str) -> BackendMetrics:
        """
        The event sink of backend C{name}, made the first time it is asked
        for, with its series at zero.
        """
        stats = self._backends.get(name)
        if stats is None:
            stats = self._backends[name] = BackendMetrics(self, name)
        return stats

    def setDraining(self, draining: bool) -> None:
        """
        Record whether the gateway is draining its connections to stop.
        """
        self.draining.set(1 if draining else 0)


class MetricsResource(Resource):
    """
    C{/metrics}: the registry in the Prometheus text format, or OpenMetrics
    when the scraper's C{Accept} header asks for it.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept") or b""
        encoder, contentType = choose_encoder(accept.decode("latin-1"))
        request.setHeader(b"content-type", contentType.encode("ascii"))
        return encoder(self._registry)


class HealthResource(Resource):
    """
    C{/healthz}: 200 for as long as the process can answer at all.
    """

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", _PLAIN_TEXT)
        return b"ok\n"


class ReadinessResource(Resource):
    """
    C{/readyz}: 200 when the gateway should get traffic, else 503.

    With C{problems}, the body of a 503 is one line per reason it gives
    (C{draining}, C{service default: no backend up}, SPEC section 5);
    without, C{isReady()} decides and the body says C{not ready}.
    """

    def __init__(
        self,
        isReady: Callable[[], bool],
        problems: Callable[[], list[str]] | None = None,
    ) -> None:
        super().__init__()
        self._isReady = isReady
        self._problems = problems

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", _PLAIN_TEXT)
        if self._problems is not None:
            lines = self._problems()
        else:
            lines = [] if self._isReady() else ["not ready"]
        if not lines:
            return b"ready\n"
        request.setResponseCode(503)
        return "".join(f"{line}\n" for line in lines).encode("utf-8")


class QuietSite(Site):
    """
    A L{Site} that writes no access log.

    Prometheus scrapes every few seconds; a log line per scrape (with the
    scraper's address in it) would drown the events an operator reads.
    """

    noisy = False

    def log(self, request: Request) -> None:
        pass


def metricsSite(
    registry: CollectorRegistry,
    isReady: Callable[[], bool],
    reactor: IReactorTime | None = None,
    problems: Callable[[], list[str]] | None = None,
    snapshot: Callable[[], Snapshot] | None = None,
) -> Site:
    """
    The site serving C{/metrics}, C{/healthz} and C{/readyz}, and with
    C{snapshot} the status page C{/} and C{/status.json} (SPEC section 8);
    any other path is 404. Requests are not logged.

    @param reactor: for the HTTP timeouts; the global reactor when omitted.
    @param problems: why the gateway is not ready, one line each (see
        L{ReadinessResource}).
    @param snapshot: fills the status page's data, once per request.
    """
    root: Resource
    if snapshot is None:
        root = NoResource()
    else:
        root = statusRoot(snapshot)
    root.putChild(b"metrics", MetricsResource(registry))
    root.putChild(b"healthz", HealthResource())
    root.putChild(b"readyz", ReadinessResource(isReady, problems))
    return QuietSite(root, reactor=reactor)
