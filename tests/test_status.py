"""
Tests for L{gateway.status}: the JSON, the page's escaping and states, the
web resources, and the page as a real browser shows it.
"""

from __future__ import annotations

import json
import os
import statistics
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.server import Site

from gateway.health import FAILURE, SUCCESS, BackendHealth
from gateway.status import (
    BackendStatus,
    ListenerStatus,
    ServiceStatus,
    Snapshot,
    backendStatus,
    duration,
    renderHTML,
    renderJSON,
    statusRoot,
)
from tests.browser import DOMText, chromiumMissing, dumpDOM, screenshot
from tests.e2e import DEADLINE

log = Logger(namespace="tests.test_status")

SCRIPT_NAME = "<script>alert(1)</script>"
# A name that would change the page's title if it ever ran as a script.
TITLE_SCRIPT = '<script>document.title="ran"</script>'


def sample() -> Snapshot:
    """
    Two services: one with a backend down (named like a script), one with
    no backend up.
    """
    return Snapshot(
        version="1.4.0",
        uptime_seconds=3 * 86400 + 7260.5,
        draining=False,
        connections_active=41,
        services={
            "orders": ServiceStatus(
                listeners=[
                    ListenerStatus("tcp:7000", "0.0.0.0:7000", 40, 120345, 12),
                    ListenerStatus("tls:7443", "[::1]:7443", 1, 77, 0),
                ],
                backends=[
                    BackendStatus(
                        "tcp:10.0.0.5:9000",
                        "up",
                        39,
                        0,
                        last_check_seconds_ago=0.8,
                        last_check_result=SUCCESS,
                        last_change_seconds_ago=None,
                    ),
                    BackendStatus(
                        SCRIPT_NAME,
                        "down",
                        0,
                        17,
                        last_check_seconds_ago=1.2,
                        last_check_result=FAILURE,
                        last_check_reason="connection refused",
                        last_change_seconds_ago=125.0,
                    ),
                    BackendStatus("unix:quotes.sock", "up", 2, 1),
                ],
            ),
            "quotes": ServiceStatus(
                listeners=[ListenerStatus("unix:quotes-in.sock", "unix", 0, 3, 0)],
                backends=[
                    BackendStatus(
                        TITLE_SCRIPT,
                        "down",
                        0,
                        4,
                        last_check_seconds_ago=0.1,
                        last_check_result=FAILURE,
                        last_check_reason="TLS: certificate verify failed",
                        last_change_seconds_ago=30.0,
                    )
                ],
            ),
        },
    )


def large() -> Snapshot:
    """
    100 backends over 10 services of 2 listeners each, carrying 10,000
    active pairs between them (the snapshot holds counts, not pairs).
    """
    services = {}
    for s in range(10):
        services[f"service-{s}"] = ServiceStatus(
            listeners=[
                ListenerStatus(f"tcp:{7000 + 2 * s + i}", "0.0.0.0:7000", 500, 10**7, 9)
                for i in range(2)
            ],
            backends=[
                BackendStatus(
                    f"tcp:10.0.{s}.{b}:9000",
                    "up" if b % 7 else "down",
                    100,
                    b,
                    last_check_seconds_ago=1.5,
                    last_check_result=SUCCESS if b % 7 else FAILURE,
                    last_check_reason=None if b % 7 else "connection refused",
                    last_change_seconds_ago=3600.0,
                )
                for b in range(10)
            ],
        )
    return Snapshot("1.4.0", 1e6, False, 10_000, services)


