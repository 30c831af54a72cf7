"""
Helpers for the reliability tests (faults, PROXY protocol, scale-out, load):
a client that can be driven step by step, the gateway's memory, and a
backend in a process of its own that a test can kill.

Starting gateways, waiting for log lines, reading metrics and the test
backends are in L{tests.e2e}; the names these tests first imported from
here are kept, as the same objects.

Every wait has a deadline (L{tests.e2e.DEADLINE}).
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.e2e import (  # noqa: F401 (the names these tests imported from here)
    DEADLINE,
    MISBEHAVIOURS,
    ChildProcess,
    EchoUpper,
    GatewayProcess,
    NetstringEchoUpper,
    frame,
    metrics,
    spawn,
    untilMetric,
    value,
)


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


def rss(pid: int) -> int:
    """
    The resident set size of process C{pid}, in bytes (C{VmRSS}).
    """
    return _memory(pid, "VmRSS")


def peakRss(pid: int) -> int:
    """
    The highest resident set size process C{pid} has had, in bytes
    (C{VmHWM}).
    """
    return _memory(pid, "VmHWM")


def _memory(pid: int, field: str) -> int:
    # /proc/PID/status gives these in kB.
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


class BackendProcess(ChildProcess):
    """
    L{tests.backendprocess} running in a process of its own.

    @ivar port: the port it accepts connections on.
    """

    async def kill(self) -> None:
        """
        SIGKILL: its sockets are closed by the kernel, as in a crash.
        """
        self.signal("KILL")
        await self.whenEnded()


async def runBackendProcess(testCase: TestCase, port: int = 0) -> BackendProcess:
    """
    Start L{tests.backendprocess} on C{port}; the test stops it when it ends.
    """
    process = BackendProcess()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [sys.executable, "-m", "tests.backendprocess", str(port)]
    spawn(testCase, process, argv, env={"PYTHONPATH": root}, path=root)
    listening = await process.loggedMatch(rb"listening (\d+)\n")
    process.port = int(listening.group(1))
    return process


def untilLogged(gateway: GatewayProcess, text: str) -> Deferred[None]:
    """
    L{GatewayProcess.logged}, by the name these tests first gave it.
    """
    return gateway.logged(text)
