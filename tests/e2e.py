"""
Helpers for end-to-end tests: real processes, real peers, one way to wait.

As Twisted keeps C{twisted.internet.testing}, the suite keeps this module:

  - starting processes: L{runGateway} (a C{twistd -n --pidfile= gateway}
    on port 0, fired once every listener is bound), L{startGateway} (a
    gateway's command line, possibly behind a wrapper such as
    L{AS_LISTEN_PID} or systemd's), L{runToEnd} (a gateway expected to end
    by itself) and L{spawn} (any other L{ChildProcess}: a backend process,
    Prometheus, HAProxy, openssl). Each is stopped when the test ends:
    SIGTERM, SIGKILL past the deadline, and its end awaited;
    L{ChildProcess.stop} does the same in the test, with its exit code;
  - waiting for what a process writes: L{ChildProcess.logged} (text, a
    number of times), L{ChildProcess.loggedMatch} (a regular expression)
    and L{GatewayProcess.loggedClosed} (a pair's C{closed} line), the only
    way the suite waits for a log line; L{ChildProcess.followLines} hands
    the lines to a test's threads;
  - reading C{/metrics}: L{scrape} (a parsed L{Scrape}), L{metrics} and
    L{value} (a dict of samples), and waiting for a series to reach a value
    with L{untilMetric} and L{untilSample}; L{httpGet} for the other paths;
  - test backends: L{UpperBackend} (int32) and L{NetstringUpperBackend},
    which answer each message in upper case (or misbehave on the messages
    of L{MISBEHAVIOURS}), counted by a L{BackendFactory} and listened on
    with L{listenBackend}; the C{--backend} option that names one,
    L{backendOption};
  - a client that sends and reads to the end, L{exchange}; free ports,
    L{freePort} and L{freePorts}.

Everything listens on port 0 on the loopback interface; the gateway's ports
are learnt from the C{listening on} event it logs once a listener is bound.
Every wait has a deadline, so a broken gateway fails a test instead of
hanging it.

What a client sees is not what the gateway has logged or counted: a client
sees its connection end as soon as the gateway closes it, while the pair's
C{closed} line (and the close counters, updated just before it) come once
both of its connections are gone; and a pipe from the gateway is read apart
from its sockets. A test that reads the log or the metrics after such an
event first waits for the line that follows what it reads (the C{closed}
line for the close counters, the C{protocol error} line for the error
counters). A state no line follows is polled with a deadline
(L{untilMetric}, L{poll}).
"""

from __future__ import annotations

import os
import re
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openMetricsFamilies,
)
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from zope.interface import implementer

# Generous, for a loaded 2-core CI machine: a deadline, not an expected time.
DEADLINE = 20.0

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

_LISTENING = re.compile(r"listening on (\S+) at (\S+):(\d+)")
_READY = "gateway ready:"

# Runs its arguments as a command whose LISTEN_PID is its own pid, as
# systemd sets it: the shell exports its pid, then execs, keeping the pid.
AS_LISTEN_PID = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh"]

# What systemd would put in the environment: none leaks into a child from
# outside (a test run under systemd, say) unless the test sets it.
SYSTEMD_VARIABLES = (
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)

# The gateway's metrics listener, added to every gateway a test starts
# unless its arguments name one.
METRICS = ["--metrics", "tcp:0:interface=127.0.0.1"]

# How often untilMetric asks the gateway again, in seconds.
METRIC_POLL = 0.05

OPENMETRICS = b"application/openmetrics-text; version=1.0.0"


class GatewayEnded(AssertionError):
    """
    A process ended before writing what a test waited for.
    """