class JSONTests(SynchronousTestCase):
    """
    L{renderJSON} has exactly the keys SPEC section 8 lists, and a few more.
    """

    def test_keys(self) -> None:
        data = json.loads(renderJSON(sample()))
        self.assertEqual(
            set(data),
            {"version", "uptime_seconds", "draining", "connections_active", "services"},
        )
        self.assertEqual(list(data["services"]), ["orders", "quotes"])
        orders = data["services"]["orders"]
        self.assertEqual(set(orders), {"listeners", "backends"})
        self.assertEqual(
            orders["listeners"][0],
            {
                "name": "tcp:7000",
                "address": "0.0.0.0:7000",
                "active": 40,
                "accepted": 120345,
                "rejected": 12,
            },
        )
        self.assertEqual(
            orders["backends"][1],
            {
                "name": SCRIPT_NAME,
                "state": "down",
                "active": 0,
                "connect_failures": 17,
                "last_check_seconds_ago": 1.2,
                # Beyond SPEC's list:
                "last_check_result": "failure",
                "last_check_reason": "connection refused",
                "last_change_seconds_ago": 125.0,
            },
        )
        self.assertIsNone(orders["backends"][2]["last_check_seconds_ago"])
        self.assertEqual(
            (data["version"], data["uptime_seconds"], data["draining"]),
            ("1.4.0", 266460.5, False),
        )
        self.assertEqual(data["connections_active"], 41)

    def test_fromHealth(self) -> None:
        """
        L{backendStatus} turns a checker's state and clock time into ages.
        """
        health = BackendHealth(
            "tcp:h:1",
            up=False,
            lastCheck=100.0,
            lastResult=FAILURE,
            lastReason="connection refused",
            lastChange=90.0,
            failures=3,
        )
        self.assertEqual(
            backendStatus(health, now=101.5, active=2, connectFailures=5),
            BackendStatus(
                "tcp:h:1", "down", 2, 5, 1.5, FAILURE, "connection refused", 11.5
            ),
        )
        fresh = backendStatus(BackendHealth("b"), now=5.0, active=0, connectFailures=0)
        self.assertEqual(
            (fresh.state, fresh.last_check_seconds_ago, fresh.last_change_seconds_ago),
            ("up", None, None),
        )


class HTMLTests(SynchronousTestCase):
    """
    L{renderHTML} as text.
    """

    def test_escaped(self) -> None:
        page = renderHTML(sample()).decode("utf-8")
        self.assertNotIn("<script", page)
        self.assertIn("&lt;script&gt;alert(1)&lt;/script&gt;", page)
        self.assertIn("&lt;script&gt;document.title=&quot;ran&quot;", page)

    def test_selfContained(self) -> None:
        """
        No external asset: no script, link, image or font is fetched.
        """
        page = renderHTML(sample()).decode("utf-8")
        for fragment in ("<script", "<link", "<img", "src=", "url(", "@import", "//"):
            self.assertNotIn(fragment, page.replace("http-equiv", ""))
        self.assertIn('<meta http-equiv="refresh" content="5">', page)
        self.assertIn('name="viewport"', page)

    def test_states(self) -> None:
        """
        A state is a word and a symbol, not a colour alone; a service with no
        backend up, and the page as a whole, say so.
        """
        text = DOMText(renderHTML(sample()).decode("utf-8")).text
        self.assertIn(f"{SCRIPT_NAME} ▼ DOWN 0 17 failure, 1.2 s ago", text)
        self.assertIn("tcp:10.0.0.5:9000 ▲ UP 39 0 success, 0.8 s ago", text)
        self.assertIn("quotes ▼ NO BACKEND UP", text)
        self.assertIn("orders 2 of 3 backends up 41 active", text)
        self.assertIn("▼ NOT READY", text)
        self.assertIn("uptime 3 d 2 h", text)

    def test_duration(self) -> None:
        self.assertEqual(
            [duration(s) for s in (0.04, 9.96, 42.9, 185, 7440, 266460.5)],
            ["0.0 s", "10.0 s", "42 s", "3 min 5 s", "2 h 4 min", "3 d 2 h"],
        )

    def test_renderTime(self) -> None:
        """
        Rendering 100 backends and 10,000 pairs' worth of counts: the time is
        written to the test log (not asserted: it depends on the machine).
        """
        snapshot = large()
        for name, render in (("html", renderHTML), ("json", renderJSON)):
            times = []
            for _ in range(50):
                started = time.perf_counter()
                body = render(snapshot)
                times.append(time.perf_counter() - started)
            log.info(
                "status: {name} render of 100 backends: median {median:.2f} ms,"
                " max {max:.2f} ms, {size} bytes",
                name=name,
                median=statistics.median(times) * 1000,
                max=max(times) * 1000,
                size=len(body),
            )
        self.assertIn(b"tcp:10.0.9.9:9000", renderHTML(snapshot))


