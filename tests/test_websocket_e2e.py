"""
End to end: WebSocket clients (SPEC section 10) through a real C{twistd
gateway --client-framing websocket}, with C{websockets}' own asyncio client
over ws:// and wss://, and a test backend speaking int32.
"""

from __future__ import annotations

import json
import os
import re
import ssl

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.basic import Int32StringReceiver
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from zope.interface import implementer

from tests.browser import DOMText, chromiumMissing, dumpDOM
from tests.e2e import (
    DEADLINE,
    GatewayProcess,
    Scrape,
    UpperBackend,
    exchange,
    freePort,
    listenBackend,
    runGateway,
    scrape,
)
from tests.test_websocket import inClient
from tests.tlsclient import Certificates

NAME = "gw.example"
ORIGIN = "https://app.example"

# A size limit small enough to send past quickly, above the 125 bytes of a
# frame's shortest length form.
LIMIT = 1000


def total(metrics: Scrape, name: str, **labels: str) -> float:
    """
    The sum of C{name}'s samples whose labels include C{labels}.
    """
    wanted = set(labels.items())
    return sum(
        value for key, value in metrics.series(name).items() if wanted <= set(key)
    )


async def gatewayFor(
    testCase: TestCase, backendPort: int, *args: str
) -> GatewayProcess:
    return await runGateway(
        testCase,
        [
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--backend",
            f"tcp:host=127.0.0.1:port={backendPort}",
            "--client-framing",
            "websocket",
            *args,
        ],
    )


async def receiveUntilClosed(ws) -> tuple[list, int | None, str | None]:
    """
    Every message until the connection closes; then the code and reason of
    the Close frame the client received (None when it received none).
    """
    replies = []
    try:
        while True:
            replies.append(await ws.recv())
    except ConnectionClosed as closed:
        received = closed.rcvd
    if received is None:
        return replies, None, None
    return replies, received.code, received.reason


@implementer(IHalfCloseableProtocol)
class HoldingBackend(Int32StringReceiver):
    """
    An int32 backend that answers nothing until the gateway shuts its write
    side; then it answers every message in upper case and closes.
    """

    def connectionMade(self) -> None:
        self.factory.opened(self)
        self.held: list[bytes] = []

    def stringReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)
        self.held.append(payload)

    def readConnectionLost(self) -> None:
        for payload in self.held:
            self.sendString(payload.upper())
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        self.factory.closed(self)


class ClosingBackend(UpperBackend):
    """
    Answers in upper case, and closes its connection after answering C{bye}.
    """

    def stringReceived(self, payload: bytes) -> None:
        super().stringReceived(payload)
        if payload == b"bye":
            self.transport.loseConnection()


class RawBackend(UpperBackend):
    """
    Answers every message with the bytes C{\\xff\\xfe}: not UTF-8.
    """

    def stringReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)
        self.sendString(b"\xff\xfe")