class ChildProcess(ProcessProtocol):
    """
    A process a test started: its output, a way to wait for what it writes,
    and its end.

    @ivar output: everything it wrote on standard output (a gateway's log).
    @ivar errors: everything it wrote on standard error.
    @ivar ended: fires with the exit code, or the negative number of the
        signal that ended it.
    @ivar exitCode: that code once it has ended, L{None} before.

    @param mergeErrors: keep standard error in L{output} too.
    """

    def __init__(self, mergeErrors: bool = False) -> None:
        self.output = b""
        self.errors = b""
        # For a program whose log goes to either stream: kept in order in
        # output, as a terminal shows them.
        if mergeErrors:
            self.errReceived = self.outReceived  # type: ignore[method-assign]
        self.ended: Deferred[int | None] = Deferred()
        self.exitCode: int | None = None
        self._lineObservers: list[Callable[[bytes], None]] = []
        self._logWaiters: list[
            tuple[Callable[[bytes], Any], bool, str, Deferred[Any]]
        ] = []

    @property
    def running(self) -> bool:
        return self.exitCode is None and not self.ended.called

    def outReceived(self, data: bytes) -> None:
        complete = self.output.rfind(b"\n") + 1
        self.output += data
        if self._lineObservers:
            end = self.output.rfind(b"\n") + 1
            for line in self.output[complete:end].splitlines(True):
                for observer in self._lineObservers:
                    observer(line)
        self._wakeLogWaiters()

    def errReceived(self, data: bytes) -> None:
        self.errors += data
        self._wakeLogWaiters()

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self.exitCode = 0
        elif reason.check(ProcessTerminated):
            value = reason.value
            self.exitCode = (
                value.exitCode if value.exitCode is not None else -value.signal
            )
        # Twisted calls this once every pipe is closed: the output is whole,
        # so what is still awaited will never come.
        self._wakeLogWaiters(final=True)
        waiting, self._logWaiters = self._logWaiters, []
        for _, _, what, waiter in waiting:
            if not waiter.called:
                waiter.errback(self._endedBefore(what))
        self.ended.callback(self.exitCode)

    def logged(self, text: str, count: int = 1, stderr: bool = False) -> Deferred[None]:
        """
        Fires once C{text} has appeared C{count} times in the process's
        standard output (its log), or standard error with C{stderr}, in
        lines written whole: once it fires, the lines holding C{text} are
        in L{output} to their end.

        @raise GatewayEnded: (in the L{Deferred}) if the process ends first.
        @raise AssertionError: (in the L{Deferred}) past L{DEADLINE}, with
            the log in its message.
        """
        needle = text.encode("utf-8")

        def found(stream: bytes) -> bool | None:
            return True if stream.count(needle) >= count else None

        what = repr(text) if count == 1 else f"{text!r} {count} times"
        return self._until(found, stderr, what).addCallback(lambda _: None)

    # The name the systemd tests gave it.
    waitFor = logged

    def loggedMatch(self, pattern: bytes, stderr: bool = False) -> Deferred[re.Match]:
        """
        Fires with the first match of the regular expression C{pattern} in
        the process's standard output (or standard error), once there is
        one; fails as L{logged} does. End the pattern where the text ends
        (C{\\n}, say): output arrives in pieces, and a number cut short
        matches too.
        """
        compiled = re.compile(pattern)

        def found(stream: bytes) -> re.Match | None:
            return compiled.search(stream)

        return self._until(found, stderr, repr(pattern))

    def _until(
        self, found: Callable[[bytes], Any], stderr: bool, what: str
    ) -> Deferred[Any]:
        """
        Fires with C{found(output)} (or C{found(errors)}) once it is not
        L{None}, checked now and whenever the process writes; fails if the
        process ends first, or past L{DEADLINE}.
        """
        waiter: Deferred[Any] = Deferred()
        entry = (found, stderr, what, waiter)
        self._logWaiters.append(entry)
        self._wakeLogWaiters()
        if self.ended.called and not waiter.called:
            self._logWaiters.remove(entry)
            waiter.errback(self._endedBefore(what))

        def timedOut(failure: Failure) -> None:
            failure.trap(defer.TimeoutError)
            raise AssertionError(
                f"{what} not written within {DEADLINE}s:\n" + self._written()
            )

        return waiter.addTimeout(DEADLINE, reactor).addErrback(timedOut)

    def _wakeLogWaiters(self, final: bool = False) -> None:
        # Only complete lines count, until the end: a pipe can hand over
        # half a line, and a test that waited for its start reads the rest.
        written = {
            stderr: stream if final else stream[: stream.rfind(b"\n") + 1]
            for stderr, stream in ((False, self.output), (True, self.errors))
        }
        waiting = []
        for entry in self._logWaiters:
            found, stderr, what, waiter = entry
            if waiter.called:
                continue
            result = found(written[stderr])
            if result is not None:
                waiter.callback(result)
            else:
                waiting.append(entry)
        self._logWaiters = waiting

    def _endedBefore(self, what: str) -> GatewayEnded:
        return GatewayEnded(
            f"ended (status {self.exitCode}) before writing {what}:\n" + self._written()
        )

    def _written(self) -> str:
        return self.log() + self.errors.decode("utf-8", "replace")

    def followLines(self, observer: Callable[[bytes], None]) -> None:
        """
        Call C{observer} with every complete line of standard output, each
        with its C{\\n}: those written so far at once, then each as it
        arrives. For tests that watch the log from other threads; in the
        reactor's thread, wait with L{logged}.
        """
        self._lineObservers.append(observer)
        for line in self.output[: self.output.rfind(b"\n") + 1].splitlines(True):
            observer(line)

    def log(self) -> str:
        return self.output.decode("utf-8", "replace")

    def signal(self, name: str | int) -> None:
        """
        Send signal C{name} (C{"TERM"}, C{signal.SIGUSR1}...) if it runs.
        """
        if self.running:
            self.transport.signalProcess(name)

    def whenEnded(self, timeout: float = DEADLINE) -> Deferred[int | None]:
        """
        Fires with the exit code once the process has ended; fails after
        C{timeout} seconds. L{ended} itself is left as it is.
        """
        waiter: Deferred[int | None] = Deferred()

        def passOn(result: Any) -> Any:
            if not waiter.called:
                waiter.callback(result)
            return result

        self.ended.addCallback(passOn)
        return waiter.addTimeout(timeout, reactor)

    def stop(self, signal: str = "TERM") -> Deferred[int | None]:
        """
        Send C{signal} and wait (up to L{DEADLINE}) for the process to end;
        fires with its exit code.
        """
        self.signal(signal)
        return self.whenEnded()

    async def stopAtEnd(self) -> None:
        """
        What the test's clean-up does: SIGTERM, SIGKILL past the deadline,
        and the end awaited.
        """
        if not self.running:
            return
        self.signal("TERM")
        killer = reactor.callLater(DEADLINE, self.signal, "KILL")
        await self.ended
        if killer.active():
            killer.cancel()


