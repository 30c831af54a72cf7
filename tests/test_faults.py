"""
Faults, end to end: real gateway processes, real sockets on loopback, peers
that crash, stall, lie, reset or never finish. Each test is bounded by
L{tests.e2e.DEADLINE} on every wait.
"""

import select
import socket

from twisted.internet import reactor, threads
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from tests.e2e import (
    DEADLINE,
    BackendFactory,
    NetstringUpperBackend,
    UpperBackend,
    backendOption,
    exchange,
    freePort,
    listenBackend,
    metrics,
    runGateway,
    value,
)
from tests.reliability import connect, peakRss, rss, runBackendProcess

log = Logger(namespace="tests.faults")

LISTEN = ["--listen", "tcp:0:interface=127.0.0.1"]
LISTENER = "tcp:0"
# Clients closed when their backend dies must see it within this (the
# kernel tells the gateway at once; this is the promise to a client).
CLOSE_WITHIN = 2.0
# The stuck-backend test: what the client tries to write, and when it counts
# as blocked (no room in its socket for this long).
STREAM_BYTES = 50 * 2**20
STALLED_AFTER = 1.0
# How much the gateway's peak RSS may grow while a client pushes at a
# backend that never reads: buffers are bounded by the message size limit
# and the transports' high-water marks, not by what the client sends.
RSS_GROWTH_LIMIT = 16 * 2**20


async def closedTotal(gateway, reason: str) -> float:
    samples = await metrics(gateway.ports["metrics"])
    return value(
        samples, "gateway_connections_closed_total", listener=LISTENER, reason=reason
    )


class BackendFaultTests(TestCase):
    async def test_backendKilledMidStream(self):
        """
        SIGKILL on the backend process: every client of it is closed at
        once, counted as backend_closed; once the backend is back on the
        same port, new clients are served.
        """
        backend = await runBackendProcess(self)
        gateway = await runGateway(self, LISTEN + backendOption(backend.port))
        clients = [await connect(gateway.port()) for _ in range(5)]
        for i, client in enumerate(clients):
            client.send(b"before %d\n" % i)
        for client in clients:
            await client.untilLines(1)
        for i, client in enumerate(clients):
            client.send(b"in flight %d\n" % i)
        await backend.kill()
        for client in clients:
            await client.untilClosed(timeout=CLOSE_WITHIN)
        await gateway.loggedClosed("backend_closed", len(clients))
        self.assertEqual(await closedTotal(gateway, "backend_closed"), len(clients))

        restarted = await runBackendProcess(self, backend.port)
        self.assertEqual(restarted.port, backend.port)
        for i in range(3):
            reply = await exchange(gateway.port(), b"after %d\n" % i)
            self.assertEqual(reply, b"AFTER %d\n" % i)
        self.assertIsNone(gateway.exitCode)

    async def test_backendNeverReads(self):
        """
        A backend that accepts and never reads: the client's writes block
        long before its 50 MB are sent, the gateway's memory stays bounded,
        and once the client leaves, the stuck pair is released by the idle
        timeout instead of lingering.
        """

        class Deaf(Protocol):
            def connectionMade(self):
                self.transport.pauseProducing()
                self.factory.opened(self)

            def connectionLost(self, reason=None):
                self.factory.closed(self)

        backend, backendPort = listenBackend(self, Deaf)
        idleTimeout = 4 * STALLED_AFTER
        gateway = await runGateway(
            self,
            LISTEN + backendOption(backendPort) + ["--idle-timeout", str(idleTimeout)],
        )
        pid = gateway.transport.pid
        before = rss(pid)
        sent, sock = await threads.deferToThread(pushUntilBlocked, gateway.port())
        try:
            growth = peakRss(pid) - before
            self.assertLess(sent, STREAM_BYTES)
            self.assertLess(growth, RSS_GROWTH_LIMIT)
            self.assertEqual(len(backend.open), 1)
        finally:
            sock.close()
        # The gateway, not reading from the client while the backend is
        # full, cannot see it leave: the idle timeout ends the stuck pair.
        await gateway.logged("idle_timeout")
        # A backend that does not read does not see its connection end
        # either: let it read, and it finds the gateway has closed it.
        for connection in backend.open:
            connection.transport.resumeProducing()
        await backend.allClosed()
        log.info(
            "faults: never-reading backend: {sent:.1f} MB sent before blocking,"
            " gateway peak RSS +{growth:.1f} MB",
            sent=sent / 2**20,
            growth=growth / 2**20,
        )

    async def test_backendProtocolErrors(self):
        """
        A backend that sends bytes that are no frame, a length over the
        limit, or a payload an lf client cannot be sent: only that pair is
        closed, the error is counted with its reason, and another client's
        pair carries on.
        """
        backend, backendPort = listenBackend(self, NetstringUpperBackend)
        gateway = await runGateway(
            self,
            LISTEN + backendOption(backendPort) + ["--backend-framing", "netstring"],
        )
        bystander = await connect(gateway.port())
        for i, (message, reason) in enumerate(
            [
                (b"send-malformed", "malformed"),
                (b"send-oversized", "too_long"),
                (b"send-unencodable", "unencodable"),
            ]
        ):
            client = await connect(gateway.port())
            client.send(b"fine\n" + message + b"\n")
            await client.untilClosed()
            self.assertEqual(client.received, b"FINE\n")
            bystander.send(b"still %d\n" % i)
            await bystander.untilLines(i + 1)
            samples = await metrics(gateway.ports["metrics"])
            self.assertEqual(
                value(
                    samples,
                    "gateway_protocol_errors_total",
                    listener=LISTENER,
                    peer="backend",
                    reason=reason,
                ),
                1,
            )
        self.assertEqual(bystander.received, b"STILL 0\nSTILL 1\nSTILL 2\n")
        bystander.halfClose()
        await bystander.untilClosed()
        await gateway.loggedClosed("protocol_error", 3)
        self.assertEqual(await closedTotal(gateway, "protocol_error"), 3)

    async def test_oneDownOneFlapping(self):
        """
        Three backends: one down, one that stops and starts listening
        between clients, one steady. Every client is served.
        """

        steady, steadyPort = listenBackend(self)
        flapping = BackendFactory(UpperBackend)
        flappingPort = freePort()
        gateway = await runGateway(
            self,
            LISTEN
            + backendOption(freePort())
            + backendOption(flappingPort)
            + backendOption(steadyPort),
        )
        listening = None
        for i in range(12):
            if i % 2 == 0:
                if listening is None:
                    listening = reactor.listenTCP(
                        flappingPort, flapping, interface="127.0.0.1"
                    )
                else:
                    await listening.stopListening()
                    await flapping.allClosed()
                    listening = None
            reply = await exchange(gateway.port(), b"client %d\n" % i)
            self.assertEqual(reply, b"CLIENT %d\n" % i)
        if listening is not None:
            await listening.stopListening()
        await flapping.allClosed()
        self.assertGreater(flapping.accepted, 0)
        self.assertGreater(steady.accepted, 0)
        self.assertEqual(flapping.accepted + steady.accepted, 12)


