"""
Tests for L{gateway.health}: the settings, one check on fake and real
connections, and the checker's schedule and states on a L{Clock}.
"""

from __future__ import annotations

import re

import trustme
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.codec import framing
from gateway.health import (
    CHECK_PROXY_HEADERS,
    CONNECT,
    DOWN,
    FAILURE,
    NONE,
    PROBE,
    SUCCESS,
    UP,
    BackendHealth,
    CheckFailed,
    HealthChecker,
    HealthSettings,
    HealthSettingsError,
    HealthTarget,
    compileExpect,
    parseSend,
    readinessProblems,
    runCheck,
)
from tests.e2e import DEADLINE, BackendFactory, freePort, listenBackend

_INFO_OR_ABOVE = (LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical)


class RecordingStats:
    """
    A L{gateway.health.HealthStats} that keeps every event.
    """

    def __init__(self) -> None:
        self.results: list[str] = []
        self.ups: list[bool] = []

    def checked(self, result: str) -> None:
        self.results.append(result)

    def setUp(self, up: bool) -> None:
        self.ups.append(up)


class ScriptedChecks:
    """
    The C{check} of a L{HealthChecker}: each call is recorded with the
    clock's time and answered by the next outcome scripted for the backend
    (C{None} success, a string a failure with that reason, C{"pending"} a
    Deferred the test fires or that gets cancelled).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, str]] = []
        self.scripts: dict[str, list[str | None]] = {}
        self.pending: dict[str, Deferred[None]] = {}
        self.cancelled: list[str] = []

    def __call__(
        self, target: HealthTarget, settings: HealthSettings, clock: object
    ) -> Deferred[None]:
        self.calls.append((self.clock.seconds(), target.name))
        script = self.scripts.get(target.name, [])
        outcome = script.pop(0) if script else None
        if outcome is None:
            return succeed(None)
        if outcome == "pending":
            attempt: Deferred[None] = Deferred(
                lambda _: self.cancelled.append(target.name)
            )
            self.pending[target.name] = attempt
            return attempt
        failed: Deferred[None] = Deferred()
        failed.errback(CheckFailed(outcome))
        return failed


def _target(name: str, stats: RecordingStats | None = None) -> HealthTarget:
    return HealthTarget(name, endpoint=None, stats=stats or RecordingStats())  # type: ignore[arg-type]


def _capture(testCase: SynchronousTestCase) -> list[dict]:
    """
    Every log event of the gateway.health namespace while the test runs.
    """
    events: list[dict] = []

    def observer(event: dict) -> None:
        if event.get("log_namespace") == "gateway.health":
            events.append(event)

    globalLogPublisher.addObserver(observer)
    testCase.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def _text(event: dict) -> str:
    from twisted.logger import formatEvent

    return formatEvent(event)


class ParseSendTests(SynchronousTestCase):
    """
    L{parseSend} turns the option's text into the probe's bytes.
    """

    def test_escapes(self) -> None:
        self.assertEqual(
            parseSend("PING\\r\\n\\t\\\\\\x00\\xffé"),
            b"PING\r\n\t\\\x00\xff\xc3\xa9",
        )

    def test_plain(self) -> None:
        self.assertEqual(parseSend("status"), b"status")
        self.assertEqual(parseSend(""), b"")

    def test_unknownEscape(self) -> None:
        error = self.assertRaises(HealthSettingsError, parseSend, "ab\\q")
        self.assertEqual(error.option, "health-check-send")
        self.assertIn("unknown escape \\q at position 3", str(error))

    def test_trailingBackslash(self) -> None:
        error = self.assertRaises(HealthSettingsError, parseSend, "ab\\")
        self.assertIn("lone backslash at the end (position 3)", str(error))

    def test_shortHex(self) -> None:
        for text in ("\\x4", "\\x", "\\xg1", "a\\x4z"):
            error = self.assertRaises(HealthSettingsError, parseSend, text)
            self.assertIn("needs two hex digits", str(error))


class CompileExpectTests(SynchronousTestCase):
    """
    L{compileExpect} compiles the regex or says where it is wrong.
    """

    def test_compiles(self) -> None:
        self.assertTrue(compileExpect("^PO.G$").search("PONG"))

    def test_error(self) -> None:
        error = self.assertRaises(HealthSettingsError, compileExpect, "ab(c")
        self.assertEqual(error.option, "health-check-expect")
        self.assertEqual(
            str(error),
            "--health-check-expect: not a regular expression:"
            " missing ), unterminated subpattern at position 3",
        )


class HealthSettingsTests(SynchronousTestCase):
    """
    L{HealthSettings} refuses settings that cannot work, naming the option.
    """

    def assertRefused(self, option: str, fragment: str, **kwargs: object) -> None:
        error = self.assertRaises(HealthSettingsError, HealthSettings, **kwargs)
        self.assertEqual(error.option, option)
        self.assertIn(fragment, str(error))

    def test_defaults(self) -> None:
        settings = HealthSettings()
        self.assertEqual(
            (settings.mode, settings.interval, settings.timeout),
            (CONNECT, 2.0, 2.0),
        )
        self.assertEqual((settings.rise, settings.fall), (2, 3))

    def test_refused(self) -> None:
        self.assertRefused("health-check", "unknown mode 'ping'", mode="ping")
        self.assertRefused("health-check-interval", "more than 0", interval=0)
        self.assertRefused("health-check-timeout", "more than 0", timeout=-1)
        self.assertRefused("health-check-rise", "1 or more", rise=0)
        self.assertRefused("health-check-fall", "1 or more", fall=0)
        self.assertRefused("health-check-send", "only with", send=b"x")
        self.assertRefused("health-check-expect", "only with", expect=re.compile("x"))
        self.assertRefused("health-check-send", "needs a message", mode=PROBE)
        # A newline cannot travel inside an lf-framed message.
        self.assertRefused(
            "health-check-send",
            "cannot be sent in the lf framing",
            mode=PROBE,
            send=b"a\nb",
            backendFraming="lf",
        )


class FakeEndpoint:
    """
    A client endpoint whose connections are L{StringTransportWithDisconnection}s
    (C{"connect"}), that refuses (C{"refuse"}), or never answers (C{"hang"}).
    """

    def __init__(self, behaviour: str = "connect") -> None:
        self.behaviour = behaviour
        self.protocols: list[Protocol] = []
        self.cancelled = 0

    def connect(self, factory):  # type: ignore[no-untyped-def]
        if self.behaviour == "refuse":
            failed: Deferred = Deferred()
            failed.errback(ConnectionRefusedError("111: Connection refused"))
            return failed
        if self.behaviour == "hang":

            def cancel(d: Deferred) -> None:
                self.cancelled += 1

            return Deferred(cancel)
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.protocols.append(protocol)
        return succeed(protocol)


class RunCheckTests(SynchronousTestCase):
    """
    L{runCheck} on fake connections and a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def check(
        self, endpoint: FakeEndpoint, settings: HealthSettings, **kwargs: object
    ) -> tuple[list[object], Deferred[None]]:
        outcome: list[object] = []
        attempt = runCheck(
            HealthTarget("tcp:h:1", endpoint, **kwargs),  # type: ignore[arg-type]
            settings,
            self.clock,
        )
        attempt.addBoth(outcome.append)
        return outcome, attempt

    def assertFailed(self, outcome: list[object], reason: str) -> None:
        self.assertEqual(len(outcome), 1)
        failure = outcome[0]
        assert isinstance(failure, Failure)
        failure.trap(CheckFailed)
        self.assertEqual(str(failure.value), reason)

    def test_connect(self) -> None:
        """
        A connection that completes passes a C{connect} check, and is closed
        without a byte written.
        """
        endpoint = FakeEndpoint()
        outcome, _ = self.check(endpoint, HealthSettings())
        self.assertEqual(outcome, [None])
        transport = endpoint.protocols[0].transport
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.connected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refused(self) -> None:
        outcome, _ = self.check(FakeEndpoint("refuse"), HealthSettings())
        self.assertFailed(outcome, "connection refused")

    def test_timeout(self) -> None:
        """
        A connection that does not complete within the timeout fails the
        check, and the attempt is cancelled.
        """
        endpoint = FakeEndpoint("hang")
        outcome, _ = self.check(endpoint, HealthSettings(timeout=1.5))
        self.clock.advance(1.4)
        self.assertEqual(outcome, [])
        self.clock.advance(0.1)
        self.assertFailed(outcome, "timed out after 1.5 s")
        self.assertEqual(endpoint.cancelled, 1)

    def test_cancel(self) -> None:
        endpoint = FakeEndpoint("hang")
        outcome, attempt = self.check(endpoint, HealthSettings())
        attempt.cancel()
        self.assertEqual(len(outcome), 1)
        outcome[0].trap(CancelledError)  # type: ignore[union-attr]
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_proxyHeaders(self) -> None:
        """
        With PROXY headers, a check writes the header of a connection of the
        proxy's own: v2 C{LOCAL}, v1 C{UNKNOWN}.
        """
        self.assertEqual(
            CHECK_PROXY_HEADERS["v2"],
            b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00",
        )
        self.assertEqual(CHECK_PROXY_HEADERS["v1"], b"PROXY UNKNOWN\r\n")
        for version in ("v1", "v2", "v2-ssl"):
            endpoint = FakeEndpoint()
            outcome, _ = self.check(endpoint, HealthSettings(), proxyHeader=version)
            self.assertEqual(outcome, [None])
            self.assertEqual(
                endpoint.protocols[0].transport.value(), CHECK_PROXY_HEADERS[version]
            )

    def test_proxyHeaderBeforeTLS(self) -> None:
        """
        With a TLS creator, the PROXY header is written in clear, then TLS is
        started, and the check waits for the handshake.
        """
        endpoint = FakeEndpoint()
        events: list[object] = []

        class Transport(StringTransportWithDisconnection):
            def startTLS(self, creator: object) -> None:
                events.append(("startTLS", self.value(), creator))

        endpoint.connect = _connectWith(Transport, endpoint)  # type: ignore[method-assign]
        creator = object()
        outcome, _ = self.check(
            endpoint, HealthSettings(), proxyHeader="v2", tls=creator
        )
        self.assertEqual(events, [("startTLS", CHECK_PROXY_HEADERS["v2"], creator)])
        self.assertEqual(outcome, [])
        endpoint.protocols[0].handshakeCompleted()
        self.assertEqual(outcome, [None])

    def probeSettings(self, expect: str | None = "^PONG$") -> HealthSettings:
        return HealthSettings(
            mode=PROBE,
            send=b"PING",
            expect=None if expect is None else compileExpect(expect),
            backendFraming="int32",
            maxMessageSize=16,
        )

    def test_probeMatch(self) -> None:
        """
        A probe writes its message in the backend framing and passes when the
        first reply matches, whatever chunks the reply arrives in.
        """
        endpoint = FakeEndpoint()
        outcome, _ = self.check(endpoint, self.probeSettings())
        protocol = endpoint.protocols[0]
        self.assertEqual(protocol.transport.value(), b"\x00\x00\x00\x04PING")
        reply = framing("int32", 16).encode([b"PONG", b"later"])
        for byte in range(len(reply)):
            protocol.dataReceived(reply[byte : byte + 1])
        self.assertEqual(outcome, [None])
        self.assertFalse(protocol.transport.connected)

    def test_probeAnyReply(self) -> None:
        endpoint = FakeEndpoint()
        outcome, _ = self.check(endpoint, self.probeSettings(expect=None))
        endpoint.protocols[0].dataReceived(b"\x00\x00\x00\x00")
        self.assertEqual(outcome, [None])

    def test_probeMismatch(self) -> None:
        endpoint = FakeEndpoint()
        outcome, _ = self.check(endpoint, self.probeSettings())
        endpoint.protocols[0].dataReceived(b"\x00\x00\x00\x05ERROR\x00\x00\x00\x04PONG")
        self.assertFailed(outcome, "reply b'ERROR' does not match '^PONG$'")
        self.assertFalse(endpoint.protocols[0].transport.connected)

    def test_probeBadReply(self) -> None:
        endpoint = FakeEndpoint()
        outcome, _ = self.check(endpoint, self.probeSettings())
        endpoint.protocols[0].dataReceived(b"\x00\x00\x01\x00")
        self.assertEqual(len(outcome), 1)
        self.assertIn("bad reply: too_long", str(outcome[0].value))  # type: ignore[union-attr]

    def test_probeClosedBeforeReply(self) -> None:
        endpoint = FakeEndpoint()
        outcome, _ = self.check(endpoint, self.probeSettings())
        endpoint.protocols[0].connectionLost(Failure(ConnectionDone()))
        self.assertFailed(outcome, "closed by the backend before replying")

    def test_probeTimeout(self) -> None:
        """
        A backend that accepts and never answers the probe fails the check
        at the timeout, and its connection is aborted.
        """
        endpoint = FakeEndpoint()
        outcome, _ = self.check(endpoint, self.probeSettings())
        self.clock.advance(2)
        self.assertFailed(outcome, "timed out after 2 s")
        self.assertFalse(endpoint.protocols[0].transport.connected)


