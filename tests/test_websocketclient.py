"""
Tests for L{gateway.websocketclient} and WebSocket clients in
L{gateway.proxy}: the upgrade as a preamble step, the directions, the close
codes by close reason, the close timer and the pongs' backpressure, driven
by hand with string transports and a clock.
"""

from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from websockets.frames import BINARY, CLOSE, PING, PONG, Close, Frame

from gateway import stats
from gateway.codec import framing
from gateway.codec.websocket import DENIED
from gateway.pair import Phase
from gateway.websocketclient import (
    CLOSE_TIMEOUT,
    WebSocketSettings,
    checkOrigin,
    checkPath,
)
from tests.test_proxy import (
    LIMIT,
    HalfCloseableTransport,
    Harness,
    StuckTransport,
    frame,
)
from tests.test_websocket import clientFrame, serverFrames

REQUEST = (
    b"GET /ws HTTP/1.1\r\n"
    b"Host: gw.example\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Origin: https://app.example\r\n"
    b"\r\n"
)
# RFC 6455 section 1.3's example key and its accept value.
ACCEPT = b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def binary(payload: bytes) -> bytes:
    return clientFrame(BINARY, payload)


def harness(**options) -> Harness:
    settings = WebSocketSettings(
        "/ws", ("https://app.example",), options.pop("messageType", "binary"), LIMIT
    )
    return Harness(websocket=settings, **options)


def closeCode(data: bytes) -> int:
    last = serverFrames(data)[-1]
    assert last.opcode is CLOSE, last
    return Close.parse(last.data).code


def upgraded(h: Harness, transport=None):
    """
    A client through its upgrade, its backend connected.
    """
    if transport is None:
        client, clientTransport = h.connectClient()
    else:
        client = h.factory.buildProtocol(None)
        clientTransport = transport
        transport.protocol = client
        client.makeConnection(transport)
    client.dataReceived(REQUEST)
    backend, backendTransport = h.connectBackend()
    clientTransport.clear()
    return client, clientTransport, backend, backendTransport