class GatewayProcess(ChildProcess):
    """
    One C{twistd -n gateway} process, its log, its ports and its end.

    @ivar ports: listener name to bound port, from the gateway's log.
    @ivar ready: fires once the gateway has logged that every listener is
        bound.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: dict[str, int] = {}
        self.ready: Deferred[GatewayProcess] = Deferred()

    def outReceived(self, data: bytes) -> None:
        super().outReceived(data)
        if self.ready.called:
            return
        text = self.log()
        if _READY in text:
            for match in _LISTENING.finditer(text):
                self.ports[match.group(1)] = int(match.group(3))
            self.ready.callback(self)

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(
                RuntimeError(
                    "gateway ended before it listened:\n"
                    + self.output.decode("utf-8", "replace")
                    + self.errors.decode("utf-8", "replace")
                )
            )
        super().processEnded(reason)

    def whenReady(self) -> Deferred[GatewayProcess]:
        """
        Fires once every listener is bound; fails after L{DEADLINE}.
        """
        waiter: Deferred[GatewayProcess] = Deferred()

        def passOn(result: Any) -> Any:
            if not waiter.called:
                if isinstance(result, Failure):
                    waiter.errback(result)
                    return None
                waiter.callback(result)
            return result

        self.ready.addBoth(passOn)
        return waiter.addTimeout(DEADLINE, reactor)

    def loggedClosed(self, reason: str | None = None, count: int = 1) -> Deferred[None]:
        """
        Fires once the gateway has logged C{count} C{closed} lines (with
        close C{reason}, or any), in its text log. The line is written after
        the pair's close is counted (gateway.proxy's C{ended}), and after
        both of its connections are gone: a client seeing its end comes
        earlier, so a test reads the log or the metrics of a closed pair
        only after this.
        """
        if reason is None:
            return self.logged("] closed ", count)
        return self.logged(f" down, {reason}", count)

    def port(self, name: str | None = None) -> int:
        """
        The port of listener C{name}, or of the only proxy listener.
        """
        if name is None:
            (port,) = [p for n, p in self.ports.items() if n != "metrics"]
            return port
        return self.ports[name]


def gatewayCommand(args: list[str], logger: list[str] | None = None) -> list[str]:
    """
    The command line of C{twistd -n --pidfile= [logger...] gateway args}.
    """
    return [TWISTD, "-n", "--pidfile=", *(logger or []), "gateway", *args]


def withMetrics(args: list[str]) -> list[str]:
    """
    C{args} with a metrics listener on a free port, unless they name one.
    """
    if "--metrics" in args or "--config" in args:
        return args
    return [*args, *METRICS]


def spawn(
    testCase: TestCase,
    process: ChildProcess,
    argv: list[str],
    env: dict[str, str] | None = None,
    childFDs: dict[int, int | str] | None = None,
    path: str | None = None,
) -> ChildProcess:
    """
    Run C{argv} (its first item the executable) for C{process}, with C{env}
    added to this environment less what systemd would set, and with the
    listed descriptors of this process as its own. When the test ends the
    process is stopped (L{ChildProcess.stopAtEnd}).
    """
    _spawn(process, argv, env, childFDs, path)
    testCase.addCleanup(lambda: Deferred.fromCoroutine(process.stopAtEnd()))
    return process


async def runChildToEnd(
    process: ChildProcess,
    argv: list[str],
    env: dict[str, str] | None = None,
    timeout: float = DEADLINE,
) -> int | None:
    """
    Run C{argv} for C{process} as L{spawn} does, expecting it to end by
    itself; returns its exit code.

    @raise TimeoutError: if it runs past C{timeout} seconds; it is then
        killed (SIGKILL) and its end awaited.
    """
    _spawn(process, argv, env)
    killer = reactor.callLater(timeout, process.signal, "KILL")
    code = await process.ended
    if not killer.active():
        raise TimeoutError(f"{argv[0]} ran past {timeout}s: {argv[1:]}")
    killer.cancel()
    return code


def _spawn(
    process: ChildProcess,
    argv: list[str],
    env: dict[str, str] | None = None,
    childFDs: dict[int, int | str] | None = None,
    path: str | None = None,
) -> None:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in SYSTEMD_VARIABLES
    }
    environment.update(env or {})
    reactor.spawnProcess(
        process,
        argv[0],
        argv,
        env=environment,
        path=path,
        childFDs={0: "w", 1: "r", 2: "r", **(childFDs or {})},
    )


def startGateway(
    testCase: TestCase,
    argv: list[str],
    env: dict[str, str] | None = None,
    childFDs: dict[int, int | str] | None = None,
) -> GatewayProcess:
    """
    Run C{argv}, a gateway's command line (L{gatewayCommand}) possibly
    behind a wrapper (L{AS_LISTEN_PID}, C{systemd-socket-activate}), as
    L{spawn} does; returns at once (see L{GatewayProcess.whenReady}).
    """
    process = GatewayProcess()
    spawn(testCase, process, argv, env, childFDs)
    return process


def runGateway(
    testCase: TestCase,
    args: list[str],
    env: dict[str, str] | None = None,
    twistdArgs: list[str] | None = None,
) -> Deferred[GatewayProcess]:
    """
    Start a gateway with C{args} (and metrics on a free port, and no health
    checks, unless C{args} say otherwise or name a configuration file, which
    then says both); fires once every listener is bound. The test stops it
    (SIGTERM, then SIGKILL past the deadline) when it ends.
    """
    if "--health-check" not in args and "--config" not in args:
        # The suite's test backends count the connections they accept; a
        # health check is one more. Tests of the checks ask for them.
        args = [*args, "--health-check", "none"]
    process = startGateway(
        testCase, gatewayCommand(withMetrics(args), twistdArgs), env=env
    )
    return process.whenReady()


def runToEnd(args: list[str], env: dict[str, str] | None = None) -> Deferred:
    """
    Run C{twistd gateway args} expecting it to end by itself; fires with the
    process (its C{exitCode}, C{output}, C{errors}), or fails with
    L{TimeoutError} past L{DEADLINE} (see L{runChildToEnd}).
    """
    process = GatewayProcess()
    process.ready.addErrback(lambda failure: None)
    ended = runChildToEnd(process, gatewayCommand(args), env)
    return Deferred.fromCoroutine(ended).addCallback(lambda code: process)


def backendOption(port: int | IListeningPort) -> list[str]:
    """
    The C{--backend} option for a backend on loopback C{port} (a number, or
    the listening port itself).
    """
    if not isinstance(port, int):
        port = port.getHost().port
    return ["--backend", f"tcp:host=127.0.0.1:port={port}"]


async def httpGet(
    port: int, path: bytes, accept: bytes | None = None
) -> tuple[int, bytes]:
    """
    GET C{path} from C{127.0.0.1:port}: the status code and the body.
    """
    headers = Headers({b"accept": [accept]}) if accept else None
    url = b"http://127.0.0.1:%d%s" % (port, path)
    request = Agent(reactor).request(b"GET", url, headers)
    response = await request.addTimeout(DEADLINE, reactor)
    body = await readBody(response).addTimeout(DEADLINE, reactor)
    return response.code, body


class Scrape:
    """
    One C{/metrics} page, parsed the way a Prometheus client library reads it.

    @ivar text: the page as served.
    @ivar samples: every sample's value by C{(name, frozenset(labels))}.
    """

    def __init__(self, text: str, openMetrics: bool = False) -> None:
        self.text = text
        parse = openMetricsFamilies if openMetrics else text_string_to_metric_families
        self.samples: dict[tuple[str, frozenset], float] = {}
        for family in parse(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.samples[key] = sample.value

    def value(self, name: str, **labels: str) -> float | None:
        """
        The sample C{name} with exactly C{labels}; L{None} if it is not served.
        A listener's or backend's series is the command line's service's
        (C{default}) unless C{labels} name another (SPEC section 5).
        """
        return self.samples.get((name, _labelKey(labels)))

    def series(self, name: str) -> dict[frozenset, float]:
        """
        Every sample called C{name}, by its labels.
        """
        return {
            labels: value
            for (sampleName, labels), value in self.samples.items()
            if sampleName == name
        }


def _metricsPort(target: GatewayProcess | int) -> int:
    return target if isinstance(target, int) else target.port("metrics")


async def scrape(target: GatewayProcess | int, openMetrics: bool = False) -> Scrape:
    """
    Read C{/metrics} from a gateway (or the metrics port C{target}), in the
    Prometheus text format or, with C{openMetrics}, in OpenMetrics.

    @raise AssertionError: if it does not answer 200.
    """
    code, body = await httpGet(
        _metricsPort(target), b"/metrics", OPENMETRICS if openMetrics else None
    )
    assert code == 200, (code, body)
    return Scrape(body.decode("utf-8"), openMetrics)


async def metrics(port: GatewayProcess | int) -> dict[tuple[str, frozenset], float]:
    """
    Every sample the gateway's C{/metrics} serves, by name and labels (see
    L{value}).
    """
    return (await scrape(port)).samples


def sample(samples: Scrape | dict, name: str, **labels: str) -> float:
    """
    The first sample called C{name} (in the page's order) whose labels
    include C{labels}; 0 when there is none. With every label of the series
    given, that is the series itself.
    """
    if isinstance(samples, Scrape):
        samples = samples.samples
    wanted = set(labels.items())
    for (sampleName, sampleLabels), sampleValue in samples.items():
        if sampleName == name and wanted <= sampleLabels:
            return sampleValue
    return 0.0


def _labelKey(labels: dict[str, str]) -> frozenset:
    if ("listener" in labels or "backend" in labels) and "service" not in labels:
        labels = {**labels, "service": "default"}
    return frozenset(labels.items())


def value(samples: dict, name: str, **labels: str) -> float:
    """
    One sample from L{metrics}' result (0 when the series does not exist).
    A listener's or backend's series is the command line's service's
    (C{default}) unless C{labels} name another (SPEC section 5).
    """
    return samples.get((name, _labelKey(labels)), 0.0)


async def poll(
    check: Callable[[], Awaitable[Any]],
    what: str,
    timeout: float = DEADLINE,
    interval: float = METRIC_POLL,
) -> Any:
    """
    Await C{check()} every C{interval} seconds until it gives something
    other than L{None} (or L{False}), and return that; fail after
    C{timeout} seconds. Only for a state that announces itself nowhere
    (a counter, another program's port): what a process writes is waited
    for with L{ChildProcess.logged}.

    @param what: the state, for the failure's message.
    @raise AssertionError: past C{timeout}.
    """
    deadline = reactor.seconds() + timeout
    while True:
        result = await check()
        if result is not None and result is not False:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await deferLater(reactor, interval)


async def untilMetric(
    target: GatewayProcess | int,
    predicate: Callable[[dict], bool],
    timeout: float = DEADLINE,
) -> dict:
    """
    Read the gateway's metrics (L{metrics}) until C{predicate} holds for
    them, every L{METRIC_POLL} seconds; fail after C{timeout}. For states
    no log line follows; where one does, wait for it with
    L{ChildProcess.logged} instead.

    @return: the samples C{predicate} accepted.
    @raise AssertionError: past C{timeout}.
    """

    async def check() -> dict | None:
        samples = await metrics(_metricsPort(target))
        return samples if predicate(samples) else None

    return await poll(check, "metrics never reached the expected state", timeout)


async def untilSample(
    target: GatewayProcess | int, expected: float, name: str, **labels: str
) -> dict:
    """
    L{untilMetric} for one sample: L{sample} C{name} with C{labels} is
    C{expected} (a series not served counts as 0).
    """
    try:
        return await untilMetric(
            target, lambda samples: sample(samples, name, **labels) == expected
        )
    except AssertionError:
        samples = await metrics(_metricsPort(target))
        raise AssertionError(
            f"{name}{labels} is {sample(samples, name, **labels)}, not {expected},"
            f" after {DEADLINE}s"
        ) from None


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

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.received)


async def exchange(port: int, data: bytes, halfClose: bool = True) -> bytes:
    """
    Send C{data} to the gateway on C{port} and return all it answers
    before it closes the connection.

    The client seeing the end does not mean the gateway is done with the
    pair: its C{closed} line, and the counters before it, come once both
    sides are closed. Wait for that line before reading the log or metrics.
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
        self._acceptedWaiters: list[tuple[int, Deferred[None]]] = []

    def opened(self, connection: Protocol) -> None:
        self.accepted += 1
        self.open.add(connection)
        waiting = []
        for count, waiter in self._acceptedWaiters:
            if self.accepted >= count:
                waiter.callback(None)
            else:
                waiting.append((count, waiter))
        self._acceptedWaiters = waiting

    def whenAccepted(self, count: int = 1) -> Deferred[None]:
        """
        Fires once this backend has accepted C{count} connections in all;
        fails after L{DEADLINE}.
        """
        waiter: Deferred[None] = Deferred()
        if self.accepted >= count:
            waiter.callback(None)
        else:
            self._acceptedWaiters.append((count, waiter))
        return waiter.addTimeout(DEADLINE, reactor)

    def closed(self, connection: Protocol) -> None:
        self.open.discard(connection)
        if not self.open:
            waiters, self._closedWaiters = self._closedWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def allClosed(self) -> Deferred[None]:
        """
        Fires once no connection to this backend is open; fails after
        L{DEADLINE}.
        """
        waiter: Deferred[None] = Deferred()
        if self.open:
            self._closedWaiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter.addTimeout(DEADLINE, reactor)


# What the upper-case backends send back for these messages instead of an
# answer: with --backend-framing netstring, bytes that are no netstring, a
# length over the limit, and a payload with a newline, which an lf client
# cannot be sent.
MISBEHAVIOURS = {
    b"send-malformed": b"12x:abc,",
    b"send-oversized": b"99999999:",
    b"send-unencodable": b"9:two\nlines,",
}


@implementer(IHalfCloseableProtocol)
class UpperBackend(Int32StringReceiver):
    """
    An int32 backend that answers each message with it in upper case (or,
    for a message of L{MISBEHAVIOURS}, with those bytes), and closes its
    side once the gateway has closed its own.
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


class NetstringUpperBackend(UpperBackend):
    """
    L{UpperBackend} speaking netstrings (C{--backend-framing netstring}),
    which can be malformed in more ways than length prefixes.
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


# The names the reliability tests knew them by.
EchoUpper = UpperBackend
NetstringEchoUpper = NetstringUpperBackend


def frame(payload: bytes) -> bytes:
    """
    C{payload} as one int32 frame (a 4-byte big-endian length first).
    """
    return struct.pack(">I", len(payload)) + payload


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
    return listenPort(testCase, factory).getHost().port


def listenPort(testCase: TestCase, factory: BackendFactory) -> IListeningPort:
    """
    L{listenUntilClosed}, returning the listening port itself, which the
    test may stop early (a backend going away).
    """
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    async def cleanup() -> None:
        await defer.maybeDeferred(port.stopListening)
        await factory.allClosed()

    # Registered before the gateway's own cleanup, so it runs after it.
    testCase.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    return port


def freePorts(count: int) -> list[int]:
    """
    C{count} different loopback ports that nothing listened on a moment ago
    (bound together, read, and released).
    """
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def freePort() -> int:
    """
    A loopback port nothing listens on (bound, read, and released).
    """
    return freePorts(1)[0]
