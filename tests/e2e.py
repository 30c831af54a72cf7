"""
Helpers for end-to-end tests: a real C{twistd gateway} process, real peers.

Everything listens on port 0 on the loopback interface; the gateway's ports
are learnt from the C{listening on} event it logs once a listener is bound.
Every wait has a deadline, so a broken gateway fails a test instead of
hanging it.
"""

from __future__ import annotations

import os
import re
import sys

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.protocols.basic import Int32StringReceiver
from twisted.trial.unittest import TestCase
from zope.interface import implementer

# Generous, for a loaded 2-core CI machine: a deadline, not an expected time.
DEADLINE = 20.0

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

_LISTENING = re.compile(r"listening on (\S+) at (\S+):(\d+)")
_READY = "gateway ready:"


class GatewayProcess(ProcessProtocol):
    """
    One C{twistd -n gateway} process, its output and its end.

    @ivar ports: listener name to bound port, from the gateway's log.
    @ivar ready: fires once the gateway has logged that every listener is
        bound.
    @ivar ended: fires with the exit code (or the signal's negative number).
    """

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.output = b""
        self.errors = b""
        self.ready: Deferred[GatewayProcess] = Deferred()
        self.ended: Deferred[int] = Deferred()
        self.exitCode: int | None = None
        self._logWaiters: list[tuple[bytes, int, Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._wakeLogWaiters()
        if self.ready.called:
            return
        text = self.output.decode("utf-8", "replace")
        if _READY in text:
            for match in _LISTENING.finditer(text):
                self.ports[match.group(1)] = int(match.group(3))
            self.ready.callback(self)

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason) -> None:
        if reason.check(ProcessDone):
            self.exitCode = 0
        elif reason.check(ProcessTerminated):
            value = reason.value
            self.exitCode = (
                value.exitCode if value.exitCode is not None else -value.signal
            )
        if not self.ready.called:
            self.ready.errback(
                RuntimeError(
                    "gateway ended before it listened:\n"
                    + self.output.decode("utf-8", "replace")
                    + self.errors.decode("utf-8", "replace")
                )
            )
        self.ended.callback(self.exitCode)

    def logged(self, text: str, count: int = 1) -> Deferred[None]:
        """
        Fires once C{text} has appeared C{count} times in the gateway's
        standard output (its log), or fails with the log past the deadline.
        """
        waiter: Deferred[None] = Deferred()
        self._logWaiters.append((text.encode("utf-8"), count, waiter))
        self._wakeLogWaiters()

        def timedOut(failure):
            failure.trap(defer.TimeoutError)
            raise AssertionError(
                f"{text!r} not logged {count} times within {DEADLINE}s:\n" + self.log()
            )

        return waiter.addTimeout(DEADLINE, reactor).addErrback(timedOut)

    def _wakeLogWaiters(self) -> None:
        waiting = []
        for text, count, waiter in self._logWaiters:
            if waiter.called:
                continue
            if self.output.count(text) >= count:
                waiter.callback(None)
            else:
                waiting.append((text, count, waiter))
        self._logWaiters = waiting

    def port(self, name: str | None = None) -> int:
        """
        The port of listener C{name}, or of the only proxy listener.
        """
        if name is None:
            (port,) = [p for n, p in self.ports.items() if n != "metrics"]
            return port
        return self.ports[name]

    def log(self) -> str:
        return self.output.decode("utf-8", "replace")

    def stop(self, signal: str = "TERM") -> Deferred[int]:
        """
        Send C{signal} and wait for the process to end.
        """
        if self.exitCode is None:
            self.transport.signalProcess(signal)
        return self.ended


def gatewayCommand(args: list[str], logger: list[str] | None = None) -> list[str]:
    return [TWISTD, "-n", "--pidfile=", *(logger or []), "gateway", *args]


def runGateway(
    testCase: TestCase,
    args: list[str],
    env: dict[str, str] | None = None,
    twistdArgs: list[str] | None = None,
) -> Deferred[GatewayProcess]:
    """
    Start a gateway with C{args} (and metrics on a free port, and no health
    checks, unless C{args} say otherwise); fires once every listener is bound. The test
    stops it (SIGTERM, then SIGKILL past the deadline) when it ends.
    """
    if "--metrics" not in args:
        args = [*args, "--metrics", "tcp:0:interface=127.0.0.1"]
    if "--health-check" not in args:
        # The suite's test backends count the connections they accept; a
        # health check is one more. Tests of the checks ask for them.
        args = [*args, "--health-check", "none"]
    process = GatewayProcess()
    environment = dict(os.environ)
    environment.update(env or {})
    reactor.spawnProcess(
        process,
        TWISTD,
        gatewayCommand(args, twistdArgs),
        env=environment,
    )

    async def cleanup() -> None:
        if process.exitCode is None:
            process.transport.signalProcess("TERM")
            ended = process.ended
            killer = reactor.callLater(DEADLINE, _kill, process)
            await ended
            if killer.active():
                killer.cancel()

    testCase.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    return process.ready.addTimeout(DEADLINE, reactor)


def _kill(process: GatewayProcess) -> None:
    if process.exitCode is None:
        process.transport.signalProcess("KILL")


def runToEnd(args: list[str], env: dict[str, str] | None = None) -> Deferred:
    """
    Run C{twistd gateway args} expecting it to end by itself; fires with the
    process (its C{exitCode}, C{output}, C{errors}).
    """
    process = GatewayProcess()
    process.ready.addErrback(lambda failure: None)
    environment = dict(os.environ)
    environment.update(env or {})
    reactor.spawnProcess(process, TWISTD, gatewayCommand(args), env=environment)
    ended = process.ended.addTimeout(DEADLINE, reactor)
    return ended.addCallback(lambda code: process)


class Exchange(Protocol):
    """
    A client that sends bytes, optionally shuts its write side, and collects
    everything it receives until the gateway closes the connection.
    """

    def __init__(self, data: bytes, halfClose: bool) -> None:
        self.data = data
        self.halfClose = halfClose
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)
        if self.halfClose:
            self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.done.callback(self.received)


