"""
End to end: a real C{twistd gateway} checks its backends (SPEC section 8),
says so on C{/readyz}, keeps clients off a dead backend, and shows it all
on its status page, read by a real browser.
"""

from __future__ import annotations

import json
import os
import shutil

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.browser import DOMText, chromiumMissing, dumpDOM, screenshot
from tests.e2e import (
    DEADLINE,
    GatewayProcess,
    backendOption,
    httpGet,
    listenBackend,
    metrics,
    poll,
    runGateway,
    untilMetric,
    value,
)
from tests.reliability import Client, connect, runBackendProcess
from tests.test_scaleout import HAPROXY, startHAProxy

LISTEN = ["--listen", "tcp:0:interface=127.0.0.1"]
# Small, to keep the tests short; the rules are the same at any scale.
INTERVAL = 0.2
RISE = 2
FALL = 3


def checks(mode: str = "connect", fall: int = FALL) -> list[str]:
    return [
        "--health-check",
        mode,
        "--health-check-interval",
        str(INTERVAL),
        # A refused connect fails at once; the timeout only bounds a hang.
        "--health-check-timeout",
        "1",
        "--health-check-rise",
        str(RISE),
        "--health-check-fall",
        str(fall),
    ]


# Where the test that renders the status page also saves its screenshot,
# when set (the docs' picture is made this way).
SCREENSHOT_PATH = os.environ.get("GATEWAY_STATUS_SCREENSHOT")