def _connectWith(transportClass: type, endpoint: FakeEndpoint):  # type: ignore[no-untyped-def]
    def connect(factory):  # type: ignore[no-untyped-def]
        protocol = factory.buildProtocol(None)
        transport = transportClass()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        endpoint.protocols.append(protocol)
        return succeed(protocol)

    return connect


class CheckerTests(SynchronousTestCase):
    """
    L{HealthChecker} on a L{Clock} with scripted check outcomes.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.checks = ScriptedChecks(self.clock)
        self.events = _capture(self)

    def checker(
        self, names: list[str], settings: HealthSettings | None = None
    ) -> HealthChecker:
        self.stats = {name: RecordingStats() for name in names}
        checker = HealthChecker(
            "orders",
            [_target(name, self.stats[name]) for name in names],
            settings or HealthSettings(),
            self.clock,
            check=self.checks,
        )
        self.addCleanup(checker.stop)
        return checker

    def test_spreading(self) -> None:
        """
        The first checks of n backends are C{interval / n} apart; each
        backend is then checked every C{interval} seconds.
        """
        checker = self.checker(["a", "b", "c", "d"])
        checker.start()
        self.clock.pump([0] + [0.25] * 16)
        self.assertEqual(
            self.checks.calls,
            [
                (0.0, "a"),
                (0.5, "b"),
                (1.0, "c"),
                (1.5, "d"),
                (2.0, "a"),
                (2.5, "b"),
                (3.0, "c"),
                (3.5, "d"),
                (4.0, "a"),
            ],
        )

    def test_fallAndRise(self) -> None:
        """
        An up backend stays up until C{fall} failures in a row, a down one
        stays down until C{rise} successes in a row; each change is logged
        once with its reason, given to the observers and to the stats.
        """
        checker = self.checker(["tcp:10.0.0.5:9000"])
        name = "tcp:10.0.0.5:9000"
        self.checks.scripts[name] = [
            "connection refused",
            "connection refused",
            None,  # a success in between resets the failures
            "connection refused",
            "connection refused",
            "connection refused",  # third in a row: down
            None,
            "connection refused",  # resets the successes
            None,
            None,  # second in a row: up
        ]
        changes: list[tuple[float, str]] = []
        checker.addObserver(
            lambda state: changes.append((self.clock.seconds(), state.state))
        )
        checker.start()
        states = []
        for _ in range(10):
            self.clock.advance(0)
            # The state once the checks at 0, 2, ... seconds so far are done.
            states.append(checker.states[name].state)
            self.clock.advance(2)
        self.assertEqual(states, [UP] * 5 + [DOWN] * 4 + [UP])
        self.assertEqual(changes, [(10.0, DOWN), (18.0, UP)])
        self.assertEqual(self.stats[name].ups, [True, False, True])
        self.assertEqual(
            self.stats[name].results[:10],
            [FAILURE, FAILURE, SUCCESS, FAILURE, FAILURE, FAILURE]
            + [SUCCESS, FAILURE, SUCCESS, SUCCESS],
        )
        informative = [
            _text(event)
            for event in self.events
            if event["log_level"] in _INFO_OR_ABOVE
        ]
        self.assertEqual(
            informative,
            [
                "backend tcp:10.0.0.5:9000 of orders is down:"
                " 3 checks failed: connection refused",
                "backend tcp:10.0.0.5:9000 of orders is up: 2 checks passed",
            ],
        )
        # The checks themselves are not logged at all: twistd writes every
        # level, and one line per check per backend would flood the log.
        self.assertEqual(len(self.events), len(informative))

    def test_observerError(self) -> None:
        """
        An observer that raises is logged; the others still hear of the
        change and the checks go on.
        """
        checker = self.checker(["a"], HealthSettings(fall=1))
        self.checks.scripts["a"] = ["refused"]
        heard: list[str] = []

        def broken(state: BackendHealth) -> None:
            raise RuntimeError("observer bug")

        checker.addObserver(broken)
        checker.addObserver(lambda state: heard.append(state.state))
        checker.start()
        self.clock.pump([0, 2])
        self.assertEqual(heard, [DOWN])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.checks.calls), 2)

    def test_stateKept(self) -> None:
        """
        Each backend's state has the time and result of its last check and
        its last change, and the counters in a row.
        """
        checker = self.checker(["a"], HealthSettings(fall=1))
        self.checks.scripts["a"] = ["connection refused", None]
        self.assertEqual(checker.states["a"], BackendHealth("a"))
        checker.start()
        self.clock.advance(0)
        self.assertEqual(
            checker.states["a"],
            BackendHealth(
                "a",
                up=False,
                lastCheck=0.0,
                lastResult=FAILURE,
                lastReason="connection refused",
                lastChange=0.0,
                successes=0,
                failures=1,
            ),
        )
        self.clock.advance(2)
        self.assertEqual(checker.states["a"].lastCheck, 2.0)
        self.assertEqual(checker.states["a"].lastResult, SUCCESS)
        self.assertIsNone(checker.states["a"].lastReason)
        self.assertEqual(checker.states["a"].successes, 1)

    def test_anyUp(self) -> None:
        checker = self.checker(["a", "b"], HealthSettings(fall=1))
        self.checks.scripts = {"a": ["refused"], "b": ["refused"]}
        checker.start()
        self.clock.advance(0)
        self.assertTrue(checker.anyUp())
        self.assertFalse(checker.isUp("a"))
        self.clock.advance(1)
        self.assertFalse(checker.anyUp())

    def test_readiness(self) -> None:
        """
        L{readinessProblems} names each service with no backend up.
        """
        orders = self.checker(["a", "b"], HealthSettings(fall=1))
        quotes = self.checker(["c"], HealthSettings(fall=1))
        self.checks.scripts = {"a": ["refused"], "c": ["refused"]}
        checkers = {"orders": orders, "quotes": quotes}
        self.assertEqual(readinessProblems(checkers), [])
        orders.start()
        quotes.start()
        self.clock.pump([0, 1])
        self.assertEqual(readinessProblems(checkers), ["service quotes: no backend up"])

    def test_slowCheck(self) -> None:
        """
        A check under way is not started again; the next one comes when it
        has ended, at once if it took longer than the interval.
        """
        checker = self.checker(["a"])
        self.checks.scripts["a"] = ["pending"]
        checker.start()
        self.clock.pump([0, 5])
        self.assertEqual(self.checks.calls, [(0.0, "a")])
        self.checks.pending["a"].callback(None)
        self.clock.advance(0)
        self.assertEqual(self.checks.calls, [(0.0, "a"), (5.0, "a")])
        self.clock.advance(2)
        self.assertEqual(self.checks.calls[-1], (7.0, "a"))

    def test_stop(self) -> None:
        """
        L{HealthChecker.stop} cancels the pending timers and the checks under
        way, which count for nothing.
        """
        checker = self.checker(["a", "b"])
        self.checks.scripts["a"] = ["pending"]
        checker.start()
        self.clock.advance(0)
        # b's first check, half an interval away.
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        checker.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.checks.cancelled, ["a"])
        self.assertEqual(checker.states["a"], BackendHealth("a"))
        self.assertEqual(self.stats["a"].results, [])
        self.clock.advance(10)
        self.assertEqual(self.checks.calls, [(0.0, "a")])

    def test_none(self) -> None:
        """
        With C{none}, nothing is checked and every backend stays up.
        """
        checker = self.checker(["a"], HealthSettings(mode=NONE))
        checker.start()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(checker.anyUp())
        self.assertEqual(self.stats["a"].ups, [True])

    def test_adopt(self) -> None:
        """
        A checker for a new backend list takes over the state of the
        backends it shares with the old one, by name; new ones start up.
        """
        old = self.checker(["a", "b"], HealthSettings(fall=1))
        self.checks.scripts = {"a": ["refused"], "b": [None]}
        old.start()
        self.clock.pump([0, 1])
        old.stop()
        self.assertFalse(old.isUp("a"))
        new = HealthChecker(
            "orders",
            [_target("a"), _target("c")],
            HealthSettings(),
            self.clock,
            check=self.checks,
        )
        self.addCleanup(new.stop)
        new.adopt(old)
        self.assertEqual(new.states["a"], old.states["a"])
        self.assertIsNot(new.states["a"], old.states["a"])
        self.assertEqual(new.states["c"], BackendHealth("c"))
        self.assertEqual(list(new.states), ["a", "c"])
        self.checks.scripts = {"a": [None, None]}
        new.start()
        self.clock.pump([0, 1, 1])
        self.assertTrue(new.isUp("a"))


class TimeoutCheckerTests(SynchronousTestCase):
    """
    The checker with the real L{runCheck} on fake endpoints and a L{Clock}.
    """

    def test_timeoutsTakeDown(self) -> None:
        """
        A backend that never completes a connection is down after
        C{fall} checks, each ended by the timeout.
        """
        clock = Clock()
        events = _capture(self)
        endpoint = FakeEndpoint("hang")
        checker = HealthChecker(
            "orders",
            [HealthTarget("tcp:h:1", endpoint)],  # type: ignore[arg-type]
            HealthSettings(interval=2, timeout=1),
            clock,
        )
        checker.start()
        clock.pump([0] + [0.5] * 10)
        self.assertFalse(checker.isUp("tcp:h:1"))
        self.assertEqual(checker.states["tcp:h:1"].lastChange, 5.0)
        self.assertEqual(endpoint.cancelled, 3)
        warnings = [_text(e) for e in events if e["log_level"] in _INFO_OR_ABOVE]
        self.assertEqual(
            warnings,
            ["backend tcp:h:1 of orders is down: 3 checks failed: timed out after 1 s"],
        )
        checker.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class _Silent(Protocol):
    """
    A backend connection that says nothing and records its life.
    """

    def connectionMade(self) -> None:
        self.factory.opened(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.closed(self)


class RealConnectionTests(TestCase):
    """
    Checks over real loopback sockets.
    """

    def checkOnce(
        self, target: HealthTarget, settings: HealthSettings
    ) -> Deferred[object]:
        attempt = runCheck(target, settings, reactor)
        return attempt.addErrback(
            lambda failure: failure.trap(CheckFailed) and failure.value
        )

    def tlsServer(self, ca: trustme.CA) -> int:
        """
        A TLS server for C{localhost} whose certificate C{ca} signed.
        """
        leaf = ca.issue_cert("localhost")
        certificate = PrivateCertificate.loadPEM(
            leaf.private_key_and_cert_chain_pem.bytes()
        )
        factory = BackendFactory(_Silent)
        port = reactor.listenSSL(
            0, factory, certificate.options(), interface="127.0.0.1"
        )

        async def cleanup() -> None:
            await port.stopListening()
            await factory.allClosed()

        self.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
        return port.getHost().port

    def tlsTarget(
        self, port: int, trusted: trustme.CA, plainUnder: bool
    ) -> HealthTarget:
        creator = optionsForClientTLS(
            "localhost", trustRoot=Certificate.loadPEM(trusted.cert_pem.bytes())
        )
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        if plainUnder:
            return HealthTarget("tls:localhost:%d" % port, tcp, tls=creator)
        return HealthTarget("tls:localhost:%d" % port, wrapClientTLS(creator, tcp))

    async def test_tlsVerificationFailure(self) -> None:
        """
        A TLS backend whose certificate does not verify fails the check,
        with OpenSSL's reason; the same backend trusted passes.
        """
        ca = trustme.CA()
        port = self.tlsServer(ca)
        for plainUnder in (False, True):
            outcome = await self.checkOnce(
                self.tlsTarget(port, trustme.CA(), plainUnder), HealthSettings()
            )
            self.assertIsInstance(outcome, CheckFailed)
            self.assertEqual(str(outcome), "TLS: certificate verify failed")
            outcome = await self.checkOnce(
                self.tlsTarget(port, ca, plainUnder), HealthSettings()
            )
            self.assertIsNone(outcome)

    async def test_connectAndProbe(self) -> None:
        """
        C{connect} passes against a listening backend and fails against a
        closed port; C{probe} passes when the reply matches and fails when
        it does not.
        """
        backend, port = listenBackend(self)
        target = HealthTarget(
            "tcp:127.0.0.1:%d" % port, TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        )
        self.assertIsNone(await self.checkOnce(target, HealthSettings()))
        closed = HealthTarget(
            "tcp:closed", TCP4ClientEndpoint(reactor, "127.0.0.1", freePort())
        )
        outcome = await self.checkOnce(closed, HealthSettings())
        self.assertEqual(str(outcome), "connection refused")

        def probe(expect: str) -> HealthSettings:
            return HealthSettings(
                mode=PROBE, send=parseSend("ping"), expect=compileExpect(expect)
            )

        self.assertIsNone(await self.checkOnce(target, probe("^PING$")))
        outcome = await self.checkOnce(target, probe("^PONG$"))
        self.assertEqual(str(outcome), "reply b'PING' does not match '^PONG$'")
        self.assertEqual(backend.received, [b"ping", b"ping"])
        self.assertEqual(backend.accepted, 3)

    async def test_checkerGoesDown(self) -> None:
        """
        A real checker against a backend that answers the probe wrongly
        takes it down after C{fall} checks, and tells its observer.
        """
        backend, port = listenBackend(self)
        target = HealthTarget(
            "tcp:127.0.0.1:%d" % port, TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        )
        # Short intervals so that the test does not wait; the result does
        # not depend on them.
        settings = HealthSettings(
            mode=PROBE,
            interval=0.05,
            timeout=DEADLINE,
            fall=2,
            send=b"ping",
            expect=compileExpect("PONG"),
        )
        checker = HealthChecker("orders", [target], settings, reactor)
        down: Deferred[BackendHealth] = Deferred()
        checker.addObserver(down.callback)
        checker.start()
        self.addCleanup(checker.stop)
        state = await down.addTimeout(DEADLINE, reactor)
        self.assertEqual(state.state, DOWN)
        self.assertEqual(state.failures, 2)
        self.assertIn("does not match 'PONG'", state.lastReason or "")
        self.assertGreaterEqual(len(backend.received), 2)


class DescribeFailureTests(SynchronousTestCase):
    def test_unixErrno(self) -> None:
        """
        A UNIX socket's connect error carries a bare errno; the reason is
        its words, not the number.
        """
        from twisted.internet.error import ConnectError

        from gateway.health import describeFailure

        self.assertEqual(
            describeFailure(ConnectError(2, "No such file or directory")),
            "no such file or directory",
        )
