"""
Helpers for the reliability tests (faults, PROXY protocol, scale-out, load):
a client that can be driven step by step, the gateway's metrics and memory,
and backends that misbehave on purpose.

Every wait has a deadline (L{tests.e2e.DEADLINE}).
"""

from __future__ import annotations

import os
import re
import socket
import struct
import sys
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.basic import Int32StringReceiver
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from zope.interface import implementer

from tests.e2e import DEADLINE, GatewayProcess


@implementer(IHalfCloseableProtocol)
class Client(Protocol):
    """
    A client connection the test drives: it writes when told, collects what
    it receives, and says when a condition on it holds or when it ends.

    @ivar received: every byte received so far.
    @ivar localPort: the client's own port.
    @ivar closed: fires when the connection has ended.
    @ivar readClosed: whether the gateway has shut its write side.
    @ivar keepWriting: whether to stay open for writing after the gateway
        has shut its write side; by default the client then closes too.
    """

    def __init__(self, keepWriting: bool = False) -> None:
        self.keepWriting = keepWriting
        self.received = b""
        self.readClosed = False
        self._writeShut = False
        self.closed: Deferred[None] = Deferred()
        self._waiters: list[tuple[Callable[[Client], bool], Deferred[None]]] = []

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.localPort = self.transport.getHost().port

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def readConnectionLost(self) -> None:
        self.readClosed = True
        self._check()
        # Twisted leaves a half-closeable connection open until told.
        if self._writeShut or not self.keepWriting:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: object = None) -> None:
        self.readClosed = True
        self._check()
        self.closed.callback(None)

    def _check(self) -> None:
        for waiter in list(self._waiters):
            predicate, deferred = waiter
            if predicate(self):
                self._waiters.remove(waiter)
                deferred.callback(None)

    def until(self, predicate: Callable[[Client], bool]) -> Deferred[None]:
        """
        Fires once C{predicate(self)} holds, checked on every event; fails
        after the deadline.
        """
        deferred: Deferred[None] = Deferred()
        if predicate(self):
            deferred.callback(None)
        else:
            self._waiters.append((predicate, deferred))
        return deferred.addTimeout(DEADLINE, reactor)

    def untilLines(self, count: int) -> Deferred[None]:
        return self.until(lambda client: client.received.count(b"\n") >= count)

    def untilClosed(self, timeout: float = DEADLINE) -> Deferred[None]:
        """
        Fires once the connection has ended; fails after C{timeout}.
        """
        waiter: Deferred[None] = Deferred()

        def ended(result: object) -> object:
            waiter.callback(None)
            return result

        self.closed.addBoth(ended)
        return waiter.addTimeout(timeout, reactor)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def halfClose(self) -> None:
        self._writeShut = True
        self.transport.loseWriteConnection()
        if self.readClosed:
            self.transport.loseConnection()

    def reset(self) -> None:
        """
        End the connection with a TCP RST: SO_LINGER with a zero timeout.
        """
        self.transport.getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.transport.abortConnection()


async def connect(port: int, keepWriting: bool = False) -> Client:
    """
    A L{Client} connected to 127.0.0.1:C{port}.
    """
    client = Client(keepWriting)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=DEADLINE)
    await connectProtocol(endpoint, client).addTimeout(DEADLINE, reactor)
    return client


async def metrics(port: int) -> dict[tuple[str, frozenset], float]:
    """
    Every sample the gateway's C{/metrics} serves, by name and labels.
    """
    agent = Agent(reactor)
    url = f"http://127.0.0.1:{port}/metrics".encode()
    response = await agent.request(b"GET", url).addTimeout(DEADLINE, reactor)
    body = await readBody(response).addTimeout(DEADLINE, reactor)
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """
    One sample from L{metrics}' result (0 when the series does not exist).
    A listener's or backend's series is the command line's service's
    (C{default}) unless C{labels} name another (SPEC section 5).
    """
    if ("listener" in labels or "backend" in labels) and "service" not in labels:
        labels["service"] = "default"
    return samples.get((name, frozenset(labels.items())), 0.0)