class Load:
    """
    New clients, one after the other, each sending a line and waiting for
    its reply or its end, until told to stop: traffic while a backend dies.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.running = True
        self.clients = 0
        self.done = Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        while self.running:
            client = await connect(self.port)
            self.clients += 1
            client.send(b"load\n")
            # A reply, or the end when the backend is gone.
            await client.until(lambda c: c.readClosed or b"\n" in c.received)
            if not client.closed.called:
                client.transport.loseConnection()
            await client.untilClosed()

    async def stop(self) -> None:
        self.running = False
        await self.done


class DeadBackendTests(TestCase):
    async def test_killAndRestart(self) -> None:
        """
        Kill the only backend under load: its checks fail C{fall} times in
        a row and it is down (one log line with the reason); C{/readyz} is
        503 naming the service; a new client is closed at once,
        C{backend_unavailable}, with no connect tried (the connect failures
        do not move). Restart it: C{rise} checks later it is up, C{/readyz}
        is 200 and clients are served again.
        """
        backend = await runBackendProcess(self)
        port = backend.port
        name = f"tcp:127.0.0.1:{port}"
        gateway = await runGateway(
            self,
            LISTEN + backendOption(port) + checks(),
        )
        metricsPort = gateway.ports["metrics"]
        self.assertEqual(await httpGet(metricsPort, b"/readyz"), (200, b"ready\n"))

        held = [await connect(gateway.port()) for _ in range(5)]
        for client in held:
            client.send(b"hello\n")
            await client.untilLines(1)
        load = Load(gateway.port())

        async def loaded() -> bool | None:
            return load.clients >= 5 or None

        await poll(loaded, "5 clients of the load served", interval=INTERVAL)
        await backend.kill()
        await gateway.logged(
            f"backend {name} of default is down: {FALL} checks failed:"
            " connection refused"
        )
        await load.stop()
        for client in held:
            await client.untilClosed()

        self.assertEqual(
            await httpGet(metricsPort, b"/readyz"),
            (503, b"service default: no backend up\n"),
        )
        # Every pair of the load has ended on the gateway's side too.
        before = await untilMetric(
            metricsPort,
            lambda samples: (
                value(samples, "gateway_connections_active", listener="tcp:0") == 0
            ),
        )
        self.assertEqual(value(before, "gateway_backend_up", backend=name), 0)
        failed = value(
            before, "gateway_backend_checks_total", backend=name, result="failure"
        )
        self.assertGreaterEqual(failed, FALL)
        unavailable = value(
            before,
            "gateway_connections_closed_total",
            listener="tcp:0",
            reason="backend_unavailable",
        )
        client = await connect(gateway.port())
        client.send(b"anyone?\n")
        await client.untilClosed()
        self.assertEqual(client.received, b"")
        after = await untilMetric(
            metricsPort,
            lambda samples: (
                value(
                    samples,
                    "gateway_connections_closed_total",
                    listener="tcp:0",
                    reason="backend_unavailable",
                )
                == unavailable + 1
            ),
        )
        self.assertEqual(
            value(after, "gateway_backend_connect_failures_total", backend=name),
            value(before, "gateway_backend_connect_failures_total", backend=name),
        )

        await runBackendProcess(self, port)
        await gateway.logged(f"backend {name} of default is up: {RISE} checks passed")
        self.assertEqual(await httpGet(metricsPort, b"/readyz"), (200, b"ready\n"))
        client = await connect(gateway.port())
        client.send(b"back\n")
        await client.untilLines(1)
        self.assertEqual(client.received, b"BACK\n")
        client.transport.loseConnection()
        await client.untilClosed()
        # Each change was logged once.
        self.assertEqual(gateway.log().count(f"backend {name} of default is down"), 1)
        self.assertEqual(gateway.log().count(f"backend {name} of default is up"), 1)


class ProbeTests(TestCase):
    async def test_wrongAnswer(self) -> None:
        """
        A backend that accepts but answers the probe wrongly is down: the
        log line quotes its reply and the expression.
        """
        backend, port = listenBackend(self)
        name = f"tcp:127.0.0.1:{port}"
        gateway = await runGateway(
            self,
            LISTEN
            + backendOption(port)
            + checks("probe", fall=2)
            + ["--health-check-send", "ping", "--health-check-expect", "^pong$"],
        )
        await gateway.logged(
            f"backend {name} of default is down: 2 checks failed:"
            " reply b'PING' does not match '^pong$'"
        )
        self.assertEqual(
            await httpGet(gateway.ports["metrics"], b"/readyz"),
            (503, b"service default: no backend up\n"),
        )
        self.assertIn(b"ping", backend.received)

    async def test_rightAnswer(self) -> None:
        """
        A backend that answers the probe as expected stays up, its checks
        counted as successes.
        """
        backend, port = listenBackend(self)
        name = f"tcp:127.0.0.1:{port}"
        gateway = await runGateway(
            self,
            LISTEN
            + backendOption(port)
            + checks("probe", fall=1)
            + ["--health-check-send", "ping", "--health-check-expect", "^PING$"],
        )
        samples = await untilMetric(
            gateway.ports["metrics"],
            lambda samples: (
                value(
                    samples,
                    "gateway_backend_checks_total",
                    backend=name,
                    result="success",
                )
                >= 3
            ),
        )
        self.assertEqual(
            value(
                samples, "gateway_backend_checks_total", backend=name, result="failure"
            ),
            0,
        )
        self.assertEqual(value(samples, "gateway_backend_up", backend=name), 1)
        self.assertNotIn("is down", gateway.log())


def listenerCounts(samples: dict, listener: str) -> dict[str, float]:
    rejected = sum(
        count
        for (name, labels), count in samples.items()
        if name == "gateway_connections_rejected_total"
        and dict(labels)["listener"] == listener
    )
    return {
        "active": value(samples, "gateway_connections_active", listener=listener),
        "accepted": value(
            samples, "gateway_connections_accepted_total", listener=listener
        ),
        "rejected": rejected,
    }


class StatusPageTests(TestCase):
    skip = chromiumMissing()

    async def startGateway(self) -> tuple[GatewayProcess, str, str, Client]:
        """
        A gateway with a live backend and a dead one whose name holds
        C{<script>} (a UNIX socket file may be called that), the dead one
        down, one pair open and a few served.
        """
        backend, port = listenBackend(self)
        live = f"tcp:127.0.0.1:{port}"
        directory = self.mktemp()
        os.makedirs(directory)
        dead = "unix:<script>.sock"
        gateway = await runGateway(
            self,
            LISTEN
            + backendOption(port)
            + ["--backend", f"unix:path={directory}/<script>.sock"]
            + checks(),
        )
        await gateway.logged(f"backend {dead} of default is down")
        for _ in range(3):
            client = await connect(gateway.port())
            client.send(b"hello\n")
            await client.untilLines(1)
            client.transport.loseConnection()
            await client.untilClosed()
        held = await connect(gateway.port())
        held.send(b"held\n")
        await held.untilLines(1)
        self.addCleanup(lambda: held.transport.loseConnection())
        # The pairs of the clients that left have ended on the gateway's
        # side too: from here on no count moves.
        await untilMetric(
            gateway.ports["metrics"],
            lambda samples: (
                value(samples, "gateway_connections_active", listener="tcp:0") == 1
            ),
        )
        return gateway, live, dead, held

    async def test_page(self) -> None:
        """
        Headless Chromium loads C{/} from a real gateway: the service, its
        listener and bound address, each backend and its state are in the
        rendered text; the backend named with C{<script>} is shown as text,
        and the page has no script element. C{/status.json} and
        C{/metrics} give the same counts.
        """
        gateway, live, dead, held = await self.startGateway()
        metricsPort = gateway.ports["metrics"]
        url = f"http://127.0.0.1:{metricsPort}/"
        profile = self.mktemp()
        document = await dumpDOM(profile, url)
        page = DOMText(document)
        self.assertNotIn("script", page.tags)
        for text in [
            "default",
            "tcp:0",
            f"127.0.0.1:{gateway.port()}",
            live,
            dead,
            "UP",
            "DOWN",
            "1 of 2 backends up",
            "no such file or directory",
        ]:
            self.assertIn(text, page.text)

        picture = os.path.join(self.mktemp() + ".png")
        await screenshot(self.mktemp(), url, picture, "1280,520")
        with open(picture, "rb") as png:
            self.assertEqual(png.read(8), b"\x89PNG\r\n\x1a\n")
        if SCREENSHOT_PATH:
            shutil.copyfile(picture, SCREENSHOT_PATH)

        # Nothing else moves the counts now: the held pair stays open.
        code, body = await httpGet(metricsPort, b"/status.json")
        samples = await metrics(metricsPort)
        self.assertEqual(code, 200)
        status = json.loads(body)
        self.assertEqual(status["connections_active"], 1)
        self.assertFalse(status["draining"])
        [listener] = status["services"]["default"]["listeners"]
        self.assertEqual(listener["address"], f"127.0.0.1:{gateway.port()}")
        self.assertEqual(
            {key: listener[key] for key in ("active", "accepted", "rejected")},
            listenerCounts(samples, listener["name"]),
        )
        self.assertEqual(listener["accepted"], 4)
        backends = status["services"]["default"]["backends"]
        self.assertEqual([b["name"] for b in backends], [live, dead])
        self.assertEqual([b["active"] for b in backends], [1, 0])
        for backend in backends:
            self.assertEqual(
                backend["connect_failures"],
                value(
                    samples,
                    "gateway_backend_connect_failures_total",
                    backend=backend["name"],
                ),
            )
            self.assertEqual(
                backend["state"] == "up",
                value(samples, "gateway_backend_up", backend=backend["name"]) == 1,
            )
            self.assertIsNotNone(backend["last_check_seconds_ago"])
        self.assertEqual([b["state"] for b in backends], ["up", "down"])
        held.transport.loseConnection()
        await held.untilClosed(DEADLINE)


# The README's "Behind HAProxy" example, on loopback, with short intervals.
HAPROXY_CONFIG = """\
global
    maxconn 1000

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 2s
    retries 3
    option redispatch

