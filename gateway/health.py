"""
Active health checks of a service's backends (SPEC section 8).

A L{HealthChecker} checks each backend of one service every C{interval}
seconds, the way HAProxy's C{check inter/rise/fall} and Envoy's active health
checking do, and keeps for each one a L{BackendHealth}: up or down, the last
check and its result, the last change of state. A backend counts as up from
start until its checks say otherwise: C{fall} failures in a row take an up
backend down, C{rise} successes in a row bring a down one up.

A check is one connection, opened by the backend's own client endpoint:

  - C{connect}: the connection completes. Over TLS that means the handshake
    and the verification of the backend's certificate, so a backend whose
    certificate does not verify fails its checks. When the service sends
    PROXY headers, a v2 C{LOCAL} header (or a v1 C{PROXY UNKNOWN}) is written
    first, in clear before any TLS handshake, as HAProxy's C{check} with
    C{send-proxy} does: it tells the backend that the connection is the
    proxy's own, not a client's.
  - C{probe}: as C{connect}, then one message in the backend's framing,
    whose first reply must match a regular expression (HAProxy's C{tcp-check
    send} / C{expect rstring}).

Checks never touch the listeners' connection counts, cost nothing on the
per-chunk path of client pairs, and log nothing at info level: only a change
of state is logged, once, with its reason. Everything runs on the clock the
checker is given, so tests drive it with L{twisted.internet.task.Clock}.

The pool, C{/readyz} and the status page read the states; observers hear of
each change. A checker built for a new backend list (a reload) adopts the
state of the backends it shares, by name, with the checker it replaces.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from typing import Protocol as TypingProtocol

from OpenSSL import SSL
from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.codec import FRAMINGS, Framing, FramingError, framing
from gateway.proxyprotocol import V2_LOCAL, V2_SIGNATURE, V2_UNSPEC

# Modes of --health-check.
NONE = "none"
CONNECT = "connect"
PROBE = "probe"
MODES = (NONE, CONNECT, PROBE)

# Values of the result label of gateway_backend_checks_total.
SUCCESS = "success"
FAILURE = "failure"
RESULTS = (SUCCESS, FAILURE)

UP = "up"
DOWN = "down"

# SPEC section 8 defaults, HAProxy's inter 2s, rise 2, fall 3.
DEFAULT_INTERVAL = 2.0
DEFAULT_TIMEOUT = 2.0
DEFAULT_RISE = 2
DEFAULT_FALL = 3

# What a check writes first when the service sends PROXY headers: the header
# of a connection the proxy makes on its own behalf (PROXY protocol spec,
# section 2.1 "UNKNOWN" and 2.2 "LOCAL"). HAProxy's checks send the same.
CHECK_PROXY_HEADERS: dict[str, bytes] = {
    "v1": b"PROXY UNKNOWN\r\n",
    "v2": V2_SIGNATURE + struct.pack("!BBH", V2_LOCAL, V2_UNSPEC, 0),
    "v2-ssl": V2_SIGNATURE + struct.pack("!BBH", V2_LOCAL, V2_UNSPEC, 0),
}

log = Logger(namespace="gateway.health")

# A reply shown in a failure reason is cut to this many characters: the
# reason goes into one log line and the status page.
_SHOWN_REPLY = 40


class HealthSettingsError(ValueError):
    """
    A health-check setting an operator gave cannot be used.

    @ivar option: the option (or configuration key) at fault, without
        C{--}, e.g. C{health-check-send}.
    @ivar problem: what is wrong, in an operator's words.
    """

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"--{option}: {problem}")
        self.option = option
        self.problem = problem


_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}
_HEX = frozenset("0123456789abcdefABCDEF")


def parseSend(text: str) -> bytes:
    """
    The probe payload that C{--health-check-send TEXT} stands for.

    C{TEXT} is UTF-8 with the escapes C{\\n}, C{\\r}, C{\\t}, C{\\\\} and
    C{\\xHH} (one byte, two hex digits), so that a payload holding line ends
    or arbitrary bytes can be written on a command line or in TOML.

    @raise HealthSettingsError: for a backslash followed by anything else,
        a trailing backslash, or C{\\x} without two hex digits; the message
        names the position (counted from 1) and the escape.
    """
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out += char.encode("utf-8", "surrogatepass")
            i += 1
            continue
        if i + 1 == len(text):
            raise HealthSettingsError(
                "health-check-send",
                f"a lone backslash at the end (position {i + 1});"
                " write \\\\ for a backslash",
            )
        code = text[i + 1]
        if code in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[code].encode("ascii")
            i += 2
        elif code == "x":
            digits = text[i + 2 : i + 4]
            if len(digits) != 2 or not set(digits) <= _HEX:
                raise HealthSettingsError(
                    "health-check-send",
                    f"\\x{digits} at position {i + 1} needs two hex digits"
                    " (\\x00 to \\xff)",
                )
            out.append(int(digits, 16))
            i += 4
        else:
            raise HealthSettingsError(
                "health-check-send",
                f"unknown escape \\{code} at position {i + 1}"
                " (known: \\n \\r \\t \\\\ \\xHH)",
            )
    return bytes(out)


def compileExpect(text: str) -> re.Pattern[str]:
    """
    The regular expression of C{--health-check-expect TEXT}.

    It is searched (C{re.search}) in the first reply's payload decoded as
    UTF-8, a byte that is not UTF-8 read as U+FFFD.

    @raise HealthSettingsError: when C{TEXT} does not compile, with the
        position and the reason C{re} gives.
    """
    try:
        return re.compile(text)
    except re.error as error:
        where = f" at position {error.pos + 1}" if error.pos is not None else ""
        raise HealthSettingsError(
            "health-check-expect", f"not a regular expression: {error.msg}{where}"
        )


@dataclass(frozen=True)
class HealthSettings:
    """
    How one service checks its backends.

    @ivar mode: L{NONE}, L{CONNECT} or L{PROBE}.
    @ivar interval: seconds between the starts of two checks of one backend.
    @ivar timeout: seconds a check may take, connection, TLS handshake and
        probe reply included; a longer one fails.
    @ivar rise: consecutive successes that bring a down backend up.
    @ivar fall: consecutive failures that take an up backend down.
    @ivar send: the probe's payload (see L{parseSend}), for L{PROBE}.
    @ivar expect: what the probe's first reply must contain (see
        L{compileExpect}); C{None} accepts any reply.
    @ivar backendFraming: the framing name (L{gateway.codec.FRAMINGS}) the
        probe is written and its reply read in.
    @ivar maxMessageSize: the longest reply payload accepted, in bytes.
    """

    mode: str = CONNECT
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    rise: int = DEFAULT_RISE
    fall: int = DEFAULT_FALL
    send: bytes | None = None
    expect: re.Pattern[str] | None = None
    backendFraming: str = "int32"
    maxMessageSize: int = 65536

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise HealthSettingsError(
                "health-check",
                f"unknown mode {self.mode!r} (choose none, connect or probe)",
            )
        for option, value in (
            ("health-check-interval", self.interval),
            ("health-check-timeout", self.timeout),
        ):
            if not value > 0:
                raise HealthSettingsError(option, f"must be more than 0, not {value}")
        for option, count in (
            ("health-check-rise", self.rise),
            ("health-check-fall", self.fall),
        ):
            if count < 1:
                raise HealthSettingsError(option, f"must be 1 or more, not {count}")
        if self.mode != PROBE:
            for option, given in (
                ("health-check-send", self.send is not None),
                ("health-check-expect", self.expect is not None),
            ):
                if given:
                    raise HealthSettingsError(
                        option, "is used only with --health-check probe"
                    )
            return
        if self.send is None:
            raise HealthSettingsError(
                "health-check-send", "--health-check probe needs a message to send"
            )
        if self.backendFraming not in FRAMINGS:
            raise HealthSettingsError(
                "backend-framing", f"unknown framing {self.backendFraming!r}"
            )
        try:
            self.framing().encode([self.send])
        except FramingError as error:
            raise HealthSettingsError(
                "health-check-send",
                f"cannot be sent in the {self.backendFraming} framing: {error.detail}",
            )

    def framing(self) -> Framing:
        """
        A fresh codec of the backend framing, for one probe.
        """
        return framing(self.backendFraming, self.maxMessageSize)


class HealthStats(TypingProtocol):
    """
    What a checker reports about one backend, for the metrics
    C{gateway_backend_checks_total{result}} and C{gateway_backend_up}.
    """

    def checked(self, result: str) -> None:
        """
        A check ended with C{result}, L{SUCCESS} or L{FAILURE}.
        """

    def setUp(self, up: bool) -> None:
        """
        The backend is now up (C{True}) or down; also called once at start.
        """


class _NoHealthStats:
    def checked(self, result: str) -> None:
        pass

    def setUp(self, up: bool) -> None:
        pass


NO_HEALTH_STATS: HealthStats = _NoHealthStats()


@dataclass
class HealthTarget:
    """
    One backend as the checker reaches it.

    @ivar name: the backend's stable name (C{tcp:HOST:PORT}, …), used in
        logs, metrics and to adopt state across a reload.
    @ivar endpoint: opens a connection to the backend. For a C{tls:} backend
        either the TLS endpoint itself (then a PROXY header cannot go in
        clear) or the plain endpoint under it, with C{tls} set.
    @ivar tls: when given, TLS is started over C{endpoint}'s connection after
        the PROXY header, with this creator (which verifies the backend).
    @ivar proxyHeader: the PROXY protocol version the service sends (C{v1},
        C{v2}, C{v2-ssl}) or C{None}; see L{CHECK_PROXY_HEADERS}.
    @ivar stats: where check results and the state go.
    """

    name: str
    endpoint: IStreamClientEndpoint
    tls: IOpenSSLClientConnectionCreator | None = None
    proxyHeader: str | None = None
    stats: HealthStats = NO_HEALTH_STATS


@dataclass
class BackendHealth:
    """
    What the checker knows of one backend. Times are the clock's seconds.

    @ivar up: whether the backend gets new client connections.
    @ivar lastCheck: when the last check ended, C{None} before the first.
    @ivar lastResult: L{SUCCESS} or L{FAILURE}, C{None} before the first.
    @ivar lastReason: why the last check failed, C{None} after a success.
    @ivar lastChange: when the state last changed, C{None} if it never did.
    @ivar successes: consecutive successful checks, up to now.
    @ivar failures: consecutive failed checks, up to now.
    """

    name: str
    up: bool = True
    lastCheck: float | None = None
    lastResult: str | None = None
    lastReason: str | None = None
    lastChange: float | None = None
    successes: int = 0
    failures: int = 0

    @property
    def state(self) -> str:
        """
        L{UP} or L{DOWN}.
        """
        return UP if self.up else DOWN


class CheckFailed(Exception):
    """
    A check of a backend failed; C{str()} is the reason for a log line.
    """


def describeFailure(error: BaseException | None) -> str:
    """
    A short reason for a failed check, as an operator reads it in a log line:
    C{connection refused}, C{TLS: certificate verify failed}, …
    """
    if error is None:
        return "unknown error"
    if isinstance(error, CheckFailed):
        return str(error)
    if isinstance(error, netError.ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, netError.DNSLookupError):
        return "host name not found"
    if isinstance(error, netError.NoRouteError):
        return "no route to host"
    if isinstance(error, (netError.ConnectionDone, netError.ConnectionLost)):
        return "closed by the backend"
    if isinstance(error, SSL.Error):
        reasons = [
            entry[2]
            for entry in (error.args[0] if error.args else [])
            if isinstance(entry, tuple) and len(entry) == 3 and entry[2]
        ]
        return "TLS: " + (reasons[-1] if reasons else "handshake failed")
    if isinstance(error, netError.ConnectError):
        if isinstance(error.osError, int):
            # A UNIX socket's connect gives the errno alone (2: no such file).
            text = os.strerror(error.osError)
        else:
            text = str(error.osError or "")
        text = re.sub(r"^\d+:\s*", "", text).strip().rstrip(".")
        if not text:
            return (error.__doc__ or type(error).__name__).strip().splitlines()[0]
        return text[:1].lower() + text[1:]
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[:1].lower() + error.strerror[1:]
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _showReply(payload: bytes) -> str:
    shown = payload[:_SHOWN_REPLY]
    more = "…" if len(payload) > _SHOWN_REPLY else ""
    return repr(shown) + more


@implementer(IHandshakeListener)
class _CheckProtocol(Protocol):
    """
    One check's connection: optional PROXY header, optional TLS, then either
    nothing more (C{connect}) or one probe and its first reply (C{probe}).

    C{done} fires with C{None} on success and fails with L{CheckFailed} (or
    the connection's error) otherwise; cancelling it aborts the connection.
    Whatever happens on the connection after C{done} has fired is ignored.
    """

    # A TCP, UNIX or TLS transport: abortConnection and startTLS are there.
    transport: Any

    def __init__(self, target: HealthTarget, settings: HealthSettings) -> None:
        self._target = target
        self._settings = settings
        self._codec: Framing | None = None
        self._buffer = b""
        self.done: Deferred[None] = Deferred(self._cancel)

    def _cancel(self, done: Deferred[None]) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def _finish(self, failure: str | None) -> None:
        if self.done.called:
            return
        if failure is None:
            self.done.callback(None)
            self.transport.loseConnection()
        else:
            self.done.errback(CheckFailed(failure))
            self.transport.abortConnection()

    def connectionMade(self) -> None:
        target = self._target
        if target.proxyHeader is not None:
            self.transport.write(CHECK_PROXY_HEADERS[target.proxyHeader])
        if target.tls is not None:
            self.transport.startTLS(target.tls)
        elif not isinstance(self.transport, TLSMemoryBIOProtocol):
            self.handshakeCompleted()
        # Otherwise the endpoint put TLS under this protocol: wait for the
        # handshake (and the verification) to complete.

    def handshakeCompleted(self) -> None:
        if self.done.called:
            return
        if self._settings.mode != PROBE:
            self._finish(None)
            return
        self._codec = self._settings.framing()
        assert self._settings.send is not None
        self.transport.write(self._codec.encode([self._settings.send]))

    def dataReceived(self, data: bytes) -> None:
        if self._codec is None or self.done.called:
            return
        self._buffer += data
        try:
            messages, self._buffer = self._codec.decode(self._buffer)
        except FramingError as error:
            self._finish(f"bad reply: {error}")
            return
        if messages:
            self._judge(messages[0])

    def _judge(self, payload: bytes) -> None:
        expect = self._settings.expect
        if expect is None or expect.search(payload.decode("utf-8", "replace")):
            self._finish(None)
        else:
            self._finish(
                f"reply {_showReply(payload)} does not match {expect.pattern!r}"
            )

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if self._codec is not None:
            self.done.errback(CheckFailed("closed by the backend before replying"))
        else:
            self.done.errback(CheckFailed(describeFailure(reason.value)))


class _CheckFactory(Factory):
    # twistd shows every level: a check every few seconds per backend must
    # not write "Starting factory" lines; its result shows in the metrics
    # and the status page, and a change of state is logged once.
    noisy = False

    def __init__(self, target: HealthTarget, settings: HealthSettings) -> None:
        self._target = target
        self._settings = settings

    def buildProtocol(self, addr: object) -> _CheckProtocol:
        protocol = _CheckProtocol(self._target, self._settings)
        protocol.factory = self
        return protocol


def _whenDone(protocol: Any) -> Deferred[None]:
    done: Deferred[None] = protocol.done
    return done


def runCheck(
    target: HealthTarget, settings: HealthSettings, clock: IReactorTime
) -> Deferred[None]:
    """
    Check C{target} once: fires with C{None} on success, fails with
    L{CheckFailed} whose text is the reason otherwise (the timeout included:
    C{timed out after 2 s}). Cancelling it aborts the attempt.
    """
    result: Deferred[None] = Deferred(lambda _: attempt.cancel())
    connecting = maybeDeferred(target.endpoint.connect, _CheckFactory(target, settings))
    attempt: Deferred[None] = connecting.addCallback(_whenDone)
    timedOut = []

    def onTimeout() -> None:
        timedOut.append(True)
        attempt.cancel()

    timer = clock.callLater(settings.timeout, onTimeout)

    def settled(outcome: object) -> None:
        if timer.active():
            timer.cancel()
        if result.called:
            return
        if isinstance(outcome, Failure):
            if timedOut:
                result.errback(CheckFailed(f"timed out after {settings.timeout:g} s"))
            elif outcome.check(CancelledError):
                result.errback(outcome)
            else:
                result.errback(CheckFailed(describeFailure(outcome.value)))
        else:
            result.callback(None)

    attempt.addBoth(settled)
    return result


Observer = Callable[[BackendHealth], None]


class HealthChecker:
    """
    Checks every backend of one service, and keeps their states.

    @ivar states: name -> L{BackendHealth}, in the order of the targets.
    """

    def __init__(
        self,
        service: str,
        targets: Sequence[HealthTarget],
        settings: HealthSettings,
        clock: IReactorTime,
        check: Callable[
            [HealthTarget, HealthSettings, IReactorTime], Deferred[None]
        ] = runCheck,
    ) -> None:
        """
        @param service: the service's name, for log lines.
        @param targets: the backends, in the service's order; names unique.
        @param clock: for the schedule, the timeouts and the times kept.
        @param check: runs one check (L{runCheck}); replaceable in tests.
        """
        self.service = service
        self.settings = settings
        self._targets = list(targets)
        self._clock = clock
        self._check = check
        self._observers: list[Observer] = []
        self.states: dict[str, BackendHealth] = {
            target.name: BackendHealth(target.name) for target in self._targets
        }
        self._timers: dict[str, IDelayedCall] = {}
        self._inFlight: dict[str, Deferred[None]] = {}
        self._running = False

    # Reading the states.

    def isUp(self, name: str) -> bool:
        """
        Whether the backend C{name} should get new client connections.

        @raise KeyError: for a name this checker does not check.
        """
        return self.states[name].up

    def anyUp(self) -> bool:
        """
        Whether at least one backend is up (C{/readyz}, and whether a new
        client may be connected at all).
        """
        return any(state.up for state in self.states.values())

    def addObserver(self, observer: Observer) -> None:
        """
        Call C{observer(state)} after each change of a backend's state.
        """
        self._observers.append(observer)

    def removeObserver(self, observer: Observer) -> None:
        self._observers.remove(observer)

    # Life.

    def adopt(self, previous: HealthChecker) -> None:
        """
        Take over the state of each backend C{previous} also checks (same
        name): a reload keeps a backend's health. Call before L{start}.
        """
        for name in self.states:
            old = previous.states.get(name)
            if old is not None:
                self.states[name] = replace(old)

    def start(self) -> None:
        """
        Start checking. The first check of the backend at index C{i} of C{n}
        comes C{i * interval / n} seconds from now, so that checks are spread
        over the interval rather than all at the same instant.
        """
        if self._running:
            return
        self._running = True
        for target in self._targets:
            target.stats.setUp(self.states[target.name].up)
        if self.settings.mode == NONE:
            return
        count = len(self._targets)
        for index, target in enumerate(self._targets):
            offset = index * self.settings.interval / count
            self._schedule(target, self._clock.seconds() + offset)

    def stop(self) -> None:
        """
        Stop checking: pending checks are not started, checks under way are
        cancelled (their connections aborted) and count for nothing.
        """
        self._running = False
        timers, self._timers = self._timers, {}
        for timer in timers.values():
            if timer.active():
                timer.cancel()
        inFlight, self._inFlight = self._inFlight, {}
        for attempt in inFlight.values():
            attempt.cancel()

    def _schedule(self, target: HealthTarget, due: float) -> None:
        delay = max(0.0, due - self._clock.seconds())
        self._timers[target.name] = self._clock.callLater(delay, self._run, target, due)

    def _run(self, target: HealthTarget, due: float) -> None:
        del self._timers[target.name]
        attempt = self._check(target, self.settings, self._clock)
        self._inFlight[target.name] = attempt

        def succeeded(_: object) -> None:
            self._record(target, None)

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError):
                return
            self._record(target, describeFailure(failure.value))

        def next(_: object) -> None:
            if self._inFlight.get(target.name) is not attempt:
                # Stopped while the check was under way.
                return
            del self._inFlight[target.name]
            if self._running:
                # A check that took longer than the interval is followed by
                # the next at once, not by a burst catching up the missed.
                nextDue = max(due + self.settings.interval, self._clock.seconds())
                self._schedule(target, nextDue)

        attempt.addCallbacks(succeeded, failed).addBoth(next)

    def _record(self, target: HealthTarget, failure: str | None) -> None:
        if not self._running:
            return
        state = self.states[target.name]
        now = self._clock.seconds()
        state.lastCheck = now
        target.stats.checked(SUCCESS if failure is None else FAILURE)
        if failure is None:
            state.lastResult = SUCCESS
            state.lastReason = None
            state.successes += 1
            state.failures = 0
            if not state.up and state.successes >= self.settings.rise:
                self._change(target, state, True, now)
        else:
            state.lastResult = FAILURE
            state.lastReason = failure
            state.failures += 1
            state.successes = 0
            if state.up and state.failures >= self.settings.fall:
                self._change(target, state, False, now)

    def _change(
        self, target: HealthTarget, state: BackendHealth, up: bool, now: float
    ) -> None:
        state.up = up
        state.lastChange = now
        target.stats.setUp(up)
        if up:
            log.info(
                "backend {backend} of {service} is up: {count} checks passed",
                backend=target.name,
                service=self.service,
                count=state.successes,
                state=UP,
            )
        else:
            log.warn(
                "backend {backend} of {service} is down:"
                " {count} checks failed: {reason}",
                backend=target.name,
                service=self.service,
                count=state.failures,
                reason=state.lastReason,
                state=DOWN,
            )
        for observer in list(self._observers):
            try:
                observer(state)
            except Exception:
                # One broken observer must not stop the checks or the others.
                log.failure(
                    "observer of {service}'s backend health failed",
                    service=self.service,
                )


def readinessProblems(checkers: Mapping[str, HealthChecker]) -> list[str]:
    """
    The lines C{/readyz} adds to its body for backend health (SPEC section
    5): one C{service NAME: no backend up} per service, by name C{->} its
    checker, whose backends are all down. Empty when every service has one.
    """
    return [
        f"service {name}: no backend up"
        for name, checker in checkers.items()
        if not checker.anyUp()
    ]
