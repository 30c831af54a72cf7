"""
End to end: what a real C{twistd gateway}'s C{/metrics}, C{/readyz} and
logs say about real traffic, read over HTTP as Prometheus reads them.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from urllib.parse import urlencode

import trustme
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import eventFromJSON, formatEvent
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseFailed

from gateway.stats import CLOSE_REASONS
from tests.e2e import (
    DEADLINE,
    BackendFactory,
    ChildProcess,
    Scrape,
    UpperBackend,
    backendOption,
    exchange,
    freePort,
    httpGet,
    listenPort,
    poll,
    runGateway,
    scrape,
    spawn,
)

LISTEN = ["--listen", "tcp:0:interface=127.0.0.1"]
# The name the gateway gives the listener above.
LISTENER = "tcp:0"
# Each closed pair logs one line with this in it (text log).
CLOSED = "#info] closed "

# Small, so that an oversized message is cheap to send.
MAX_MESSAGE_SIZE = 100
# Long enough that no exchange of the test idles that long, even on a loaded
# machine; short enough to wait for once.
IDLE_TIMEOUT = 3.0
# The drain timeout while a test holds a pair open through SIGTERM: the
# test ends the pair itself well before it.
DRAIN_TIMEOUT = 5.0
# Prometheus scrapes every second; start-up and the first scrapes take a few.
PROMETHEUS_DEADLINE = 25.0
POLL_INTERVAL = 0.25


class BadFrameBackend(UpperBackend):
    """
    L{UpperBackend}, except that it answers C{bad} with the header of a
    frame longer than the gateway accepts.
    """

    def stringReceived(self, payload: bytes) -> None:
        if payload == b"bad":
            self.factory.received.append(payload)
            self.transport.write(struct.pack(">I", 2**20))
        else:
            super().stringReceived(payload)


def listenBackend(testCase: TestCase) -> tuple[BackendFactory, IListeningPort]:
    """
    A backend on a free loopback port, which the test may stop listening
    early; at the end its connections must all have closed.
    """
    factory = BackendFactory(BadFrameBackend)
    return factory, listenPort(testCase, factory)


class Held(Protocol):
    """
    A client that sends nothing and keeps its connection until told.
    """

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


async def hold(port: int) -> Held:
    """
    Connect a L{Held} client to the gateway on C{port}.
    """
    client = Held()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await connectProtocol(endpoint, client).addTimeout(DEADLINE, reactor)
    return client


def lines(messages: list[bytes]) -> bytes:
    """
    C{messages} as the gateway's clients send them: each ended by a newline.
    """
    return b"".join(message + b"\n" for message in messages)


class CountingTests(TestCase):
    """
    The counters, gauges and histograms of one gateway, checked to the unit
    after real connections have come and gone.
    """

    async def test_everyCloseReason(self):
        """
        Clean exchanges, a client's and a backend's protocol error, an idle
        timeout and an unreachable backend each count exactly once, under
        their reason; the messages and bytes forwarded each way, the
        backend connects and the durations add up; nothing is left active.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            LISTEN
            + backendOption(backendPort)
            + ["--max-message-size", str(MAX_MESSAGE_SIZE)]
            + ["--idle-timeout", str(IDLE_TIMEOUT)],
        )
        port = gateway.port()
        before = await scrape(gateway)
        self.assertEqual(before.value("gateway_draining"), 0)
        self.assertEqual(
            before.value("gateway_connections_active", listener=LISTENER), 0
        )

        # Held open without a byte: the idle timeout ends it.
        idle = await hold(port)
        up = [0, 0]
        down = [0, 0]

        def count(direction: list[int], messages: list[bytes]) -> None:
            direction[0] += len(messages)
            direction[1] += sum(map(len, messages))

        # Clean: the client shuts its side, every reply arrives.
        for messages in [[b"alpha", b"beta"], [b"gamma"], [b""]]:
            reply = await exchange(port, lines(messages))
            self.assertEqual(reply, lines([m.upper() for m in messages]))
            count(up, messages)
            count(down, messages)

        # A client's line over the limit: what came before it still goes up.
        reply = await exchange(
            port, b"ok\n" + b"x" * (MAX_MESSAGE_SIZE + 1) + b"\n", halfClose=False
        )
        count(up, [b"ok"])
        # "OK" comes back only when "ok" reached the gateway in a read of its own.
        self.assertIn(reply, (b"", b"OK\n"))
        count(down, reply.splitlines())

        # A backend's frame over the limit, after a good one.
        reply = await exchange(port, lines([b"fine", b"bad"]), halfClose=False)
        self.assertEqual(reply, b"FINE\n")
        count(up, [b"fine", b"bad"])
        count(down, [b"FINE"])

        await idle.lost
        await gateway.logged("idle_timeout")

        # The backend goes away.
        backendName = f"tcp:127.0.0.1:{backendPort.getHost().port}"
        await backendPort.stopListening()
        self.assertEqual(await exchange(port, b"", halfClose=False), b"")

        closes = 3 + 2 + 1 + 1
        await gateway.logged(CLOSED, closes)
        # Scraped after every close was logged: after the counts changed.
        after = await scrape(gateway)

        def listener(name: str, **labels: str) -> float | None:
            return after.value(name, listener=LISTENER, **labels)

        self.assertEqual(listener("gateway_connections_accepted_total"), closes)
        self.assertEqual(listener("gateway_connections_active"), 0)
        self.assertEqual(
            listener("gateway_connections_rejected_total", reason="limit"), 0
        )
        expectedCloses = dict.fromkeys(CLOSE_REASONS, 0) | {
            "client_closed": 3,
            "protocol_error": 2,
            "idle_timeout": 1,
            "backend_unavailable": 1,
        }
        self.assertEqual(
            {
                reason: listener("gateway_connections_closed_total", reason=reason)
                for reason in CLOSE_REASONS
            },
            expectedCloses,
        )
        self.assertEqual(listener("gateway_connection_duration_seconds_count"), closes)
        # The idle pair alone lasted the idle timeout.
        self.assertGreaterEqual(
            listener("gateway_connection_duration_seconds_sum"), IDLE_TIMEOUT
        )
        self.assertEqual(
            [
                listener("gateway_messages_total", direction="upstream"),
                listener("gateway_message_bytes_total", direction="upstream"),
            ],
            up,
        )
        self.assertEqual(
            [
                listener("gateway_messages_total", direction="downstream"),
                listener("gateway_message_bytes_total", direction="downstream"),
            ],
            down,
        )
        # Every (peer, reason) series is there from the start; two were hit.
        self.assertEqual(
            after.series("gateway_protocol_errors_total"),
            {
                frozenset(
                    {
                        "service": "default",
                        "listener": LISTENER,
                        "peer": peer,
                        "reason": reason,
                    }.items()
                ): (1 if reason == "too_long" else 0)
                for peer in ["client", "backend"]
                # SPEC 5 lists proxy_header too: it exists on every listener.
                for reason in [
                    "too_long",
                    "malformed",
                    "unencodable",
                    "truncated",
                    "proxy_header",
                ]
            },
        )
        self.assertEqual(listener("gateway_tls_handshake_failures_total"), 0)

        # Every pair but the last reached the backend.
        self.assertEqual(
            after.value("gateway_backend_connect_seconds_count", backend=backendName),
            closes - 1,
        )
        self.assertEqual(backend.accepted, closes - 1)
        self.assertEqual(
            after.value("gateway_backend_connect_failures_total", backend=backendName),
            1,
        )
        self.assertEqual(after.value("gateway_draining"), 0)

        # The same counts in OpenMetrics, which Prometheus asks for first.
        openMetrics = await scrape(gateway, openMetrics=True)
        self.assertEqual(
            openMetrics.value(
                "gateway_messages_total", listener=LISTENER, direction="upstream"
            ),
            up[0],
        )

        # No _created series, and no access log line per scrape.
        self.assertNotIn("_created", after.text)
        self.assertNotIn("_created", openMetrics.text)
        self.assertNotIn("GET /metrics", gateway.log())
        self.assertNotIn("Traceback", gateway.log())

    async def test_overTheLimit(self):
        """
        With C{--max-connections 1}, a second client is accepted and closed
        at once: counted as accepted and rejected, never active, never
        closed, and it never reaches the backend.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self, LISTEN + backendOption(backendPort) + ["--max-connections", "1"]
        )
        first = await hold(gateway.port())
        await backend.whenAccepted(1)
        self.assertEqual(await exchange(gateway.port(), b"x\n", halfClose=False), b"")

        def check(scrape: Scrape, active: int, closed: int) -> None:
            def value(name: str, **labels: str) -> float | None:
                return scrape.value(name, listener=LISTENER, **labels)

            self.assertEqual(value("gateway_connections_accepted_total"), 2)
            self.assertEqual(
                value("gateway_connections_rejected_total", reason="limit"), 1
            )
            self.assertEqual(value("gateway_connections_active"), active)
            self.assertEqual(
                sum(
                    value("gateway_connections_closed_total", reason=reason)
                    for reason in CLOSE_REASONS
                ),
                closed,
            )
            self.assertEqual(value("gateway_connection_duration_seconds_count"), closed)
            self.assertEqual(value("gateway_messages_total", direction="upstream"), 0)

        check(await scrape(gateway), active=1, closed=0)
        first.transport.loseConnection()
        await first.lost
        await gateway.logged(CLOSED)
        after = await scrape(gateway)
        check(after, active=0, closed=1)
        self.assertEqual(
            after.value(
                "gateway_connections_closed_total",
                listener=LISTENER,
                reason="client_closed",
            ),
            1,
        )
        self.assertEqual((backend.accepted, backend.received), (1, []))


class PromtoolTests(TestCase):
    async def test_promtoolAcceptsMetrics(self):
        """
        C{promtool check metrics} finds nothing to say about a running
        gateway's C{/metrics} once traffic has filled in its series.
        """
        promtool = shutil.which("promtool")
        if promtool is None:
            raise self.skipTest(
                "promtool is not on PATH (Debian: apt-get install prometheus)"
            )
        gateway = await runGateway(
            self, LISTEN + ["--max-message-size", str(MAX_MESSAGE_SIZE)]
        )
        self.assertEqual(await exchange(gateway.port(), b"hello\n"), b"hello\n")
        await exchange(
            gateway.port(), b"x" * (MAX_MESSAGE_SIZE + 1) + b"\n", halfClose=False
        )
        await gateway.logged(CLOSED, 2)
        code, body = await httpGet(gateway.port("metrics"), b"/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"gateway_protocol_errors_total{", body)
        result = await getProcessOutputAndValue(
            promtool, ["check", "metrics"], env=dict(os.environ), stdinBytes=body
        )
        self.assertEqual(result, (b"", b"", 0))

    async def test_everySeriesFromStartUp(self):
        """
        Before any traffic, a gateway with a plain, a C{haproxy:} and a TLS
        listener serves every series of every label value at 0, the
        C{proxy_header} protocol errors included, and C{promtool} accepts
        it.
        """
        promtool = shutil.which("promtool")
        directory = self.mktemp()
        os.makedirs(directory)
        certificate = os.path.join(directory, "gateway.pem")
        trustme.CA().issue_cert(
            "localhost"
        ).private_key_and_cert_chain_pem.write_to_path(certificate)
        gateway = await runGateway(
            self,
            LISTEN
            + ["--listen", "haproxy:tcp:0:interface=127.0.0.1"]
            + ["--listen-tls", "tcp:0:interface=127.0.0.1"]
            + ["--tls-cert", certificate],
        )
        code, body = await httpGet(gateway.port("metrics"), b"/metrics")
        self.assertEqual(code, 200)
        samples = Scrape(body.decode()).samples

        def at0(name: str, **labels: str) -> None:
            labels["service"] = "default"
            key = (name, frozenset(labels.items()))
            self.assertEqual(samples.get(key), 0.0, key)

        for listener in ("tcp:0", "proxy+tcp:0", "tls:0"):
            at0("gateway_connections_accepted_total", listener=listener)
            at0("gateway_tls_handshake_failures_total", listener=listener)
            for reason in (
                "client_closed",
                "backend_closed",
                "idle_timeout",
                "handshake_timeout",
                "protocol_error",
                "backend_unavailable",
                "tls_error",
                "shutdown",
            ):
                at0(
                    "gateway_connections_closed_total", listener=listener, reason=reason
                )
            for reason in ("limit", "per_source_limit", "rate_limit", "denied"):
                at0(
                    "gateway_connections_rejected_total",
                    listener=listener,
                    reason=reason,
                )
            for peer in ("client", "backend"):
                for reason in (
                    "too_long",
                    "malformed",
                    "unencodable",
                    "truncated",
                    "proxy_header",
                ):
                    at0(
                        "gateway_protocol_errors_total",
                        listener=listener,
                        peer=peer,
                        reason=reason,
                    )
            for direction in ("upstream", "downstream"):
                at0("gateway_messages_total", listener=listener, direction=direction)
        at0("gateway_backend_connect_failures_total", backend="demo")
        at0("gateway_backend_connect_seconds_count", backend="demo")
        if promtool is None:
            # The series above are checked all the same.
            return
        result = await getProcessOutputAndValue(
            promtool, ["check", "metrics"], env=dict(os.environ), stdinBytes=body
        )
        self.assertEqual(result, (b"", b"", 0))


class PrometheusProcess(ChildProcess):
    """
    A real Prometheus server, its output and its end.
    """

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    async def query(self, promql: str) -> float | None:
        """
        The value of an instant query that gives one sample, or L{None}
        while there is none (or Prometheus does not answer yet).
        """
        path = b"/api/v1/query?" + urlencode({"query": promql}).encode("ascii")
        try:
            code, body = await httpGet(self.port, path)
        except (ConnectError, ResponseFailed):
            return None
        if code != 200:
            return None
        result = json.loads(body)["data"]["result"]
        if len(result) != 1:
            return None
        return float(result[0]["value"][1])


def startPrometheus(
    testCase: TestCase, executable: str, target: int
) -> PrometheusProcess:
    """
    Start Prometheus on a free loopback port, scraping C{127.0.0.1:target}
    every second as job C{gateway}, with its storage in a temporary
    directory. It is stopped (SIGTERM, SIGKILL past the deadline) when the
    test ends.
    """
    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(directory)
    config = os.path.join(directory, "prometheus.yml")
    # JSON is YAML.
    with open(config, "w") as file:
        json.dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "gateway",
                        "metrics_path": "/metrics",
                        "static_configs": [{"targets": [f"127.0.0.1:{target}"]}],
                    }
                ],
            },
            file,
        )
    server = PrometheusProcess(freePort())
    argv = [
        executable,
        f"--config.file={config}",
        f"--storage.tsdb.path={os.path.join(directory, 'data')}",
        f"--web.listen-address=127.0.0.1:{server.port}",
    ]
    spawn(testCase, server, argv, path=directory)
    return server


class PrometheusTests(TestCase):
    async def test_scrapedByPrometheus(self):
        """
        A real Prometheus scrapes the gateway: the target is up, and the sum
        of the upstream message counters is what the clients sent.
        """
        prometheus = shutil.which("prometheus")
        if prometheus is None:
            raise self.skipTest(
                "prometheus is not on PATH (Debian: apt-get install prometheus)"
            )
        gateway = await runGateway(self, LISTEN)
        sent = [[b"a"], [b"b", b"c"], [b"d", b"e", b"f"]]
        for messages in sent:
            reply = await exchange(gateway.port(), lines(messages))
            self.assertEqual(reply, lines(messages))
        await gateway.logged(CLOSED, len(sent))
        expected = (1.0, float(sum(map(len, sent))))

        server = startPrometheus(self, prometheus, gateway.port("metrics"))
        seen = None

        async def scraped() -> bool | None:
            nonlocal seen
            if server.exitCode is not None:
                raise AssertionError("Prometheus ended")
            seen = (
                await server.query('up{job="gateway"}'),
                await server.query(
                    'sum(gateway_messages_total{job="gateway",direction="upstream"})'
                ),
            )
            return True if seen == expected else None

        try:
            await poll(scraped, "Prometheus saw", PROMETHEUS_DEADLINE, POLL_INTERVAL)
        except AssertionError:
            self.fail(
                f"Prometheus saw (up, upstream messages) = {seen}, not"
                f" {expected}, within {PROMETHEUS_DEADLINE}s:\n"
                + server.log()
                + server.errors.decode("utf-8", "replace")
            )
        self.assertEqual(await server.stop(), 0)


class DrainingTests(TestCase):
    async def test_readyzWhileDraining(self):
        """
        After SIGTERM, while a pair is still open, C{/readyz} is 503,
        C{gateway_draining} is 1 and new connections are refused; when the
        client leaves, the gateway ends cleanly without waiting out the
        drain timeout.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            LISTEN
            + backendOption(backendPort)
            + ["--drain-timeout", str(DRAIN_TIMEOUT)],
        )
        metricsPort = gateway.port("metrics")
        client = await hold(gateway.port())
        await backend.whenAccepted(1)
        self.assertEqual(await httpGet(metricsPort, b"/readyz"), (200, b"ready\n"))
        self.assertEqual((await scrape(gateway)).value("gateway_draining"), 0)

        gateway.transport.signalProcess("TERM")
        await gateway.logged("draining 1 connections")
        self.assertEqual(await httpGet(metricsPort, b"/readyz"), (503, b"draining\n"))
        self.assertEqual(await httpGet(metricsPort, b"/healthz"), (200, b"ok\n"))
        during = await scrape(gateway)
        self.assertEqual(during.value("gateway_draining"), 1)
        self.assertEqual(
            during.value("gateway_connections_active", listener=LISTENER), 1
        )
        with self.assertRaises(ConnectionRefusedError):
            await hold(gateway.port())
        # The pair is still open at both ends.
        self.assertFalse(client.lost.called)
        self.assertEqual(len(backend.open), 1)

        client.transport.loseConnection()
        await client.lost
        code = await gateway.whenEnded()
        self.assertIn(code, (0, -15))
        log = gateway.log()
        self.assertIn("client_closed", log)
        self.assertNotIn("drain timeout", log)
        self.assertNotIn("Traceback", log)