def rss(pid: int) -> int:
    """
    The resident set size of process C{pid}, in bytes (C{VmRSS}).
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@implementer(IHalfCloseableProtocol)
class EchoUpper(Int32StringReceiver):
    """
    An int32 backend answering each message in upper case; a message the
    test names makes it misbehave instead (see L{MISBEHAVIOURS}).
    """

    MAX_LENGTH = 2**24

    def connectionMade(self) -> None:
        self.factory.opened(self)

    def stringReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)
        misbehave = MISBEHAVIOURS.get(payload)
        if misbehave is not None:
            self.transport.write(misbehave)
        else:
            self.sendString(payload.upper())

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: object = None) -> None:
        self.factory.closed(self)


# What EchoUpper sends back for these messages, with --backend-framing
# netstring: bytes that are no netstring, a length over the limit, and a
# payload with a newline, which an lf client cannot be sent.
MISBEHAVIOURS = {
    b"send-malformed": b"12x:abc,",
    b"send-oversized": b"99999999:",
    b"send-unencodable": b"9:two\nlines,",
}


class NetstringEchoUpper(EchoUpper):
    """
    L{EchoUpper} speaking netstrings, which can be malformed in more ways
    than length prefixes.
    """

    def dataReceived(self, data: bytes) -> None:
        self._buffer = getattr(self, "_buffer", b"") + data
        while b":" in self._buffer:
            digits, rest = self._buffer.split(b":", 1)
            length = int(digits)
            if len(rest) < length + 1:
                return
            self._buffer = rest[length + 1 :]
            self.stringReceived(rest[:length])

    def sendString(self, payload: bytes) -> None:
        self.transport.write(b"%d:%s," % (len(payload), payload))


def untilLogged(gateway: GatewayProcess, text: str) -> Deferred[None]:
    """
    Fires once C{gateway}'s log holds C{text}; fails after the deadline.
    """
    waiter: Deferred[None] = Deferred()
    if text in gateway.log():
        waiter.callback(None)
        return waiter
    original = gateway.outReceived

    def outReceived(data: bytes) -> None:
        original(data)
        if not waiter.called and text in gateway.log():
            waiter.callback(None)

    gateway.outReceived = outReceived  # type: ignore[method-assign]
    return waiter.addTimeout(DEADLINE, reactor)


def peakRss(pid: int) -> int:
    """
    The highest resident set size process C{pid} has had, in bytes
    (C{VmHWM}).
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


class BackendProcess(ProcessProtocol):
    """
    L{tests.backendprocess} running in a process of its own.

    @ivar listening: fires with the port once it accepts connections.
    @ivar ended: fires when the process has ended.
    """

    def __init__(self) -> None:
        self.output = b""
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = re.search(rb"listening (\d+)", self.output)
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: object) -> None:
        self.running = False
        if not self.listening.called:
            self.listening.errback(
                RuntimeError("backend ended: " + self.output.decode("utf-8", "replace"))
            )
        self.ended.callback(None)

    async def kill(self) -> None:
        """
        SIGKILL: its sockets are closed by the kernel, as in a crash.
        """
        if self.running:
            self.transport.signalProcess("KILL")
        await self.ended.addTimeout(DEADLINE, reactor)


async def runBackendProcess(testCase: TestCase, port: int = 0) -> BackendProcess:
    """
    Start L{tests.backendprocess} on C{port}; the test kills it when it ends.
    """
    process = BackendProcess()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, PYTHONPATH=root)
    reactor.spawnProcess(
        process,
        sys.executable,
        [sys.executable, "-m", "tests.backendprocess", str(port)],
        env=environment,
        path=root,
    )
    testCase.addCleanup(lambda: Deferred.fromCoroutine(process.kill()))
    process.port = await process.listening.addTimeout(DEADLINE, reactor)
    return process


# How often untilMetric asks the gateway again.
METRIC_POLL = 0.05


async def untilMetric(
    port: int, predicate: Callable[[dict], bool], timeout: float = DEADLINE
) -> dict:
    """
    Read the gateway's metrics until C{predicate} holds for them; fail
    after C{timeout}. For states the gateway announces nowhere else (its
    last close is counted just after the client sees the connection end).
    """
    deadline = reactor.seconds() + timeout
    while True:
        samples = await metrics(port)
        if predicate(samples):
            return samples
        if reactor.seconds() > deadline:
            raise AssertionError("metrics never reached the expected state")
        await deferLater(reactor, METRIC_POLL)