class _Tracking(WrappingFactory):
    """
    Knows when every connection it served has closed.
    """

    def __init__(self, wrapped: Site) -> None:
        super().__init__(wrapped)
        self._waiters: list[Deferred[None]] = []

    def unregisterProtocol(self, p: object) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def allClosed(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self.protocols:
            self._waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter


def serve(testCase: TestCase, snapshot: Snapshot) -> str:
    """
    Serve C{statusRoot} on 127.0.0.1, a free port; returns the base URL.
    When the test ends, wait for its connections to close and stop it.
    """
    factory = _Tracking(Site(statusRoot(lambda: snapshot)))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    async def cleanup() -> None:
        await port.stopListening()
        for protocol in list(factory.protocols):
            # The browser is gone by now; a keep-alive connection it left
            # half-open is not the page's business.
            protocol.transport.loseConnection()
        await factory.allClosed().addTimeout(DEADLINE, reactor)

    testCase.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    return f"http://127.0.0.1:{port.getHost().port}/"


class ResourceTests(TestCase):
    """
    The resources over real HTTP.
    """

    async def get(self, url: str) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        agent = Agent(reactor)
        response = await agent.request(b"GET", url.encode("ascii")).addTimeout(
            DEADLINE, reactor
        )
        body = await readBody(response)
        return response.code, dict(response.headers.getAllRawHeaders()), body

    async def test_paths(self) -> None:
        """
        C{/} is the page, C{/status.json} the JSON, anything else 404.
        """
        base = serve(self, sample())
        code, headers, body = await self.get(base)
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"Content-Type"], [b"text/html; charset=utf-8"])
        self.assertIn(b"default-src 'none'", headers[b"Content-Security-Policy"][0])
        self.assertEqual(body, renderHTML(sample()))
        code, headers, body = await self.get(base + "status.json")
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"Content-Type"], [b"application/json"])
        self.assertEqual(json.loads(body), json.loads(renderJSON(sample())))
        code, _, _ = await self.get(base + "nothing")
        self.assertEqual(code, 404)


class BrowserTests(TestCase):
    """
    The page in headless Chromium, served by twisted.web.
    """

    skip = chromiumMissing()
    timeout = 300

    async def test_page(self) -> None:
        """
        The browser shows every service, listener and backend with its
        state; script-like names are text and never run. Screenshots of a
        desktop and a phone window are saved for people to look at.
        """
        snapshot = sample()
        url = serve(self, snapshot)
        profile = os.path.abspath(self.mktemp())
        dom = await dumpDOM(profile, url)
        shown = DOMText(dom)
        self.assertNotIn("script", shown.tags)
        self.assertIn("<title>gateway status</title>", dom)
        for name, service in snapshot.services.items():
            self.assertIn(name, shown.text)
            for listener in service.listeners:
                self.assertIn(f"{listener.name} {listener.address}", shown.text)
            for backend in service.backends:
                badge = "▲ UP" if backend.state == "up" else "▼ DOWN"
                self.assertIn(f"{backend.name} {badge}", shown.text)
        self.assertIn("<script>alert(1)</script> ▼ DOWN", shown.text)
        self.assertIn("connection refused", shown.text)
        for name, size in (
            ("status-page.png", "1280,900"),
            ("status-page-phone.png", "390,844"),
        ):
            path = os.path.abspath(name)
            await screenshot(profile, url, path, size)
            log.info("status: screenshot saved to {path}", path=path)