class MessagesTests(TestCase):
    async def exchangeMessages(self, uri: str, **options):
        sent = ["h\u00e9llo", b"\x00\xff", "", b"", "a" * LIMIT, b"b" * 200]

        async def client():
            async with connect(
                uri, compression=None, close_timeout=DEADLINE, **options
            ) as ws:
                # Fragmented, with a ping between its fragments.
                await ws.send(iter([b"frag", b"men", b"ted"]))
                for message in sent:
                    await ws.send(message)
                pong = await ws.ping(b"ping?")
                replies = [await ws.recv() for _ in range(len(sent) + 1)]
                await pong
            return replies, ws.close_code, ws.close_reason

        return await inClient(client()), sent

    def expected(self, sent) -> list[bytes]:
        return [b"FRAGMENTED"] + [
            (m.encode() if isinstance(m, str) else m).upper() for m in sent
        ]

    async def test_ws(self):
        """
        Over ws://: text, binary, empty and fragmented messages reach the
        backend whole and in order, its replies come back as binary
        messages, a ping is answered, and the client's Close ends in the
        gateway's Close 1000; the close line names the code.
        """
        backend, backendPort = listenBackend(self)
        gateway = await gatewayFor(self, backendPort, "--max-message-size", str(LIMIT))
        port = gateway.port()
        (replies, code, reason), sent = await self.exchangeMessages(
            f"ws://127.0.0.1:{port}/"
        )
        self.assertEqual((replies, code), (self.expected(sent), 1000))
        await gateway.logged("client_closed (WebSocket close 1000)")
        self.assertEqual(backend.received, [m.lower() for m in self.expected(sent)])
        metrics = await scrape(gateway)
        self.assertEqual(
            total(metrics, "gateway_messages_total", direction="upstream"),
            len(sent) + 1,
        )
        self.assertEqual(
            total(metrics, "gateway_messages_total", direction="downstream"),
            len(sent) + 1,
        )

    async def test_wss(self):
        """
        Over wss:// on a TLS listener: the same messages, the same close.
        """
        certificates = Certificates(self.mktemp())
        certFile, keyFile, _ = certificates.issue("gw", NAME)
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            [
                "--listen-tls",
                "tcp:0:interface=127.0.0.1",
                "--tls-cert",
                certFile,
                "--tls-key",
                keyFile,
                "--backend",
                f"tcp:host=127.0.0.1:port={backendPort}",
                "--client-framing",
                "websocket",
                "--max-message-size",
                str(LIMIT),
            ],
        )
        context = ssl.create_default_context(cafile=certificates.caFile)
        (replies, code, reason), sent = await self.exchangeMessages(
            f"wss://{NAME}:{gateway.port()}/",
            ssl=context,
            host="127.0.0.1",
            server_hostname=NAME,
        )
        self.assertEqual((replies, code), (self.expected(sent), 1000))
        await gateway.logged("client_closed (WebSocket close 1000)")
        self.assertEqual(len(backend.received), len(sent) + 1)

    async def test_textMessageType(self):
        """
        Under C{--websocket-message-type text} replies are text; a backend
        payload that is not UTF-8 ends the pair with Close 1011, the
        backend's C{unencodable} protocol error.
        """
        backend, backendPort = listenBackend(self)
        gateway = await gatewayFor(
            self, backendPort, "--websocket-message-type", "text"
        )
        uri = f"ws://127.0.0.1:{gateway.port()}/"

        async def client():
            async with connect(uri, close_timeout=DEADLINE) as ws:
                await ws.send("caf\u00e9")
                reply = await ws.recv()
            return reply

        self.assertEqual(await inClient(client()), "CAF\u00e9")
        await gateway.logged("closed", 1)

        raw, rawPort = listenBackend(self, RawBackend)
        gateway = await gatewayFor(self, rawPort, "--websocket-message-type", "text")
        uri = f"ws://127.0.0.1:{gateway.port()}/"

        async def rawClient():
            async with connect(uri, close_timeout=DEADLINE) as ws:
                await ws.send(b"anything")
                return await receiveUntilClosed(ws)

        self.assertEqual((await inClient(rawClient()))[:2], ([], 1011))
        await gateway.logged("protocol_error (WebSocket close 1011)")
        metrics = await scrape(gateway)
        self.assertEqual(
            total(
                metrics,
                "gateway_protocol_errors_total",
                peer="backend",
                reason="unencodable",
            ),
            1,
        )

    async def test_sizeLimit(self):
        """
        A message of exactly C{--max-message-size} bytes goes through, even
        in fragments; one byte more closes with 1009 and counts as the
        client's C{too_long}.
        """
        backend, backendPort = listenBackend(self)
        gateway = await gatewayFor(self, backendPort, "--max-message-size", str(LIMIT))
        uri = f"ws://127.0.0.1:{gateway.port()}/"

        async def client():
            async with connect(uri, close_timeout=DEADLINE, max_size=None) as ws:
                await ws.send(b"x" * LIMIT)
                whole = await ws.recv()
                await ws.send(iter([b"y" * (LIMIT // 2), b"y" * (LIMIT // 2)]))
                fragmented = await ws.recv()
                await ws.send(iter([b"z" * (LIMIT // 2), b"z" * (LIMIT // 2 + 1)]))
                rest = await receiveUntilClosed(ws)
            return len(whole), len(fragmented), rest[1]

        self.assertEqual(await inClient(client()), (LIMIT, LIMIT, 1009))
        await gateway.logged("protocol_error (WebSocket close 1009)")
        metrics = await scrape(gateway)
        self.assertEqual(
            total(
                metrics,
                "gateway_protocol_errors_total",
                peer="client",
                reason="too_long",
            ),
            1,
        )
        self.assertEqual(len(backend.received), 2)


class RefusalTests(TestCase):
    async def test_refusals(self):
        """
        A request for another path gets 404, from an origin not listed 403,
        without C{Upgrade} 426, an invalid upgrade 400; none reaches a
        backend. The 403 counts as rejected (C{denied}) and nowhere else;
        the others as the client's C{malformed} protocol errors.
        """
        backend, backendPort = listenBackend(self)
        gateway = await gatewayFor(
            self,
            backendPort,
            "--websocket-path",
            "/ws",
            "--websocket-origin",
            ORIGIN,
            "--websocket-origin",
            "http://localhost:8080",
        )
        port = gateway.port()
        uri = f"ws://127.0.0.1:{port}"

        async def client():
            statuses = []
            for path, origin in [("/other", ORIGIN), ("/ws", "https://evil.example")]:
                try:
                    async with connect(uri + path, origin=origin):
                        pass
                except InvalidStatus as error:
                    statuses.append(error.response.status_code)
            async with connect(uri + "/ws?x=1", origin=ORIGIN) as ws:
                await ws.send(b"allowed")
                statuses.append(await ws.recv())
            return statuses

        self.assertEqual(await inClient(client()), [404, 403, b"ALLOWED"])
        noUpgrade = await exchange(
            port, b"GET /ws HTTP/1.1\r\nHost: gw\r\n\r\n", halfClose=False
        )
        noKey = await exchange(
            port,
            b"GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
            halfClose=False,
        )
        self.assertTrue(noUpgrade.startswith(b"HTTP/1.1 426 "), noUpgrade)
        self.assertTrue(noKey.startswith(b"HTTP/1.1 400 "), noKey)
        # Four closed pairs (three refusals and the allowed client); the
        # refused origin is a refusal, logged as one.
        await gateway.logged("closed tcp:", 4)
        await gateway.logged("refused 1 connection(s)")
        self.assertEqual(backend.accepted, 1)
        metrics = await scrape(gateway)
        counts = {
            "accepted": total(metrics, "gateway_connections_accepted_total"),
            "denied": total(
                metrics, "gateway_connections_rejected_total", reason="denied"
            ),
            "rejected": total(metrics, "gateway_connections_rejected_total"),
            "malformed": total(
                metrics,
                "gateway_protocol_errors_total",
                peer="client",
                reason="malformed",
            ),
            "protocol_error": total(
                metrics, "gateway_connections_closed_total", reason="protocol_error"
            ),
            "client_closed": total(
                metrics, "gateway_connections_closed_total", reason="client_closed"
            ),
            "closed": total(metrics, "gateway_connections_closed_total"),
        }
        self.assertEqual(
            counts,
            {
                "accepted": 5,
                "denied": 1,
                "rejected": 1,
                "malformed": 3,
                "protocol_error": 3,
                "client_closed": 1,
                "closed": 4,
            },
        )
        self.assertEqual(gateway.log().count("closed tcp:"), 4)


class ClosingTests(TestCase):
    async def test_clientCloseIsHalfClose(self):
        """
        The client's Close shuts the backend's write side; the replies the
        backend sends only then still reach the client, before the
        gateway's Close 1000.
        """
        backend, backendPort = listenBackend(self, HoldingBackend)
        gateway = await gatewayFor(self, backendPort)
        uri = f"ws://127.0.0.1:{gateway.port()}/"

        async def client():
            ws = await connect(uri, close_timeout=DEADLINE)
            for message in (b"one", b"two", b"three"):
                await ws.send(message)
            # Returns once the gateway's Close has come, after the replies.
            await ws.close(1000, "done")
            return await receiveUntilClosed(ws)

        self.assertEqual(
            await inClient(client()), ([b"ONE", b"TWO", b"THREE"], 1000, "")
        )
        await gateway.logged("client_closed (WebSocket close 1000)")

    async def test_backendEnds(self):
        """
        The backend ending its stream ends in the gateway's Close 1000,
        after every reply it sent.
        """
        backend, backendPort = listenBackend(self, ClosingBackend)
        gateway = await gatewayFor(self, backendPort)
        uri = f"ws://127.0.0.1:{gateway.port()}/"

        async def client():
            async with connect(uri, close_timeout=DEADLINE) as ws:
                await ws.send(b"hi")
                await ws.send(b"bye")
                return await receiveUntilClosed(ws)

        self.assertEqual(await inClient(client()), ([b"HI", b"BYE"], 1000, ""))
        await gateway.logged("backend_closed (WebSocket close 1000)")

    async def test_backendUnavailable(self):
        """
        With no backend to connect, the upgraded client gets Close 1011.
        """
        gateway = await gatewayFor(self, freePort())
        uri = f"ws://127.0.0.1:{gateway.port()}/"

        async def client():
            async with connect(uri, close_timeout=DEADLINE) as ws:
                return await receiveUntilClosed(ws)

        self.assertEqual((await inClient(client()))[:2], ([], 1011))
        await gateway.logged("backend_unavailable (WebSocket close 1011)")

    async def test_idleTimeout(self):
        """
        An idle pair ends with Close 1001, reason C{idle_timeout}.
        """
        backend, backendPort = listenBackend(self)
        gateway = await gatewayFor(self, backendPort, "--idle-timeout", "0.5")
        uri = f"ws://127.0.0.1:{gateway.port()}/"

        async def client():
            async with connect(uri, close_timeout=DEADLINE, ping_interval=None) as ws:
                await ws.send(b"once")
                return await receiveUntilClosed(ws)

        self.assertEqual((await inClient(client()))[:2], ([b"ONCE"], 1001))
        await gateway.logged("idle_timeout (WebSocket close 1001)")

    async def test_drain(self):
        """
        A pair still open when the drain ends gets Close 1001, reason
        C{shutdown}, and the gateway ends cleanly.
        """
        backend, backendPort = listenBackend(self)
        gateway = await gatewayFor(self, backendPort, "--drain-timeout", "0")
        uri = f"ws://127.0.0.1:{gateway.port()}/"
        from twisted.internet.threads import blockingCallFromThread

        async def client():
            async with connect(uri, close_timeout=DEADLINE) as ws:
                await ws.send(b"before")
                first = await ws.recv()
                blockingCallFromThread(reactor, gateway.transport.signalProcess, "TERM")
                rest = await receiveUntilClosed(ws)
            return [first, *rest[0]], rest[1]

        self.assertEqual(await inClient(client()), ([b"BEFORE"], 1001))
        self.assertIn(await gateway.ended, (0, -15))
        self.assertIn("shutdown (WebSocket close 1001)", gateway.log())


# The page the browser loads. Its first script opens the WebSocket and
# writes each reply into the list; the second, /hold.js, is answered only
# once the backend has read the page's final message "done" (or the page
# reported a failure), so the load event, and with it --dump-dom, waits for
# every reply to be in the page.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>gateway websocket</title></head>
<body><ol id="replies"></ol><p id="state">waiting</p>
<script>
const sent = SENT;
const replies = document.getElementById("replies");
const state = document.getElementById("state");
const ws = new WebSocket("URI");
ws.binaryType = "arraybuffer";
let count = 0;
ws.onopen = () => { for (const m of sent) ws.send(m); };
ws.onmessage = (event) => {
  const item = document.createElement("li");
  item.textContent = "[" + new TextDecoder().decode(event.data) + "]";
  replies.appendChild(item);
  count += 1;
  if (count === sent.length) {
    state.textContent = "all replies";
    ws.send("done");
  }
};
ws.onclose = (event) => {
  if (count < sent.length) {
    state.textContent = "closed early " + event.code;
    fetch("/failed");
  }
};
</script>
<script src="/hold.js"></script>
</body></html>
"""


class DoneBackend(UpperBackend):
    """
    Answers in upper case; reading C{done}, answers nothing and tells the
    factory's C{done} Deferred.
    """

    def stringReceived(self, payload: bytes) -> None:
        if payload == b"done":
            if not self.factory.done.called:
                self.factory.done.callback(None)
            return
        super().stringReceived(payload)


def servePage(testCase: TestCase, page, release) -> int:
    """
    Serve C{page()} at / and the held /hold.js on a free loopback port; the
    script is answered once C{release} (a Deferred) fires, or /failed is
    requested.
    """

    class Page(Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return page().encode("utf-8")

    class Hold(Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"content-type", b"text/javascript")

            def answer(_):
                if not request.finished and not request._disconnected:
                    request.finish()

            release.addBoth(answer)
            return NOT_DONE_YET

    class Failed(Resource):
        isLeaf = True

        def render_GET(self, request):
            if not release.called:
                release.callback(None)
            return b""

    root = Resource()
    root.putChild(b"", Page())
    root.putChild(b"hold.js", Hold())
    root.putChild(b"failed", Failed())
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    return port.getHost().port


class BrowserTests(TestCase):
    """
    Headless Chromium's own WebSocket client, through the gateway.
    """

    skip = chromiumMissing()
    timeout = 300

    async def test_browser(self):
        """
        A page opens C{new WebSocket(...)} to the gateway, sends text
        messages (the empty one and one of several UTF-8 bytes per
        character included), and every reply shows in the page, in order;
        the page's origin is the one allowed.
        """
        backend, backendPort = listenBackend(self, DoneBackend)
        backend.done = Deferred()
        sent = ["hello", "", "caf\u00e9 \u20ac", "x" * 300, "order 5", "order 6"]
        gatewayPort = []

        def page() -> str:
            uri = f"ws://127.0.0.1:{gatewayPort[0]}/"
            return PAGE.replace("SENT", json.dumps(sent)).replace("URI", uri)

        pagePort = servePage(self, page, backend.done)
        gateway = await gatewayFor(
            self, backendPort, "--websocket-origin", f"http://127.0.0.1:{pagePort}"
        )
        gatewayPort.append(gateway.port())
        dom = await dumpDOM(
            os.path.abspath(self.mktemp()), f"http://127.0.0.1:{pagePort}/"
        )
        replies = re.findall(r"<li>\[(.*?)\]</li>", dom)
        self.assertEqual(replies, [m.encode().upper().decode() for m in sent])
        self.assertIn("all replies", DOMText(dom).text)
        self.assertEqual(backend.received, [m.encode() for m in sent])


class HandshakeTimeoutTests(TestCase):
    async def test_upgradeUnderHandshakeTimeout(self):
        """
        An upgrade request that does not complete within
        C{--handshake-timeout} (SPEC section 9) ends the connection with
        reason C{handshake_timeout}; no backend is connected.
        """
        from gateway.tap import Options

        if "handshake-timeout" not in {o[0] for o in Options.optParameters}:
            raise SkipTest("this gateway has no --handshake-timeout yet")
        backend, backendPort = listenBackend(self)
        gateway = await gatewayFor(self, backendPort, "--handshake-timeout", "0.5")
        # The request line and one header, never the blank line that ends it.
        received = await exchange(
            gateway.port(), b"GET / HTTP/1.1\r\nHost: gw\r\n", halfClose=False
        )
        self.assertEqual(received, b"")
        await gateway.logged("handshake_timeout")
        self.assertEqual(backend.accepted, 0)
