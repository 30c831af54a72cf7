"""
The life of one client/backend pair, as named phases; no I/O.

A pair goes through these phases, in this order, and never back::

    PREAMBLE ──> CONNECTING ──> RELAYING ──> CLOSING ──> CLOSED
        │             │                        ^
        └─────────────┴────────────────────────┘

  - L{Phase.PREAMBLE}: the client's preamble is under way, one L{Step}
    after the other (an incoming PROXY header, a TLS handshake, the first
    byte after a PROXY C{LOCAL} header, a WebSocket upgrade). Nothing is
    connected yet.
  - L{Phase.CONNECTING}: every step is done; the backend is being
    connected and the client is not read.
  - L{Phase.RELAYING}: both connections are up and bytes flow both ways;
    either side may end its stream (a half-close) and the other goes on.
  - L{Phase.CLOSING}: the pair has ended, and its close reason is decided;
    nothing more is translated and the connections still open are closing.
  - L{Phase.CLOSED}: both connections are gone and the pair is reported.

Each event below is legal in the phases its docstring names. In CLOSING and
CLOSED most events are ignored on purpose (bytes and ends still arriving
from a side being closed); an event anywhere else is a bug and raises
L{IllegalEvent}. The close reason is set once, by the transition into
CLOSING, from the event that caused it; nothing overrides it afterwards.

The preamble has one deadline as a whole (SPEC section 9,
C{--handshake-timeout}): a timer started with the pair and cancelled by the
transition out of PREAMBLE, whichever it is. Every step, a new one
included, runs under it with no code of its own; when it fires, the pair
ends C{handshake_timeout} (counted as a failed TLS handshake too when that
is the step under way, as any end during that step is).

A client that admission refuses once its real address is known (behind a
PROXY header) is refused in PREAMBLE (L{Pair.refuse}): the pair ends for
the refusal's reason and is reported as refused, not closed
(L{Pair.refused}), since SPEC section 5 counts a refusal only as one.

The byte path (a read chunk, translated and written) is not an event here:
it runs as a direct call outside this machine, which only swaps it in and
out (L{PairIO.relay}, L{PairIO.dropInput}).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from gateway import stats


class Phase(Enum):
    """
    Where a pair is in its life (see the module docstring).
    """

    PREAMBLE = "preamble"
    CONNECTING = "connecting"
    RELAYING = "relaying"
    CLOSING = "closing"
    CLOSED = "closed"


class IllegalEvent(Exception):
    """
    An event arrived in a phase where it cannot happen: a bug in the caller.
    """


@dataclass(frozen=True)
class Step:
    """
    One step of a client's preamble, which must be done before its backend
    is connected.

    @ivar name: for logs and errors.
    @ivar leftReason: the close reason when the client leaves, or ends its
        stream, while this step is the one under way.
    @ivar handshake: whether a pair ending while this step is under way
        counts as a failed TLS handshake, whatever ended it.
    @ivar quiet: whether a pair ending while this step is under way is not
        worth an info log line (a load balancer's health check).
    """

    name: str
    leftReason: str
    handshake: bool = False
    quiet: bool = False


# Steps are listed outermost layer first; a step under way is always the
# first one not done, since an inner layer sees nothing before the outer one
# is done. A client that leaves during the PROXY header (a TCP health check
# that sends nothing) has only closed; one that leaves during the TLS
# handshake has failed it.
PROXY_HEADER = Step("PROXY header", stats.CLIENT_CLOSED)
TLS_HANDSHAKE = Step("TLS handshake", stats.TLS_ERROR, handshake=True)
# After a PROXY LOCAL header (HAProxy's health check): no backend until the
# client sends a byte.
FIRST_BYTE = Step("first byte", stats.CLIENT_CLOSED, quiet=True)
# A WebSocket client's HTTP upgrade request (SPEC section 10), inside TLS.
WEBSOCKET_UPGRADE = Step("WebSocket upgrade", stats.CLIENT_CLOSED)


class PairIO(Protocol):
    """
    What a L{Pair} has done by the connections it runs on (in
    L{gateway.proxy}, the client protocol).
    """

    def connectBackend(self) -> None:
        """
        Stop reading the client and start connecting a backend; report
        with L{Pair.backendConnected} or L{Pair.backendUnavailable}.
        """

    def abandonConnect(self) -> None:
        """
        Give up the backend connect under way, if one is: the gateway's
        own decision, not the backend's failure.
        """

    def relay(self) -> None:
        """
        The backend is connected: make each transport the other's producer,
        send what the client sent so far, and let the bytes flow.
        """

    def finishStream(self, side: str) -> None:
        """
        C{side} (L{stats.CLIENT} or L{stats.BACKEND}) ended its stream:
        deliver the rest of it and shut the other side's write half (once
        the backend is connected). When the rest breaks the framing, count
        and log it and call L{Pair.protocolError} instead.
        """

    def dropInput(self) -> None:
        """
        Translate nothing more from either side.
        """

    def closeTransports(self, sides: frozenset[str], abort: bool) -> None:
        """
        Close the connections of C{sides}: sending what is written first,
        or at once when C{abort}.
        """

    def handshakeFailed(self) -> None:
        """
        Count a failed TLS handshake.
        """

    def ended(self, reason: str, quiet: bool) -> None:
        """
        Both connections are gone: report the pair, closed for C{reason};
        at debug level only when C{quiet}.
        """


_OPEN = (Phase.PREAMBLE, Phase.CONNECTING, Phase.RELAYING)
_FLOWING = (Phase.CONNECTING, Phase.RELAYING)
_DONE = (Phase.CLOSING, Phase.CLOSED)
_SIDE_CLOSED = {stats.CLIENT: stats.CLIENT_CLOSED, stats.BACKEND: stats.BACKEND_CLOSED}


class Pair:
    """
    The phases of one client/backend pair, and the close reason.

    @ivar phase: the current L{Phase}.
    @ivar steps: the preamble steps not done yet, the one under way first.
    @ivar reason: the close reason, from the moment the pair enters
        L{Phase.CLOSING}; None before.
    @ivar connected: the sides whose connection is up (the client from the
        start, the backend from L{backendConnected} on), until each is lost.
    @ivar endedFirst: the side whose stream ended first, if one has.
    @ivar refused: whether the pair ended by L{refuse} (admission, a
        WebSocket origin), to be reported as a refusal rather than a close.
    """

    # One per open connection: slots and tuples keep it small.
    __slots__ = (
        "io",
        "phase",
        "steps",
        "connected",
        "reason",
        "endedFirst",
        "refused",
        "_quiet",
        "_clock",
        "_handshakeTimeout",
        "_deadline",
    )

    def __init__(
        self,
        io: PairIO,
        steps: tuple[Step, ...] = (),
        clock: IReactorTime | None = None,
        handshakeTimeout: float = 0,
    ) -> None:
        """
        @param clock: schedules the preamble's deadline; none without it.
        @param handshakeTimeout: seconds the whole preamble may take, from
            L{start}; C{0} is no limit.
        """
        self.io = io
        self.phase = Phase.PREAMBLE
        self.steps = steps
        self.connected: tuple[str, ...] = (stats.CLIENT,)
        self.reason: str | None = None
        self.endedFirst: str | None = None
        self.refused = False
        self._quiet = False
        self._clock = clock
        self._handshakeTimeout = handshakeTimeout
        self._deadline: IDelayedCall | None = None

    def start(self) -> None:
        """
        The client is connected: with no preamble, connect its backend;
        with one, start its deadline.
        """
        self._expect("start", (Phase.PREAMBLE,), ())
        if not self.steps:
            self._connect()
        elif self._clock is not None and self._handshakeTimeout > 0:
            self._deadline = self._clock.callLater(
                self._handshakeTimeout, self._preambleExpired
            )

    def _preambleExpired(self) -> None:
        self._deadline = None
        if self.phase is Phase.PREAMBLE:
            self._close(stats.HANDSHAKE_TIMEOUT, abort=True)

    def _preambleOver(self) -> None:
        # Every way out of PREAMBLE passes here: the deadline goes with it.
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    # Preamble

    def stepDone(self, step: Step, then: tuple[Step, ...] = ()) -> None:
        """
        C{step}, under way, is done; C{then} are steps it adds at the end.
        The last one done starts the connect. PREAMBLE only.
        """
        if self._expect("stepDone", (Phase.PREAMBLE,), _DONE):
            return
        if not self.steps or self.steps[0] != step:
            raise IllegalEvent(f"{step.name} done while {self._underWay()}")
        self.steps = self.steps[1:] + then
        if not self.steps:
            self._connect()

    def refuse(self, reason: str, abort: bool = True) -> None:
        """
        The gateway refuses the client before its backend is connected:
        admission, once the client's real address is known, or a WebSocket
        origin not allowed. PREAMBLE: the pair ends for
        C{reason} (a C{gateway_connections_rejected_total} reason) and
        L{refused} is set, so that it is reported as refused, not closed
        (SPEC section 5 counts a refusal only as one); no preamble step is
        blamed.

        @param abort: whether what was written to the client is dropped;
            False sends it first (a WebSocket refusal's HTTP response).
        """
        if self._expect("refuse", (Phase.PREAMBLE,), _DONE):
            return
        self.refused = True
        self._close(reason, abort=abort)

    def _connect(self) -> None:
        self._preambleOver()
        self.phase = Phase.CONNECTING
        self.io.connectBackend()

    # Backend connect

    def backendConnected(self) -> bool:
        """
        The backend connection is up. CONNECTING: relay. Once the pair has
        ended, the backend is not wanted.

        @return: whether the backend is part of the pair; if not, the caller
            closes it.
        """
        if self._expect("backendConnected", (Phase.CONNECTING,), _DONE):
            return False
        self.phase = Phase.RELAYING
        self.connected = (stats.CLIENT, stats.BACKEND)
        self.io.relay()
        return True

    def backendUnavailable(self) -> None:
        """
        No backend could be connected. CONNECTING: the pair ends,
        C{backend_unavailable}.
        """
        if self._expect("backendUnavailable", (Phase.CONNECTING,), _DONE):
            return
        self._close(stats.BACKEND_UNAVAILABLE, connectOver=True)

    # Relaying

    def streamEnded(self, side: str) -> None:
        """
        C{side} shut its write half. PREAMBLE (the client): the pair ends
        for the step under way. CONNECTING, RELAYING: its rest is delivered
        and the other side's write half shut; once both streams have ended,
        the pair ends for the side that ended first.
        """
        if self._expect("streamEnded", _OPEN, _DONE):
            return
        if self.phase is Phase.PREAMBLE:
            self._close(self.steps[0].leftReason)
            return
        bothEnded = self.endedFirst not in (None, side)
        if self.endedFirst is None:
            self.endedFirst = side
        self.io.finishStream(side)
        # Delivering the rest may have ended the pair (a protocol error, a
        # side that cannot half-close closing at once).
        if bothEnded and self.phase in _FLOWING:
            self._close(_SIDE_CLOSED[self.endedFirst])

    def protocolError(self) -> None:
        """
        A side broke the framing (counted and logged by the caller).
        PREAMBLE, CONNECTING, RELAYING: the pair ends, C{protocol_error}.
        """
        if self._expect("protocolError", _OPEN, _DONE):
            return
        self._close(stats.PROTOCOL_ERROR)

    def abort(self, reason: str) -> None:
        """
        The gateway ends the pair now (a timer, the end of a drain),
        dropping what is not sent yet. Open phases: the pair ends for
        C{reason}. CLOSING: the close is hurried; the reason stays.
        """
        if self.phase in _OPEN:
            self._close(reason, abort=True)
        elif self.phase is Phase.CLOSING:
            self.io.closeTransports(frozenset(self.connected), abort=True)

    def lost(self, side: str) -> None:
        """
        C{side}'s connection is gone. Open phases: the pair ends, for the
        step under way (PREAMBLE), for the client leaving (CONNECTING), for
        the side that ended its stream first or else this one (RELAYING).
        Once both are gone: CLOSED.
        """
        if self.phase is Phase.CLOSED:
            raise IllegalEvent(f"{side} lost after the pair was closed")
        self.connected = tuple(s for s in self.connected if s != side)
        if self.phase is Phase.PREAMBLE:
            self._close(self.steps[0].leftReason)
        elif self.phase in _FLOWING:
            self._close(_SIDE_CLOSED[self.endedFirst or side])
        elif not self.connected:
            self._finish()

    # The one way out

    def _close(
        self, reason: str, abort: bool = False, connectOver: bool = False
    ) -> None:
        if self.phase is Phase.PREAMBLE:
            self._preambleOver()
            step = self.steps[0]
            self._quiet = step.quiet
            if step.handshake and not self.refused:
                self.io.handshakeFailed()
        elif self.phase is Phase.CONNECTING and not connectOver:
            self.io.abandonConnect()
        self.phase = Phase.CLOSING
        self.reason = reason
        self.io.dropInput()
        if self.connected:
            # A transport may report its loss at once, finishing the pair.
            self.io.closeTransports(frozenset(self.connected), abort)
        if self.phase is Phase.CLOSING and not self.connected:
            self._finish()

    def _finish(self) -> None:
        self.phase = Phase.CLOSED
        assert self.reason is not None
        self.io.ended(self.reason, self._quiet)

    def _expect(
        self, event: str, legal: tuple[Phase, ...], ignored: tuple[Phase, ...]
    ) -> bool:
        """
        @return: True when C{event} is to be ignored in this phase.
        @raise IllegalEvent: when it cannot happen in this phase.
        """
        if self.phase in legal:
            return False
        if self.phase in ignored:
            return True
        raise IllegalEvent(f"{event} while {self.phase.value}")

    def _underWay(self) -> str:
        return self.steps[0].name if self.steps else "no step is under way"