frontend ready
    bind 127.0.0.1:{readyPort}
    tcp-request connection reject

frontend gateway
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET /readyz
    default-server inter 200ms fall 2 rise 2
    server gw1 127.0.0.1:{first} send-proxy-v2 check port {firstMetrics}
    server gw2 127.0.0.1:{second} send-proxy-v2 check port {secondMetrics}
"""


class BehindHAProxyTests(TestCase):
    skip = None if HAPROXY else "haproxy is not installed"

    async def test_readyzTakesGatewayOut(self) -> None:
        """
        HAProxy checking each gateway's C{/readyz} over HTTP takes out the
        gateway whose only backend died: every client is then served by
        the other one.
        """
        dying = await runBackendProcess(self)
        steady, steadyPort = listenBackend(self)
        listen = ["--listen", "haproxy:tcp:0:interface=127.0.0.1"]
        first = await runGateway(
            self,
            listen + backendOption(dying.port) + checks(),
        )
        second = await runGateway(
            self,
            listen + backendOption(steadyPort) + checks(),
        )
        port, haproxy = await startHAProxy(
            self,
            first.port("proxy+tcp:0"),
            second.port("proxy+tcp:0"),
            HAPROXY_CONFIG,
            firstMetrics=first.ports["metrics"],
            secondMetrics=second.ports["metrics"],
        )
        await dying.kill()
        await first.logged("of default is down")
        await haproxy.logged("Server gateways/gw1 is DOWN")
        self.assertNotIn(b"gw2 is DOWN", haproxy.output)
        for index in range(4):
            client = await connect(port)
            client.send(b"client %d\n" % index)
            await client.untilLines(1)
            self.assertEqual(client.received, b"CLIENT %d\n" % index)
            client.transport.loseConnection()
            await client.untilClosed()
        self.assertEqual(len(steady.received), 4)