class ClientFaultTests(TestCase):
    async def test_reset(self):
        """
        A client that resets its connection (RST) mid-stream: the backend
        connection is closed, the pair counted as client_closed, and the
        next client is served.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(self, LISTEN + backendOption(backendPort))
        client = await connect(gateway.port())
        client.send(b"a\n")
        await client.untilLines(1)
        client.send(b"b\n" * 1000)
        client.reset()
        await backend.allClosed()
        await gateway.logged("client_closed")
        self.assertEqual(await closedTotal(gateway, "client_closed"), 1)
        self.assertEqual(await exchange(gateway.port(), b"next\n"), b"NEXT\n")

    async def test_vanished(self):
        """
        A client that stops in the middle of a message and is never heard
        from again (no FIN, no RST) is closed by the idle timeout, and so is
        its backend connection.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self, LISTEN + backendOption(backendPort) + ["--idle-timeout", "1"]
        )
        client = await connect(gateway.port())
        client.send(b"complete\nincompl")
        await client.untilLines(1)
        await client.untilClosed()
        await backend.allClosed()
        self.assertEqual(backend.received, [b"complete"])
        await gateway.loggedClosed("idle_timeout")
        self.assertEqual(await closedTotal(gateway, "idle_timeout"), 1)

    async def test_slowloris(self):
        """
        Many clients that open, send part of a line and stall are each
        closed by the idle timeout and counted, while a well-behaved client
        is served in the meantime.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self, LISTEN + backendOption(backendPort) + ["--idle-timeout", "2"]
        )
        slow = [await connect(gateway.port()) for _ in range(30)]
        for client in slow:
            client.send(b"GET / HTTP/1.1")
        self.assertEqual(await exchange(gateway.port(), b"quick\n"), b"QUICK\n")
        for client in slow:
            await client.untilClosed()
        await gateway.loggedClosed("idle_timeout", len(slow))
        self.assertEqual(await closedTotal(gateway, "idle_timeout"), len(slow))
        await backend.allClosed()
        self.assertEqual(backend.received, [b"quick"])

    async def test_maxConnections(self):
        """
        Past --max-connections, extra clients are closed at once without
        reaching a backend, and counted as rejected; once a held client
        leaves, a new one is served.
        """
        limit = 3
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self,
            LISTEN + backendOption(backendPort) + ["--max-connections", str(limit)],
        )
        held = [await connect(gateway.port()) for _ in range(limit)]
        for client in held:
            client.send(b"hold\n")
            await client.untilLines(1)
        extras = [await connect(gateway.port()) for _ in range(4)]
        for client in extras:
            client.send(b"let me in\n")
            await client.untilClosed()
            self.assertEqual(client.received, b"")
        samples = await metrics(gateway.ports["metrics"])
        self.assertEqual(
            value(
                samples,
                "gateway_connections_rejected_total",
                listener=LISTENER,
                reason="limit",
            ),
            len(extras),
        )
        self.assertEqual(
            value(samples, "gateway_connections_accepted_total", listener=LISTENER),
            limit + len(extras),
        )
        self.assertEqual(backend.accepted, limit)
        held[0].halfClose()
        await held[0].untilClosed()
        await gateway.logged("client_closed")
        self.assertEqual(await exchange(gateway.port(), b"now\n"), b"NOW\n")
        for client in held[1:]:
            client.halfClose()
            await client.untilClosed()


def pushUntilBlocked(port: int) -> tuple[int, socket.socket]:
    """
    In a thread: write lines to the gateway as fast as it takes them, until
    STREAM_BYTES are sent or the socket has had no room for STALLED_AFTER.

    @return: how many bytes were sent, and the still open socket.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    sock.setblocking(False)
    chunk = (b"x" * 1023 + b"\n") * 64
    sent = 0
    while sent < STREAM_BYTES:
        writable = select.select([], [sock], [], STALLED_AFTER)[1]
        if not writable:
            break
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            continue
    return sent, sock
