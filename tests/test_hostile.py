"""
Hostile input against a live gateway: hypothesis throws random byte
streams, random chunking and random endings (half-close, close, reset) at a
real gateway process, from the client side and from the backend side.

For every connection: the process survives; every complete message is
delivered exactly once and in order (all of them when the stream ended
cleanly, a prefix of them when it was reset); or, when the stream broke the
framing, the messages before the offending one are delivered and the pair
is closed with a counted protocol error.

The suite runs a few examples (C{HYPOTHESIS_PROFILE=suite}, the default);
C{make fuzz} runs many more (C{HYPOTHESIS_PROFILE=fuzz}).

Hypothesis drives blocking sockets from a worker thread while the reactor
thread runs the test's backend; they meet through C{threading.Event}s set
by the reactor. Clients are matched with their backend connections through
the PROXY header the gateway sends (C{--backend-proxy-protocol v1}), and
with the gateway's C{closed} log event through their port.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
from collections.abc import Callable
from traceback import format_exception

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, threads
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.e2e import DEADLINE, backendOption, exchange, metrics, runGateway, value
from tests.tlsclient import rawReceiveAll

log = Logger(namespace="tests.hostile")

# Small, so that random streams often cross it.
LIMIT = 64
LISTENER = "tcp:0"
COMMON = dict(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("suite", max_examples=15, **COMMON)
settings.register_profile("fuzz", max_examples=2000, **COMMON)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

_CLOSED = re.compile(rb"closed tcp:0 127\.0\.0\.1:(\d+) via \S+ after .*, (\w+)\n")
_PROXY = re.compile(rb"PROXY TCP4 \S+ \S+ (\d+) \d+\r\n")

ENDINGS = ("half", "close", "reset")


class ClosedEvents:
    """
    The gateway's C{closed} events, by client port, for threads to wait on.
    """

    def __init__(self, gateway) -> None:
        self.reasons: dict[int, bytes] = {}
        self._events: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        gateway.followLines(self._line)

    def _line(self, line: bytes) -> None:
        match = _CLOSED.search(line)
        if match is not None:
            port = int(match.group(1))
            with self._lock:
                self.reasons[port] = match.group(2)
                self._event(port).set()

    def _event(self, port: int) -> threading.Event:
        return self._events.setdefault(port, threading.Event())

    def forget(self, port: int) -> None:
        """
        Forget an earlier client's end on C{port}, which a new one now uses.
        """
        with self._lock:
            self._events.pop(port, None)
            self.reasons.pop(port, None)

    def wait(self, port: int) -> bytes:
        """
        In a thread: the close reason of the client on C{port}.
        """
        with self._lock:
            event = self._event(port)
        if not event.wait(DEADLINE):
            raise AssertionError(f"the gateway never closed client port {port}")
        return self.reasons[port]


@implementer(IHalfCloseableProtocol)
class RecordingBackend(Protocol):
    """
    An int32 backend that reads the gateway's PROXY header, records the
    messages of each client port, and echoes them in upper case.
    """

    def connectionMade(self) -> None:
        self.buffer = b""
        self.port: int | None = None
        self.messages: list[bytes] = []
        self.done = threading.Event()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.port is None:
            match = _PROXY.match(self.buffer)
            if match is None:
                return
            self.port = int(match.group(1))
            self.factory.byPort[self.port] = self
            self.buffer = self.buffer[match.end() :]
        replies = []
        while len(self.buffer) >= 4:
            (length,) = struct.unpack_from(">I", self.buffer)
            if len(self.buffer) < 4 + length:
                break
            payload = self.buffer[4 : 4 + length]
            self.buffer = self.buffer[4 + length :]
            self.messages.append(payload)
            replies.append(struct.pack(">I", length) + payload.upper())
        self.transport.write(b"".join(replies))

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        self.done.set()


@implementer(IHalfCloseableProtocol)
class ScriptedBackend(Protocol):
    """
    A backend that, once the gateway's PROXY header names its client,
    plays the script the test thread registered for that client's port.
    """

    def connectionMade(self) -> None:
        self.buffer = b""
        self.played = False

    def dataReceived(self, data: bytes) -> None:
        if self.played:
            return
        self.buffer += data
        match = _PROXY.match(self.buffer)
        if match is not None:
            self.played = True
            self.factory.arrived(int(match.group(1)), self)

    def play(self, chunks: list[bytes], ending: str) -> None:
        """
        Write each chunk in a reactor turn of its own, in order, then end;
        stop if the gateway has closed the connection meanwhile.
        """
        if not self.transport.connected:
            return
        if chunks:
            self.transport.write(chunks[0])
            reactor.callLater(0, self.play, chunks[1:], ending)
        else:
            self.end(ending)

    def end(self, ending: str) -> None:
        if ending == "half":
            self.transport.loseWriteConnection()
        elif ending == "close":
            self.transport.loseConnection()
        else:
            resetSocket(self.transport.getHandle())
            self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class ScriptedFactory(Factory):
    protocol = ScriptedBackend
    noisy = False

    def __init__(self) -> None:
        self.scripts: dict[int, tuple[list[bytes], str]] = {}
        self.waiting: dict[int, ScriptedBackend] = {}

    def arrived(self, port: int, backend: ScriptedBackend) -> None:
        if port in self.scripts:
            backend.play(*self.scripts.pop(port))
        else:
            self.waiting[port] = backend

    def register(self, port: int, chunks: list[bytes], ending: str) -> None:
        if port in self.waiting:
            self.waiting.pop(port).play(chunks, ending)
        else:
            self.scripts[port] = (chunks, ending)


def clientSocket(port: int, forget: Callable[[int], None]) -> tuple:
    """
    A socket connected to the gateway on C{port}, and its own port.

    It is bound before it connects so that what is known of an earlier
    connection from the same port (ports are reused at once after a
    reset) can be forgotten first, by C{forget}.
    """
    sock = socket.socket()
    sock.settimeout(DEADLINE)
    sock.bind(("127.0.0.1", 0))
    localPort = sock.getsockname()[1]
    forget(localPort)
    sock.connect(("127.0.0.1", port))
    return sock, localPort


def resetSocket(sock: socket.socket) -> None:
    """
    Make the next close of C{sock} send a TCP RST.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    C{data} cut at the given offsets (taken modulo its length).
    """
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


def expectedLines(data: bytes) -> tuple[list[bytes], bool]:
    """
    What an lf stream that ends cleanly stands for, worked out here
    independently of the gateway's codecs: its messages (the unterminated
    last line included), and whether a line over LIMIT stops it first.
    """
    *lines, rest = data.split(b"\n")
    messages = []
    for line in [*lines, rest]:
        if len(line) > LIMIT:
            return messages, True
        messages.append(line)
    if not rest:
        messages.pop()
    return messages, False


def expectedFrames(data: bytes) -> tuple[list[bytes], str | None]:
    """
    The same for an int32 stream bound for an lf client: its messages, and
    what stops it first: C{"too_long"} (a length over LIMIT),
    C{"unencodable"} (a payload with a newline), C{"truncated"} (the stream
    ends inside a frame), or C{None}.
    """
    messages = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            return messages, "truncated"
        (length,) = struct.unpack_from(">I", data, offset)
        if length > LIMIT:
            return messages, "too_long"
        payload = data[offset + 4 : offset + 4 + length]
        if len(payload) < length:
            return messages, "truncated"
        if b"\n" in payload:
            return messages, "unencodable"
        messages.append(payload)
        offset += 4 + length
    return messages, None


async def runExamples(examples: Callable[[], None]) -> None:
    """
    Run hypothesis' examples in a thread, so that the reactor serves the
    backends meanwhile. Several distinct failures are shown in full (trial
    would show only that there were several).
    """
    try:
        await threads.deferToThread(examples)
    except BaseExceptionGroup as group:
        raise AssertionError(
            "\n\n".join("".join(format_exception(e)) for e in group.exceptions)
        )


def isPrefix(part: list[bytes], whole: list[bytes]) -> bool:
    return whole[: len(part)] == part


lineStreams = st.lists(
    st.one_of(
        st.binary(max_size=12),
        st.just(b"\n"),
        st.sampled_from([b"\r\n", b"x" * LIMIT, b"y" * (LIMIT + 1), b"\n\n"]),
    ),
    max_size=24,
).map(b"".join)

frameStreams = st.lists(
    st.one_of(
        st.binary(max_size=LIMIT).map(lambda p: struct.pack(">I", len(p)) + p),
        st.binary(max_size=6),
        st.just(struct.pack(">I", LIMIT + 1)),
    ),
    max_size=12,
).map(b"".join)


class HostileTests(TestCase):
    async def gateway(self, backend: Factory, extra: list[str] = ()) -> tuple:
        listening = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        gateway = await runGateway(
            self,
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                *backendOption(listening.getHost().port),
                "--backend-proxy-protocol",
                "v1",
                "--max-message-size",
                str(LIMIT),
                *extra,
            ],
        )
        return gateway, ClosedEvents(gateway)

    def survived(self, gateway) -> None:
        """
        The gateway is still running and never logged an unhandled error.
        """
        self.assertIsNone(gateway.exitCode)
        self.assertNotIn("Traceback", gateway.log())
        self.assertNotIn("Unhandled", gateway.log())

    async def test_hostileClients(self):
        """
        Random lines, random chunks, random endings from clients.
        """
        backends = Factory.forProtocol(RecordingBackend)
        backends.byPort = {}
        gateway, closed = await self.gateway(backends)
        tally = {"examples": 0, "errors": 0}

        def forget(port: int) -> None:
            closed.forget(port)
            backends.byPort.pop(port, None)

        @PROFILE
        @given(
            data=lineStreams,
            cuts=st.lists(st.integers(0)),
            ending=st.sampled_from(ENDINGS),
        )
        def example(data, cuts, ending):
            tally["examples"] += 1
            sock, port = clientSocket(gateway.port(), forget)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                for piece in pieces(data, cuts):
                    sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                pass
            replies = b""
            if ending == "half":
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                replies = rawReceiveAll(sock)
            elif ending == "reset":
                resetSocket(sock)
            sock.close()
            reason = closed.wait(port)
            backend = backends.byPort.get(port)
            delivered = []
            if backend is not None:
                assert backend.done.wait(DEADLINE), "backend never closed"
                delivered = backend.messages
            expected, broken = expectedLines(data)
            if broken and reason == b"protocol_error":
                tally["errors"] += 1
            if ending != "half":
                # Closed or reset at once: whatever the gateway had read by
                # then, in order, once. (A close with replies unread is a
                # reset too.)
                assert isPrefix(delivered, expected), (delivered, expected)
            else:
                # All of it (up to the offending line) is delivered, and
                # the pair ends for the right reason.
                assert delivered == expected, (delivered, expected, reason)
                assert reason == (b"protocol_error" if broken else b"client_closed")
            if ending == "half":
                answers = b"".join(m.upper() + b"\n" for m in delivered)
                assert answers.startswith(replies), (replies, answers)
                if not broken:
                    assert replies == answers, (replies, answers)

        await runExamples(example)
        samples = await metrics(gateway.ports["metrics"])
        counted = value(
            samples,
            "gateway_protocol_errors_total",
            listener=LISTENER,
            peer="client",
            reason="too_long",
        )
        self.assertEqual(counted, tally["errors"])
        self.survived(gateway)
        self.assertEqual(await exchange(gateway.port(), b"alive\n"), b"ALIVE\n")
        log.info(
            "hostile: clients, {examples} streams, {errors} protocol errors",
            **tally,
        )

    async def test_hostileBackend(self):
        """
        Random frames, random chunks, random endings from the backend.
        """
        backends = ScriptedFactory()
        gateway, closed = await self.gateway(backends)
        tally = {"examples": 0}
        errors: dict[str, int] = {}

        @PROFILE
        @given(
            data=frameStreams,
            cuts=st.lists(st.integers(0)),
            ending=st.sampled_from(ENDINGS),
        )
        def example(data, cuts, ending):
            tally["examples"] += 1
            sock, port = clientSocket(gateway.port(), closed.forget)
            reactor.callFromThread(backends.register, port, pieces(data, cuts), ending)
            received = rawReceiveAll(sock)
            sock.close()
            reason = closed.wait(port)
            expected, error = expectedFrames(data)
            lines = received.split(b"\n")
            assert lines.pop() == b"", received
            if ending == "reset":
                assert isPrefix(lines, expected), (lines, expected)
                return
            assert lines == expected, (lines, expected)
            # A stream cut inside a frame is found out when the backend
            # closes, and is a protocol error like any other broken frame.
            if error is None:
                assert reason == b"backend_closed", (reason, data, cuts, ending)
            else:
                assert reason == b"protocol_error", (reason, data, cuts, ending)
            if error is not None:
                errors[error] = errors.get(error, 0) + 1

        await runExamples(example)
        self.survived(gateway)
        samples = await metrics(gateway.ports["metrics"])
        counted = sum(
            value(
                samples,
                "gateway_protocol_errors_total",
                listener=LISTENER,
                peer="backend",
                reason=error,
            )
            for error in ("too_long", "unencodable", "truncated")
        )
        # The reason names what broke the read chunk first (a length over
        # the limit is found before a newline in an earlier payload of the
        # same chunk), so only the total is compared. Reset streams may add
        # errors the gateway read before the reset: at least these.
        self.assertGreaterEqual(counted, sum(errors.values()))

        def stillServes() -> bytes:
            sock = socket.create_connection(("127.0.0.1", gateway.port()), DEADLINE)
            port = sock.getsockname()[1]
            script = [struct.pack(">I", 5) + b"alive"]
            reactor.callFromThread(backends.register, port, script, "half")
            with sock:
                return rawReceiveAll(sock)

        self.assertEqual(await threads.deferToThread(stillServes), b"alive\n")
        log.info(
            "hostile: backend, {examples} streams, protocol errors {errors}",
            examples=tally["examples"],
            errors=errors,
        )