class UpgradeStepTests(SynchronousTestCase):
    def test_noBackendBeforeUpgrade(self):
        """
        The backend is connected once the whole request is read; the frames
        after it in the same chunk reach the backend once it is connected.
        """
        h = harness()
        client, transport = h.connectClient()
        client.dataReceived(REQUEST[:-1])
        self.assertEqual((h.attempts, transport.value()), ([], b""))
        self.assertEqual(client.pair.phase, Phase.PREAMBLE)
        client.dataReceived(REQUEST[-1:] + binary(b"early"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        self.assertIn(ACCEPT, transport.value())
        self.assertEqual(client.pair.phase, Phase.CONNECTING)
        self.assertEqual(transport.producerState, "paused")
        backend, backendTransport = h.connectBackend()
        self.assertEqual(backendTransport.value(), frame(b"early"))
        self.assertEqual(transport.producerState, "producing")

    def test_pathRefused(self):
        """
        Another path: 404, the client's malformed protocol error, no backend.
        """
        h = harness()
        client, transport = h.connectClient()
        client.dataReceived(REQUEST.replace(b"/ws", b"/other"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 404 "))
        self.assertEqual(h.attempts, [])
        self.assertEqual(
            (h.stats.named("protocolError"), h.stats.named("closed")),
            ([(stats.CLIENT, "malformed")], [(stats.PROTOCOL_ERROR, 0.0)]),
        )

    def test_originRefused(self):
        """
        Another origin: 403, counted as rejected (C{denied}) and nowhere
        else, no close line, no backend.
        """
        h = harness()
        client, transport = h.connectClient()
        client.dataReceived(REQUEST.replace(b"app.example", b"evil.example"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403 "))
        self.assertFalse(transport.connected)
        self.assertEqual(h.attempts, [])
        self.assertEqual(
            [event[0] for event in h.stats.events], ["accepted", "rejected"]
        )
        self.assertEqual(h.stats.named("rejected"), [(DENIED,)])
        self.assertEqual(len(h.connections), 0)

    def test_behindProxyLocal(self):
        """
        Behind a PROXY header, a C{LOCAL} one (a load balancer's check)
        adds no first-byte step: the upgrade request is what is waited for,
        and no backend is connected before it is complete.
        """
        h = harness(proxyHeader=True)
        client, transport = h.connectClient()
        client.proxyHeaderReceived(True)
        self.assertEqual(
            [step.name for step in client.pair.steps], ["WebSocket upgrade"]
        )
        client.dataReceived(REQUEST[:20])
        self.assertEqual(h.attempts, [])
        client.dataReceived(REQUEST[20:])
        self.assertEqual(len(h.attempts), 1)

    def test_leftDuringUpgrade(self):
        """
        A client that leaves before its request is complete has closed.
        """
        h = harness()
        client, transport = h.connectClient()
        client.dataReceived(REQUEST[:10])
        transport.loseConnection()
        self.assertEqual(h.stats.named("closed"), [(stats.CLIENT_CLOSED, 0.0)])


class CloseCodeTests(SynchronousTestCase):
    def test_idleTimeout(self):
        """
        The idle timeout sends Close 1001 and closes, rather than aborting.
        """
        h = harness(idleTimeout=10)
        client, transport, backend, backendTransport = upgraded(h)
        h.clock.advance(10)
        self.assertEqual(closeCode(transport.value()), 1001)
        self.assertFalse(transport.connected)
        self.assertEqual(h.stats.named("closed"), [(stats.IDLE_TIMEOUT, 10.0)])

    def test_shutdownWaitsForClose(self):
        """
        At the end of a drain the client gets Close 1001 and the bytes before
        it; only past the close timeout is its connection aborted.
        """
        h = harness()
        stuck = StuckTransport()
        client, transport, backend, backendTransport = upgraded(h, stuck)
        backend.dataReceived(frame(b"last"))
        h.connections.closeAll(stats.SHUTDOWN)
        frames = serverFrames(transport.value())
        self.assertEqual([f.data for f in frames[:1]], [b"last"])
        self.assertEqual(closeCode(transport.value()), 1001)
        self.assertTrue(transport.connected)
        h.clock.advance(CLOSE_TIMEOUT)
        self.assertFalse(transport.connected)
        self.assertEqual(h.stats.named("closed"), [(stats.SHUTDOWN, CLOSE_TIMEOUT)])

    def test_backendEndsClientSilent(self):
        """
        The backend's end sends Close 1000; a client that never answers it
        is aborted after the close timeout, closed by the backend.
        """
        h = harness()
        stuck = StuckTransport()
        client, transport, backend, backendTransport = upgraded(h, stuck)
        backend.readConnectionLost()
        self.assertEqual(closeCode(transport.value()), 1000)
        self.assertTrue(transport.connected)
        h.clock.advance(CLOSE_TIMEOUT)
        self.assertFalse(transport.connected)
        self.assertEqual(
            h.stats.named("closed"), [(stats.BACKEND_CLOSED, CLOSE_TIMEOUT)]
        )

    def test_clientCloseHalfCloses(self):
        """
        The client's Close shuts the backend's write side; the replies that
        follow reach the client, then Close 1000 when the backend ends.
        """
        h = harness()
        client, transport, backend, backendTransport = upgraded(h)
        client.dataReceived(
            binary(b"q") + clientFrame(CLOSE, Close(1000, "").serialize())
        )
        self.assertTrue(backendTransport.writeClosed)
        self.assertTrue(transport.connected)
        backend.dataReceived(frame(b"a"))
        backend.readConnectionLost()
        frames = serverFrames(transport.value())
        self.assertEqual([f.data for f in frames[:1]], [b"a"])
        self.assertEqual(closeCode(transport.value()), 1000)
        self.assertEqual(h.stats.named("closed"), [(stats.CLIENT_CLOSED, 0.0)])

    def test_backendProtocolError(self):
        """
        A backend's protocol error sends 1011; an unavailable backend too.
        """
        h = harness()
        client, transport, backend, backendTransport = upgraded(h)
        backend.dataReceived(b"\xff\xff\xff\xff")
        self.assertEqual(closeCode(transport.value()), 1011)
        h = harness()
        client, transport = h.connectClient()
        client.dataReceived(REQUEST)
        transport.clear()
        h.attempts[0][1].errback(ConnectionRefusedError())
        self.assertEqual(closeCode(transport.value()), 1011)

    def test_textUnencodable(self):
        """
        Under the text message type, a backend payload that is not UTF-8
        is the backend's unencodable error: Close 1011.
        """
        h = harness(messageType="text")
        client, transport, backend, backendTransport = upgraded(h)
        backend.dataReceived(frame(b"ok") + frame(b"\xff"))
        frames = serverFrames(transport.value())
        self.assertEqual(frames[0].data, b"ok")
        self.assertEqual(closeCode(transport.value()), 1011)
        self.assertEqual(
            h.stats.named("protocolError"), [(stats.BACKEND, "unencodable")]
        )

    def test_clientProtocolError(self):
        """
        A client's bad frame sends its own close code (here 1002) once.
        """
        h = harness()
        client, transport, backend, backendTransport = upgraded(h)
        client.dataReceived(Frame(PING, b"").serialize(mask=False))
        codes = [
            Close.parse(f.data).code
            for f in serverFrames(transport.value())
            if f.opcode is CLOSE
        ]
        self.assertEqual(codes, [1002])


class PongBackpressureTests(SynchronousTestCase):
    def test_fullClientHoldsReading(self):
        """
        While the client's transport is full, the client is not read, even
        once the backend asks for more; it is read again once the client's
        transport has room.
        """
        h = harness()
        client, transport, backend, backendTransport = upgraded(h)
        client.dataReceived(clientFrame(PING, b"p"))
        self.assertEqual(serverFrames(transport.value())[0].opcode, PONG)
        # The client's transport is full: it pauses its producer.
        transport.producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(backendTransport.producerState, "paused")
        # The backend's transport drains and resumes its producer.
        backendTransport.producer.pauseProducing()
        backendTransport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        transport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(backendTransport.producerState, "producing")

    def test_fullBackendHoldsReading(self):
        """
        While the backend's transport is full the client is not read, even
        once the client's own transport has room again.
        """
        h = harness()
        client, transport, backend, backendTransport = upgraded(h)
        backendTransport.producer.pauseProducing()
        transport.producer.pauseProducing()
        transport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        backendTransport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")


class CheckTests(SynchronousTestCase):
    def test_origins(self):
        for good in ["https://a.example", "http://127.0.0.1:8080", "null"]:
            self.assertIsNone(checkOrigin(good), good)
        for bad in ["a.example", "https://a.example/", "HTTPS://a.example", ""]:
            self.assertIsNotNone(checkOrigin(bad), bad)

    def test_paths(self):
        self.assertIsNone(checkPath("/ws/v1"))
        for bad in ["ws", "/ws?x", "/w s", "/\x00"]:
            self.assertIsNotNone(checkPath(bad), bad)


class SettingsTests(SynchronousTestCase):
    def test_directions(self):
        """
        Each client gets its own frames, shared by its two directions.
        """
        settings = WebSocketSettings()
        transport = HalfCloseableTransport()

        built = [
            settings.directions(
                transport,
                framing("int32", LIMIT),
                *(lambda *a: None,) * 2,
                lambda: 0.0,
                lambda *a: None,
                lambda: None,
                lambda code: None,
            )
            for _ in range(2)
        ]
        (ws1, up1, down1), (ws2, up2, down2) = built
        self.assertIsNot(ws1, ws2)
        self.assertIs(up1.websocket, down1.websocket)
