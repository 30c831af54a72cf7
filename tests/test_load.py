"""
Load: many concurrent connections, and a long stream through a slow backend.

C{make test} runs a small, fast version; C{make load} sets
C{GATEWAY_LOAD=full} for the real figures (5,000 connections; 200 MB at
1 MB/s, which takes a little over 200 s). Figures are logged to
C{_trial_temp/test.log} under C{tests.load}.
"""

import os
import resource
import struct

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from tests.e2e import DEADLINE, backendOption, listenBackend, metrics, runGateway, value
from tests.reliability import connect, peakRss, rss, runBackendProcess

log = Logger(namespace="tests.load")

FULL = os.environ.get("GATEWAY_LOAD") == "full"
# Concurrent connections, each making ROUND_TRIPS request/response round
# trips while all of them are open.
CONNECTIONS = 5000 if FULL else 300
ROUND_TRIPS = 3
# Connections opened at once while ramping up: more would overflow the
# listen queues (SYN retries cost a second each) without proving more.
CONNECT_BATCH = 250
# Descriptors per connection in this process (the client end, the backend
# lives in its own process) and in the gateway (client and backend), plus
# room for everything else.
SPARE_FILES = 200
# The stream: its size, how fast the backend reads it, the message size,
# and the most resident memory the gateway may use meanwhile.
STREAM_BYTES = (200 if FULL else 20) * 2**20
BACKEND_RATE = (1 if FULL else 4) * 2**20
MESSAGE_BYTES = 1024
RSS_LIMIT = 100 * 2**20
# How often the gateway's memory is sampled during the stream.
SAMPLE_EVERY = 0.5
# How often the slow backend's read budget is topped up.
TICK = 0.05


