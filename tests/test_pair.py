"""
Tests for L{gateway.pair}: the phases of a pair and its close reason,
driven by events with no I/O.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway import stats
from gateway.pair import (
    FIRST_BYTE,
    PROXY_HEADER,
    TLS_HANDSHAKE,
    WEBSOCKET_UPGRADE,
    IllegalEvent,
    Pair,
    Phase,
    Step,
)

CLIENT, BACKEND = stats.CLIENT, stats.BACKEND


class RecordingIO:
    """
    A L{gateway.pair.PairIO} that writes down what the pair decides.

    A closed transport is lost at once, as a string transport's is, unless
    C{lazy}; a finished stream breaks the framing when C{badRest}.
    """

    def __init__(self, lazy=False, badRest=False):
        self.calls = []
        self.pair = None
        self.lazy = lazy
        self.badRest = badRest

    def connectBackend(self):
        self.calls.append("connectBackend")

    def abandonConnect(self):
        self.calls.append("abandonConnect")

    def relay(self):
        self.calls.append("relay")

    def finishStream(self, side):
        self.calls.append(("finishStream", side))
        if self.badRest:
            self.pair.protocolError()

    def dropInput(self):
        self.calls.append("dropInput")

    def closeTransports(self, sides, abort):
        self.calls.append(("close", sides, abort))
        if not self.lazy:
            for side in sorted(sides):
                self.pair.lost(side)

    def handshakeFailed(self):
        self.calls.append("handshakeFailed")

    def ended(self, reason, quiet):
        self.calls.append(("ended", reason, quiet))


def makePair(*steps, **io):
    recording = RecordingIO(**io)
    pair = Pair(recording, steps)
    recording.pair = pair
    pair.start()
    return pair, recording


def relaying(**io):
    pair, recording = makePair(**io)
    pair.backendConnected()
    del recording.calls[:]
    return pair, recording


class PreambleTests(SynchronousTestCase):
    def test_noPreamble(self):
        """
        Without a preamble, the backend is connected at once.
        """
        pair, io = makePair()
        self.assertEqual((pair.phase, io.calls), (Phase.CONNECTING, ["connectBackend"]))

    def test_stepsInOrder(self):
        """
        Steps are done outermost first; the last one starts the connect.
        """
        pair, io = makePair(PROXY_HEADER, TLS_HANDSHAKE)
        self.assertEqual((pair.phase, io.calls), (Phase.PREAMBLE, []))
        self.assertRaises(IllegalEvent, pair.stepDone, TLS_HANDSHAKE)
        pair.stepDone(PROXY_HEADER)
        self.assertEqual(io.calls, [])
        pair.stepDone(TLS_HANDSHAKE)
        self.assertEqual((pair.phase, io.calls), (Phase.CONNECTING, ["connectBackend"]))

    def test_stepAdded(self):
        """
        A step may add steps after the others: a PROXY LOCAL header waits
        for the first byte after the TLS handshake.
        """
        pair, io = makePair(PROXY_HEADER, TLS_HANDSHAKE)
        pair.stepDone(PROXY_HEADER, then=(FIRST_BYTE,))
        pair.stepDone(TLS_HANDSHAKE)
        self.assertEqual(pair.steps, (FIRST_BYTE,))
        pair.stepDone(FIRST_BYTE)
        self.assertEqual(pair.phase, Phase.CONNECTING)

    def test_newStep(self):
        """
        A new kind of step needs nothing but its L{Step}.
        """
        upgrade = Step("WebSocket upgrade", stats.CLIENT_CLOSED)
        pair, io = makePair(TLS_HANDSHAKE, upgrade)
        pair.stepDone(TLS_HANDSHAKE)
        pair.lost(CLIENT)
        self.assertEqual(io.calls[-1], ("ended", stats.CLIENT_CLOSED, False))
        self.assertNotIn("handshakeFailed", io.calls)

    def test_refused(self):
        """
        A refusal during the preamble (a WebSocket origin not allowed) ends
        the pair for the refusal's reason, what was written sent first; it
        is no failed handshake, and no backend is connected.
        """
        pair, io = makePair(TLS_HANDSHAKE, WEBSOCKET_UPGRADE)
        pair.stepDone(TLS_HANDSHAKE)
        pair.refuse("denied", abort=False)
        self.assertEqual(
            io.calls,
            [
                "dropInput",
                ("close", frozenset({CLIENT}), False),
                ("ended", "denied", False),
            ],
        )
        self.assertEqual((pair.reason, pair.refused), ("denied", True))

    def test_refusedOnlyInPreamble(self):
        """
        Once the backend is being connected, nothing is refused any more.
        """
        pair, io = makePair()
        self.assertRaises(IllegalEvent, pair.refuse, "denied")

    def test_leftDuringProxyHeader(self):
        """
        A client that leaves before its PROXY header is done has closed: no
        failed handshake, even with TLS inside.
        """
        pair, io = makePair(PROXY_HEADER, TLS_HANDSHAKE)
        pair.lost(CLIENT)
        self.assertEqual(io.calls, ["dropInput", ("ended", stats.CLIENT_CLOSED, False)])

    def test_badProxyHeaderBeforeTLS(self):
        """
        A bad PROXY header in front of TLS is the header's protocol error,
        not a failed handshake.
        """
        pair, io = makePair(PROXY_HEADER, TLS_HANDSHAKE)
        pair.protocolError()
        self.assertEqual(
            io.calls,
            [
                "dropInput",
                ("close", frozenset({CLIENT}), False),
                ("ended", stats.PROTOCOL_ERROR, False),
            ],
        )

    def test_leftDuringHandshake(self):
        """
        A client that leaves during the TLS handshake failed it.
        """
        pair, io = makePair(PROXY_HEADER, TLS_HANDSHAKE)
        pair.stepDone(PROXY_HEADER)
        pair.lost(CLIENT)
        self.assertEqual(
            io.calls,
            ["handshakeFailed", "dropInput", ("ended", stats.TLS_ERROR, False)],
        )

    def test_timeoutDuringHandshake(self):
        """
        A timer that ends a handshake names the reason, and the handshake
        still counts as failed.
        """
        pair, io = makePair(TLS_HANDSHAKE)
        pair.abort(stats.IDLE_TIMEOUT)
        self.assertEqual(io.calls[0], "handshakeFailed")
        self.assertEqual(io.calls[-1], ("ended", stats.IDLE_TIMEOUT, False))

    def test_localQuiet(self):
        """
        A connection that ends while waiting for its first byte (a PROXY
        LOCAL health check) ends quietly.
        """
        pair, io = makePair(PROXY_HEADER)
        pair.stepDone(PROXY_HEADER, then=(FIRST_BYTE,))
        pair.streamEnded(CLIENT)
        self.assertEqual(io.calls[-1], ("ended", stats.CLIENT_CLOSED, True))
        self.assertNotIn("connectBackend", io.calls)


class ConnectingTests(SynchronousTestCase):
    def test_connected(self):
        pair, io = makePair()
        self.assertTrue(pair.backendConnected())
        self.assertEqual((pair.phase, io.calls[-1]), (Phase.RELAYING, "relay"))

    def test_unavailable(self):
        pair, io = makePair()
        pair.backendUnavailable()
        self.assertEqual(io.calls[-1], ("ended", stats.BACKEND_UNAVAILABLE, False))
        self.assertNotIn("abandonConnect", io.calls)

    def test_clientLeft(self):
        """
        A client that leaves while its backend is connecting abandons the
        connect; a backend that connects afterwards is refused.
        """
        pair, io = makePair()
        pair.lost(CLIENT)
        self.assertEqual(
            io.calls[1:],
            ["abandonConnect", "dropInput", ("ended", stats.CLIENT_CLOSED, False)],
        )
        self.assertFalse(pair.backendConnected())
        pair.backendUnavailable()
        self.assertEqual(pair.phase, Phase.CLOSED)

    def test_halfClosedThenUnavailable(self):
        """
        A client that ended its stream while connecting: the backend's
        failure ends the pair.
        """
        pair, io = makePair()
        pair.streamEnded(CLIENT)
        pair.backendUnavailable()
        self.assertEqual(io.calls[-1], ("ended", stats.BACKEND_UNAVAILABLE, False))

    def test_backendEventsIllegal(self):
        """
        The backend's stream cannot end before it is connected.
        """
        pair, io = makePair(TLS_HANDSHAKE)
        self.assertRaises(IllegalEvent, pair.backendConnected)
        self.assertRaises(IllegalEvent, pair.backendUnavailable)


class RelayingTests(SynchronousTestCase):
    def test_firstEndedNamesTheReason(self):
        """
        Both streams ended: the side that ended first is the reason.
        """
        for first, second, reason in [
            (CLIENT, BACKEND, stats.CLIENT_CLOSED),
            (BACKEND, CLIENT, stats.BACKEND_CLOSED),
        ]:
            pair, io = relaying()
            pair.streamEnded(first)
            self.assertEqual(pair.phase, Phase.RELAYING)
            pair.streamEnded(second)
            self.assertEqual(io.calls[-1], ("ended", reason, False))

    def test_lost(self):
        """
        A side lost ends the pair: for it, or for the side whose stream
        ended before.
        """
        for ended, lost, reason in [
            (None, CLIENT, stats.CLIENT_CLOSED),
            (None, BACKEND, stats.BACKEND_CLOSED),
            (CLIENT, BACKEND, stats.CLIENT_CLOSED),
            (BACKEND, CLIENT, stats.BACKEND_CLOSED),
        ]:
            pair, io = relaying(lazy=True)
            if ended:
                pair.streamEnded(ended)
            pair.lost(lost)
            self.assertEqual((pair.phase, pair.reason), (Phase.CLOSING, reason))
            other = ({CLIENT, BACKEND} - {lost}).pop()
            pair.lost(other)
            self.assertEqual(io.calls[-1], ("ended", reason, False))

    def test_badRest(self):
        """
        The rest of an ended stream that breaks the framing: protocol error.
        """
        pair, io = relaying(badRest=True)
        pair.streamEnded(CLIENT)
        self.assertEqual(io.calls[-1], ("ended", stats.PROTOCOL_ERROR, False))

    def test_problemAfterHalfClose(self):
        """
        Whatever ends the pair after one stream ended is the reason.
        """
        pair, io = relaying()
        pair.streamEnded(BACKEND)
        pair.abort(stats.IDLE_TIMEOUT)
        self.assertEqual(io.calls[-1], ("ended", stats.IDLE_TIMEOUT, False))


class ClosingTests(SynchronousTestCase):
    def test_reasonKept(self):
        """
        Once closing, nothing changes the reason; an abort only hurries the
        close.
        """
        pair, io = relaying(lazy=True)
        pair.lost(CLIENT)
        pair.protocolError()
        pair.streamEnded(BACKEND)
        pair.abort(stats.SHUTDOWN)
        self.assertEqual(io.calls[-1], ("close", frozenset({BACKEND}), True))
        pair.lost(BACKEND)
        self.assertEqual(io.calls[-1], ("ended", stats.CLIENT_CLOSED, False))

    def test_closedIsFinal(self):
        """
        After CLOSED, a side cannot be lost again; a late abort is ignored.
        """
        pair, io = relaying()
        pair.lost(CLIENT)
        self.assertEqual(pair.phase, Phase.CLOSED)
        pair.abort(stats.SHUTDOWN)
        self.assertRaises(IllegalEvent, pair.lost, CLIENT)
        self.assertEqual(
            [c for c in io.calls if c[0] == "ended"],
            [("ended", stats.CLIENT_CLOSED, False)],
        )


def timedPair(*steps, timeout=2.0):
    """
    A started pair whose preamble has C{timeout} seconds on a L{Clock}.
    """
    clock = Clock()
    recording = RecordingIO()
    pair = Pair(recording, steps, clock, timeout)
    recording.pair = pair
    pair.start()
    return pair, recording, clock


class DeadlineTests(SynchronousTestCase):
    """
    The preamble's one deadline (C{--handshake-timeout}, SPEC section 9).
    """

    def test_handshakeTimedOut(self):
        """
        A TLS handshake still under way at the deadline ends the pair
        C{handshake_timeout}, aborted, and counts as a failed handshake.
        """
        pair, io, clock = timedPair(TLS_HANDSHAKE)
        clock.advance(1.999)
        self.assertEqual(pair.phase, Phase.PREAMBLE)
        clock.advance(0.001)
        self.assertEqual(
            io.calls,
            [
                "handshakeFailed",
                "dropInput",
                ("close", frozenset({CLIENT}), True),
                ("ended", stats.HANDSHAKE_TIMEOUT, False),
            ],
        )

    def test_proxyHeaderTimedOut(self):
        """
        A PROXY header still incomplete at the deadline: the same reason,
        no TLS handshake failure counted.
        """
        pair, io, clock = timedPair(PROXY_HEADER, TLS_HANDSHAKE)
        clock.advance(2)
        self.assertNotIn("handshakeFailed", io.calls)
        self.assertEqual(io.calls[-1], ("ended", stats.HANDSHAKE_TIMEOUT, False))

    def test_oneDeadlineForAllSteps(self):
        """
        The deadline is for the whole preamble, not per step: a PROXY
        header done in 1.5 s leaves the handshake 0.5 s.
        """
        pair, io, clock = timedPair(PROXY_HEADER, TLS_HANDSHAKE)
        clock.advance(1.5)
        pair.stepDone(PROXY_HEADER)
        clock.advance(0.5)
        self.assertEqual(io.calls[0], "handshakeFailed")
        self.assertEqual(pair.reason, stats.HANDSHAKE_TIMEOUT)

    def test_newStepCovered(self):
        """
        A step any step adds (here: the first byte after a PROXY LOCAL
        header; a WebSocket upgrade alike) runs under the same deadline.
        """
        pair, io, clock = timedPair(PROXY_HEADER)
        pair.stepDone(PROXY_HEADER, then=(Step("upgrade", stats.CLIENT_CLOSED),))
        clock.advance(2)
        self.assertEqual(pair.reason, stats.HANDSHAKE_TIMEOUT)

    def test_cancelledWhenDone(self):
        """
        The preamble done in time: the deadline is gone, nothing fires.
        """
        pair, io, clock = timedPair(PROXY_HEADER, TLS_HANDSHAKE)
        pair.stepDone(PROXY_HEADER)
        pair.stepDone(TLS_HANDSHAKE)
        self.assertEqual(pair.phase, Phase.CONNECTING)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancelledWhenEnded(self):
        """
        A pair that ends in its preamble for another reason leaves no timer,
        and keeps that reason.
        """
        pair, io, clock = timedPair(TLS_HANDSHAKE)
        pair.abort(stats.IDLE_TIMEOUT)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(pair.reason, stats.IDLE_TIMEOUT)

    def test_lazyCloseKeepsReason(self):
        """
        Once the deadline ended the pair, a later timer or loss does not
        rename it.
        """
        clock = Clock()
        io = RecordingIO(lazy=True)
        pair = Pair(io, (TLS_HANDSHAKE,), clock, 2)
        io.pair = pair
        pair.start()
        clock.advance(2)
        pair.abort(stats.IDLE_TIMEOUT)
        pair.lost(CLIENT)
        self.assertEqual(io.calls[-1], ("ended", stats.HANDSHAKE_TIMEOUT, False))

    def test_off(self):
        """
        0 is no deadline; nor is there one without a preamble.
        """
        pair, io, clock = timedPair(TLS_HANDSHAKE, timeout=0)
        self.assertEqual(clock.getDelayedCalls(), [])
        pair, io, clock = timedPair()
        self.assertEqual(pair.phase, Phase.CONNECTING)
        self.assertEqual(clock.getDelayedCalls(), [])


class RefuseTests(SynchronousTestCase):
    """
    L{Pair.refuse}: admission's refusal once the real address is known.
    """

    def test_refused(self):
        """
        The pair ends at once, aborted, for the refusal's reason, marked as
        refused; no step is blamed, no backend is connected.
        """
        pair, io = makePair(PROXY_HEADER, TLS_HANDSHAKE)
        pair.refuse("per_source_limit")
        self.assertTrue(pair.refused)
        self.assertEqual(
            io.calls,
            [
                "dropInput",
                ("close", frozenset({CLIENT}), True),
                ("ended", "per_source_limit", False),
            ],
        )

    def test_deadlineCancelled(self):
        pair, io, clock = timedPair(PROXY_HEADER)
        pair.refuse("denied")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_onlyInPreamble(self):
        """
        Refusing is legal in PREAMBLE only, ignored once the pair has ended.
        """
        pair, io = makePair()
        self.assertRaises(IllegalEvent, pair.refuse, "denied")
        pair, io = makePair(PROXY_HEADER)
        pair.lost(CLIENT)
        pair.refuse("denied")
        self.assertFalse(pair.refused)