async def exchange(port: int, data: bytes, halfClose: bool = True) -> bytes:
    """
    Send C{data} to the gateway on C{port} and return all it answers
    before it closes the connection.
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    client = Exchange(data, halfClose)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await connectProtocol(endpoint, client).addTimeout(DEADLINE, reactor)
    return await client.done.addTimeout(DEADLINE, reactor)


class BackendFactory(Factory):
    """
    A test backend's factory: what it received, and which connections are open.
    """

    noisy = False

    def __init__(self, protocol: type[Protocol]) -> None:
        self.protocol = protocol
        self.received: list[bytes] = []
        self.accepted = 0
        self.open: set[Protocol] = set()
        self._closedWaiters: list[Deferred[None]] = []

    def opened(self, connection: Protocol) -> None:
        self.accepted += 1
        self.open.add(connection)

    def closed(self, connection: Protocol) -> None:
        self.open.discard(connection)
        if not self.open:
            waiters, self._closedWaiters = self._closedWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def allClosed(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self.open:
            self._closedWaiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter.addTimeout(DEADLINE, reactor)


@implementer(IHalfCloseableProtocol)
class UpperBackend(Int32StringReceiver):
    """
    An int32 backend that answers each message with it in upper case, and
    closes its side once the gateway has closed its own.
    """

    MAX_LENGTH = 2**24

    def connectionMade(self) -> None:
        self.factory.opened(self)

    def stringReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)
        self.sendString(payload.upper())

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        self.factory.closed(self)


def listenBackend(
    testCase: TestCase, protocol: type[Protocol] = UpperBackend
) -> tuple[BackendFactory, int]:
    """
    Listen with C{protocol} on a free loopback port. When the test ends, it
    waits for every backend connection to close, then stops listening.
    """
    factory = BackendFactory(protocol)
    return factory, listenUntilClosed(testCase, factory)


def listenUntilClosed(testCase: TestCase, factory: BackendFactory) -> int:
    """
    Listen with C{factory} on a free loopback port and return the port.
    When the test ends, wait for every connection to close, then stop
    listening.
    """
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    async def cleanup() -> None:
        await port.stopListening()
        await factory.allClosed()

    # Registered before the gateway's own cleanup, so it runs after it.
    testCase.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    return port.getHost().port


def freePort() -> int:
    """
    A loopback port nothing listens on (bound, read, and released).
    """
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