# The per-direction counts of the closed event.
COUNTS = ["messagesUp", "bytesUp", "messagesDown", "bytesDown"]


class JSONLogTests(TestCase):
    async def test_jsonLogger(self):
        """
        With C{twistd --logger gateway.logs.jsonObserver}, every line of the
        log is a JSON event, and the C{listening on} and C{closed} events
        keep their fields and format back to their text.
        """
        gateway = await runGateway(
            self, LISTEN, twistdArgs=["--logger", "gateway.logs.jsonObserver"]
        )

        def events() -> list[tuple[str, dict]]:
            # Every complete line; the last one may still be arriving.
            complete = gateway.log().split("\n")[:-1]
            return [(line, json.loads(line)) for line in complete]

        listening = {
            event["listener"]: event["address"]
            for line, event in events()
            if event.get("log_format") == "listening on {listener} at {address}"
        }
        self.assertEqual(set(listening), {LISTENER, "metrics"})
        host, port = listening[LISTENER].rsplit(":", 1)
        self.assertEqual(host, "127.0.0.1")

        self.assertEqual(
            await exchange(int(port), b"hello\nworld\n"), b"hello\nworld\n"
        )
        await gateway.logged('"client_closed"')
        # The event's line may have arrived only in part: wait for its end.
        if not gateway.output.endswith(b"\n"):
            await gateway.logged("\n", gateway.output.count(b"\n") + 1)
        (closed,) = [
            (line, event)
            for line, event in events()
            if event.get("reason") == "client_closed"
        ]
        line, event = closed
        self.assertEqual(
            {key: event[key] for key in ["listener", "backend", "reason"]},
            {"listener": LISTENER, "backend": "demo", "reason": "client_closed"},
        )
        self.assertEqual(
            {key: event[key] for key in COUNTS},
            dict(zip(COUNTS, [2, 10, 2, 10], strict=True)),
        )
        self.assertTrue(event["client"].startswith("127.0.0.1:"), event["client"])
        self.assertIsInstance(event["duration"], float)
        self.assertEqual(event["log_level"]["name"], "info")
        self.assertTrue(event["log_namespace"].startswith("gateway.proxy"))
        text = formatEvent(eventFromJSON(line))
        prefix = f"closed {LISTENER} {event['client']} via demo after "
        self.assertTrue(text.startswith(prefix), text)
        self.assertTrue(text.endswith(" client_closed"), text)