def raiseFileLimit(needed: int) -> None:
    """
    Raise this process's descriptor limit (which the gateway, started
    afterwards, inherits) to C{needed}, or skip the test if the hard limit
    is lower.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SkipTest(f"RLIMIT_NOFILE hard limit {hard} is under {needed}")
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class ConnectionsTests(TestCase):
    async def test_concurrentRoundTrips(self):
        """
        CONNECTIONS clients are all open at once, each makes ROUND_TRIPS
        round trips, and every request is answered, in order.
        """
        raiseFileLimit(2 * CONNECTIONS + SPARE_FILES)
        backend = await runBackendProcess(self)
        gateway = await runGateway(
            self,
            [
                "--listen",
                "tcp:0:interface=127.0.0.1:backlog=1024",
                *backendOption(backend.port),
                "--max-connections",
                str(CONNECTIONS + SPARE_FILES),
            ],
        )
        started = reactor.seconds()
        clients = []
        for start in range(0, CONNECTIONS, CONNECT_BATCH):
            batch = range(start, min(CONNECTIONS, start + CONNECT_BATCH))
            clients += await gatherResults(
                [Deferred.fromCoroutine(connect(gateway.port())) for _ in batch]
            )
        connected = reactor.seconds()

        async def talk(index: int, client) -> None:
            for round in range(ROUND_TRIPS):
                client.send(b"client %d round %d\n" % (index, round))
                await client.untilLines(round + 1)

        await gatherResults(
            [Deferred.fromCoroutine(talk(i, c)) for i, c in enumerate(clients)]
        )
        answered = reactor.seconds()
        samples = await metrics(gateway.ports["metrics"])
        active = value(samples, "gateway_connections_active", listener="tcp:0")
        memory = rss(gateway.transport.pid)
        for index, client in enumerate(clients):
            expected = b"".join(
                b"CLIENT %d ROUND %d\n" % (index, round) for round in range(ROUND_TRIPS)
            )
            self.assertEqual(client.received, expected)
        self.assertEqual(active, CONNECTIONS)
        for client in clients:
            client.halfClose()
        for client in clients:
            await client.untilClosed()
        log.info(
            "load: {connections} concurrent connections: connected in {connect:.1f}s,"
            " {messages} round trips answered in {talk:.1f}s,"
            " gateway RSS {rss:.0f} MB with all open",
            connections=CONNECTIONS,
            connect=connected - started,
            messages=CONNECTIONS * ROUND_TRIPS,
            talk=answered - connected,
            rss=memory / 2**20,
        )


@implementer(IHalfCloseableProtocol)
class SlowReader(Protocol):
    """
    An int32 backend that reads at most BACKEND_RATE bytes a second and
    checks that the numbered messages arrive once each, in order.
    """

    def connectionMade(self) -> None:
        self.factory.opened(self)
        self.buffer = b""
        self.messages = 0
        self.outOfOrder = 0
        self.budget = BACKEND_RATE * TICK
        self.paused = False
        self.refill = LoopingCall(self._refill)
        self.refill.start(TICK, now=False)

    def _refill(self) -> None:
        self.budget = min(self.budget + BACKEND_RATE * TICK, BACKEND_RATE * TICK)
        if self.paused and self.budget > 0:
            self.paused = False
            self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.budget -= len(data)
        if self.budget <= 0 and not self.paused:
            self.paused = True
            self.transport.pauseProducing()
        buffer = self.buffer + data
        offset = 0
        while len(buffer) - offset >= 4:
            (length,) = struct.unpack_from(">I", buffer, offset)
            if len(buffer) - offset - 4 < length:
                break
            if int(buffer[offset + 4 : offset + 12], 16) != self.messages:
                self.outOfOrder += 1
            self.messages += 1
            offset += 4 + length
        self.buffer = buffer[offset:]

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        if self.refill.running:
            self.refill.stop()
        self.factory.last = self
        self.factory.closed(self)


@implementer(IPushProducer)
class Streamer(Protocol):
    """
    A client that writes numbered lines as fast as the gateway takes them
    (it is its transport's producer), then shuts its write side.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.number = 0
        self.paused = False
        self.done: Deferred[None] = Deferred()
        self.filler = b"x" * (MESSAGE_BYTES - 8 - 1)

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < self.total:
            lines = []
            for _ in range(64):
                lines.append(b"%08x%s\n" % (self.number, self.filler))
                self.number += 1
            chunk = b"".join(lines)
            self.sent += len(chunk)
            self.transport.write(chunk)
        if self.sent >= self.total and not self.paused:
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()

    def stopProducing(self) -> None:
        self.paused = True

    def connectionLost(self, reason=None) -> None:
        self.done.callback(None)


class StreamTests(TestCase):
    # Trial's default of 120 s is shorter than the full stream.
    timeout = 2 * STREAM_BYTES / BACKEND_RATE + 2 * DEADLINE

    async def test_slowBackend(self):
        """
        STREAM_BYTES of lines through a backend that reads BACKEND_RATE
        bytes a second: every message arrives once, in order, and the
        gateway's resident memory stays under RSS_LIMIT throughout.
        """
        backend, backendPort = listenBackend(self, SlowReader)
        gateway = await runGateway(
            self,
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                *backendOption(backendPort),
                "--client-framing",
                "lf",
            ],
        )
        pid = gateway.transport.pid
        samples = [rss(pid)]
        sampler = LoopingCall(lambda: samples.append(rss(pid)))
        sampler.start(SAMPLE_EVERY)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        streamer = Streamer(STREAM_BYTES)

        started = reactor.seconds()
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", gateway.port()), streamer
        )
        expected = STREAM_BYTES / BACKEND_RATE
        await streamer.done.addTimeout(2 * expected + DEADLINE, reactor)
        elapsed = reactor.seconds() - started
        await backend.allClosed()
        sampler.stop()
        peak = max(max(samples), peakRss(pid))
        reader = backend.last
        self.assertEqual(reader.messages, streamer.number)
        self.assertEqual(reader.outOfOrder, 0)
        self.assertLess(peak, RSS_LIMIT)
        # The backend's pace, not the gateway, set the duration.
        self.assertGreater(elapsed, 0.8 * expected)
        log.info(
            "load: {megabytes:.0f} MB ({messages} messages) through a backend reading"
            " {rate:.0f} MB/s in {elapsed:.1f}s: gateway RSS {low:.0f}-{high:.0f} MB"
            " over {count} samples, peak {peak:.0f} MB, messages lost 0",
            megabytes=STREAM_BYTES / 2**20,
            messages=streamer.number,
            rate=BACKEND_RATE / 2**20,
            elapsed=elapsed,
            low=min(samples) / 2**20,
            high=max(samples) / 2**20,
            count=len(samples),
            peak=peak / 2**20,
        )
