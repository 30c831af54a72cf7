"""
Tests for L{gateway.codec.websocket}: the upgrade, client frames in every
shape and chunking, server frames, close codes, and a real C{websockets}
client talking to a Twisted server built on the module.

Client frames are built with C{websockets}' own serializer, masked as a
client masks them; the malformed ones are its output with one header bit
changed, the bit named next to it (RFC 6455 section 5.2).
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import threads
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import (
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidStatus,
)
from websockets.frames import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    Close,
    Frame,
    Opcode,
)
from websockets.http11 import Response
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from gateway.codec._base import MALFORMED, TOO_LONG, TRUNCATED, UNENCODABLE
from gateway.codec.websocket import (
    CLOSE_CODES,
    DENIED,
    GOING_AWAY,
    INTERNAL_ERROR,
    INVALID_DATA,
    MAX_REQUEST_SIZE,
    MESSAGE_TOO_BIG,
    NORMAL_CLOSURE,
    PROTOCOL_ERROR,
    Accepted,
    ClientClosed,
    ClientWebSocket,
    Refused,
    WebSocketError,
    WebSocketUpgrade,
)
from tests.e2e import DEADLINE, BackendFactory, listenUntilClosed

# Small enough that hypothesis reaches it, above 125 so that a control frame
# fits inside the room a fragmented message leaves.
LIMIT = 300

# Payload lengths at each edge of the three length encodings: 7 bits up to
# 125, 16 bits from 126 to 65535, 64 bits from 65536.
SHAPES = [0, 1, 125, 126, 127, 65535, 65536, 70000]
BIG = 70000


def clientFrame(opcode: Opcode, payload: bytes = b"", fin: bool = True) -> bytes:
    """
    One frame as a client sends it: masked with a random key.
    """
    return Frame(opcode, payload, fin).serialize(mask=True)


def withFirstByte(frame: bytes, first: int) -> bytes:
    return bytes([first]) + frame[1:]


def serverFrames(data: bytes) -> list[Frame]:
    """
    Parse server frames the way a client does, all of them complete.
    """
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError(f"incomplete server frame in {data!r}")
    return frames


def closeOf(data: bytes) -> Close:
    """
    The code and reason of the Close frame that ends C{data}.
    """
    last = serverFrames(data)[-1]
    assert last.opcode is CLOSE, last
    return Close.parse(last.data)


def feedInPieces(codec: ClientWebSocket, pieces: list[bytes]):
    """
    Feed every piece; gather the messages and replies, and the one end.
    """
    messages: list[bytes] = []
    reply = b""
    ends = []
    for piece in pieces:
        got, more, end = codec.feed(piece)
        messages += got
        reply += more
        if end is not None:
            ends.append(end)
    assert len(ends) <= 1, ends
    return messages, reply, ends[0] if ends else None


def cut(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def chunkings(data: bytes):
    """
    Every chunk size from one byte to the whole, and every split in two.
    """
    for size in range(1, len(data) + 1):
        yield cut(data, size)
    for point in range(1, len(data)):
        yield [data[:point], data[point:]]


class FrameShapeTests(SynchronousTestCase):
    """
    Client frames of every shape decode to their messages, however they are
    chunked.
    """

    def test_lengths(self):
        """
        Payloads at every edge of the 7-, 16- and 64-bit lengths, binary and
        text, fed whole, byte by byte and in sizes around the edges.
        """
        for length in SHAPES:
            for opcode in (BINARY, TEXT):
                payload = b"x" * length
                data = clientFrame(opcode, payload) + clientFrame(BINARY, b"after")
                for size in (1, 2, 3, 7, 125, 126, 4096, 65536, len(data)):
                    codec = ClientWebSocket(BIG)
                    self.assertEqual(
                        feedInPieces(codec, cut(data, size)),
                        ([payload, b"after"], b"", None),
                        (length, opcode, size),
                    )

    def test_everyChunking(self):
        """
        A stream of short, empty, fragmented and text messages with pings
        between fragments gives the same messages and pongs in every
        chunking, byte by byte included.
        """
        data = b"".join(
            [
                clientFrame(BINARY, b""),
                clientFrame(TEXT, "h\u00e9".encode()),
                clientFrame(BINARY, b"fr", fin=False),
                clientFrame(PING, b"p1"),
                clientFrame(CONT, b"ag", fin=False),
                clientFrame(PONG, b"unsolicited"),
                clientFrame(CONT, b"ment"),
                clientFrame(TEXT, b"", fin=False),
                clientFrame(CONT, b""),
                clientFrame(PING, b""),
                clientFrame(BINARY, b"\x00\xff" * 70),
            ]
        )
        expected = (
            [b"", "h\u00e9".encode(), b"fragment", b"", b"\x00\xff" * 70],
            serverFrame(PONG, b"p1") + serverFrame(PONG, b""),
            None,
        )
        for pieces in chunkings(data):
            self.assertEqual(
                feedInPieces(ClientWebSocket(LIMIT), pieces), expected, len(pieces)
            )

    def test_utf8AcrossFragmentsAndReads(self):
        """
        Multi-byte characters cut between fragments, at every byte, and fed
        at every chunk size, are valid text.
        """
        text = "a\u20ac\U0001d11e\u00e9".encode()
        for point in range(len(text) + 1):
            data = clientFrame(TEXT, text[:point], fin=False) + clientFrame(
                CONT, text[point:]
            )
            for pieces in chunkings(data):
                self.assertEqual(
                    feedInPieces(ClientWebSocket(LIMIT), pieces),
                    ([text], b"", None),
                    point,
                )

    def test_manyFragments(self):
        """
        A message of one-byte fragments is one message.
        """
        payload = b"fragments"
        data = clientFrame(BINARY, payload[:1], fin=False)
        for byte in payload[1:-1]:
            data += clientFrame(CONT, bytes([byte]), fin=False)
        data += clientFrame(CONT, payload[-1:])
        self.assertEqual(ClientWebSocket(LIMIT).feed(data), ([payload], b"", None))

    def test_firstFramesAfterRequest(self):
        """
        One chunk holding the upgrade request and frames: the upgrade hands
        the frames on, and they decode.
        """
        frames = clientFrame(BINARY, b"one") + clientFrame(TEXT, b"two")
        outcome = WebSocketUpgrade().feed(upgradeRequest() + frames)
        self.assertIsInstance(outcome, Accepted)
        self.assertEqual(outcome.extra, frames)
        self.assertEqual(
            ClientWebSocket(LIMIT).feed(outcome.extra), ([b"one", b"two"], b"", None)
        )


def serverFrame(opcode: Opcode, payload: bytes) -> bytes:
    return Frame(opcode, payload).serialize(mask=False)


@st.composite
def clientStreams(draw):
    """
    A stream of client frames: (its bytes, its messages, its pongs' bytes).
    """
    frames = []
    messages = []
    pongs = b""
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            payload = draw(st.text(max_size=40)).encode()
            opcode = TEXT
        else:
            payload = draw(st.binary(max_size=LIMIT))
            opcode = BINARY
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        pieces = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]
        for index, piece in enumerate(pieces):
            frameOpcode = opcode if index == 0 else CONT
            frames.append(clientFrame(frameOpcode, piece, index == len(pieces) - 1))
            if draw(st.booleans()):
                ping = draw(st.binary(max_size=125))
                frames.append(clientFrame(PING, ping))
                pongs += serverFrame(PONG, ping)
        messages.append(payload)
    return b"".join(frames), messages, pongs


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(stream=clientStreams(), cuts=st.lists(st.integers(0), max_size=10))
    def test_clientFrames(self, stream, cuts):
        """
        Messages built by websockets' client-side serializer, fragmented at
        random, pings between fragments, cut into random reads, come out
        whole and in order; every ping gets its pong.
        """
        data, messages, pongs = stream
        points = sorted({c % (len(data) + 1) for c in cuts})
        pieces = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
        self.assertEqual(
            feedInPieces(ClientWebSocket(LIMIT), pieces), (messages, pongs, None)
        )

    @settings(max_examples=200, deadline=None)
    @given(
        messages=st.lists(
            st.one_of(st.binary(max_size=200), st.sampled_from([b"x" * 70000])),
            max_size=8,
        ),
        messageType=st.sampled_from(["binary", "text"]),
    )
    def test_serverFrames(self, messages, messageType):
        """
        Backend messages become one buffer of unmasked frames, one final
        frame each, of the configured type, that websockets' client-side
        parser reads back.
        """
        if messageType == "text":
            messages = [m.decode("utf-8", "replace").encode() for m in messages]
        frames = serverFrames(ClientWebSocket(LIMIT, messageType).encode(messages))
        opcode = TEXT if messageType == "text" else BINARY
        self.assertEqual(
            [(f.opcode, f.fin, f.data) for f in frames],
            [(opcode, True, m) for m in messages],
        )

    def test_headersAreWebsockets(self):
        """
        The short frames' headers, looked up by length, are byte for byte
        what websockets serializes, at every length and on each side of the
        edges where the lookup stops.
        """
        for messageType, opcode in [("binary", BINARY), ("text", TEXT)]:
            codec = ClientWebSocket(BIG, messageType)
            for length in [*range(126), 126, 127, 65535, 65536]:
                payload = b"y" * length
                self.assertEqual(
                    codec.encode([payload]), serverFrame(opcode, payload), length
                )
            mixed = [b"a", b"b" * 200, b"", b"c" * 125, b"d" * 126]
            self.assertEqual(
                codec.encode(mixed), b"".join(serverFrame(opcode, m) for m in mixed)
            )

    def test_encodeNothing(self):
        self.assertEqual(ClientWebSocket(LIMIT).encode([]), b"")


class BadFrameTests(SynchronousTestCase):
    """
    Each way a client breaks RFC 6455 ends with its close code and reason,
    in a typed error and in the Close frame that the reply ends with; the
    messages before it are kept, and nothing after it is read.
    """

    def assertFails(self, bad: bytes, code: int, reason: str, limit: int = LIMIT):
        good = clientFrame(BINARY, b"good") + clientFrame(PING, b"p")
        later = clientFrame(BINARY, b"later")
        data = good + bad + later
        for size in (len(data), 1, 5):
            codec = ClientWebSocket(limit)
            messages, reply, end = feedInPieces(codec, cut(data, size))
            self.assertIsInstance(end, WebSocketError)
            self.assertEqual(
                (messages, end.closeCode, end.reason), ([b"good"], code, reason)
            )
            if size == len(data):
                # The error carries the messages of its own chunk.
                self.assertEqual(end.messages, [b"good"])
            frames = serverFrames(reply)
            self.assertEqual(frames[0].opcode, PONG)
            self.assertEqual(closeOf(reply).code, code)
            self.assertEqual(codec.feed(later), ([], b"", None))
            self.assertTrue(codec.closeSent)
        return end

    def test_unmasked(self):
        """
        A client's frame must be masked (section 5.1).
        """
        unmasked = Frame(BINARY, b"x").serialize(mask=False)
        self.assertFails(unmasked, PROTOCOL_ERROR, MALFORMED)

    def test_reservedBits(self):
        """
        RSV1, RSV2 and RSV3 (0x40, 0x20, 0x10) must be 0: no extension.
        """
        frame = clientFrame(BINARY, b"x")
        for bit in (0x40, 0x20, 0x10):
            self.assertFails(
                withFirstByte(frame, frame[0] | bit), PROTOCOL_ERROR, MALFORMED
            )

    def test_badOpcodes(self):
        """
        Opcodes 3 to 7 and 0xB to 0xF are reserved.
        """
        frame = clientFrame(BINARY, b"x")
        for opcode in [*range(3, 8), *range(0xB, 0x10)]:
            self.assertFails(
                withFirstByte(frame, 0x80 | opcode), PROTOCOL_ERROR, MALFORMED
            )

    def test_controlFrameTooLong(self):
        """
        A control frame carries at most 125 bytes (section 5.5).
        """
        frame = clientFrame(BINARY, b"x" * 126)
        self.assertFails(withFirstByte(frame, 0x80 | PING), PROTOCOL_ERROR, MALFORMED)

    def test_fragmentedControlFrame(self):
        """
        A control frame must not be fragmented: its FIN bit (0x80) is set.
        """
        for opcode in (PING, PONG, CLOSE):
            frame = clientFrame(opcode, b"")
            self.assertFails(
                withFirstByte(frame, frame[0] & 0x7F), PROTOCOL_ERROR, MALFORMED
            )

    def test_continuationWithoutStart(self):
        self.assertFails(clientFrame(CONT, b"x"), PROTOCOL_ERROR, MALFORMED)

    def test_newMessageInsideFragmented(self):
        self.assertFails(
            clientFrame(BINARY, b"a", fin=False) + clientFrame(TEXT, b"b"),
            PROTOCOL_ERROR,
            MALFORMED,
        )

    def test_closeInsideFragmented(self):
        """
        A Close between the fragments of a message leaves it incomplete.
        """
        self.assertFails(
            clientFrame(BINARY, b"a", fin=False) + clientFrame(CLOSE, b""),
            PROTOCOL_ERROR,
            MALFORMED,
        )

    def test_badCloseFrames(self):
        """
        A Close payload of one byte, a close code a peer may not send, and a
        reason that is not UTF-8 (sections 5.5.1, 7.4).
        """
        self.assertFails(clientFrame(CLOSE, b"\x03"), PROTOCOL_ERROR, MALFORMED)
        for code in (999, 1004, 1005, 1006, 1015, 2000, 5000):
            self.assertFails(
                clientFrame(CLOSE, struct.pack("!H", code)), PROTOCOL_ERROR, MALFORMED
            )
        self.assertFails(
            clientFrame(CLOSE, struct.pack("!H", 1000) + b"\xff"),
            INVALID_DATA,
            MALFORMED,
        )

    def test_invalidText(self):
        """
        Text that is not UTF-8 (section 8.1): a bad byte, an overlong form,
        a surrogate, a sequence cut by the end of the message.
        """
        for bad in (b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82"):
            self.assertFails(clientFrame(TEXT, b"ok" + bad), INVALID_DATA, MALFORMED)

    def test_invalidTextAcrossFragments(self):
        """
        Fragments each fine alone may not make valid text together, and a
        truncated sequence at the end of the last fragment is invalid.
        """
        self.assertFails(
            clientFrame(TEXT, b"\xe2\x82", fin=False) + clientFrame(CONT, b"A"),
            INVALID_DATA,
            MALFORMED,
        )
        self.assertFails(
            clientFrame(TEXT, b"a", fin=False) + clientFrame(CONT, b"\xe2\x82"),
            INVALID_DATA,
            MALFORMED,
        )

    def test_invalidTextFailsFast(self):
        """
        A first fragment that cannot start valid text fails at once, before
        the rest of the message arrives.
        """
        codec = ClientWebSocket(LIMIT)
        messages, reply, end = codec.feed(clientFrame(TEXT, b"a\xff", fin=False))
        self.assertEqual((end.closeCode, closeOf(reply).code), (INVALID_DATA,) * 2)

    def test_tooLong(self):
        """
        A message one byte over the limit, in one frame or over fragments,
        is refused with 1009; a message of exactly the limit is not.
        """
        error = self.assertFails(
            clientFrame(BINARY, b"x" * (LIMIT + 1)), MESSAGE_TOO_BIG, TOO_LONG
        )
        self.assertIn(f"{LIMIT + 1} bytes", error.detail)
        error = self.assertFails(
            clientFrame(TEXT, b"x" * 200, fin=False)
            + clientFrame(CONT, b"x" * 100, fin=False)
            + clientFrame(CONT, b"x"),
            MESSAGE_TOO_BIG,
            TOO_LONG,
        )
        self.assertIn(f"{LIMIT + 1} bytes", error.detail)
        exact = clientFrame(BINARY, b"x" * 200, fin=False) + clientFrame(
            CONT, b"x" * 100
        )
        self.assertEqual(
            ClientWebSocket(LIMIT).feed(exact), ([b"x" * LIMIT], b"", None)
        )

    def test_tooLongWithSmallLimit(self):
        """
        Under a limit below 125 bytes, the frame parser lets a data frame up
        to 125 through (room for control frames); the message limit holds.
        """
        self.assertFails(clientFrame(BINARY, b"x" * 11), MESSAGE_TOO_BIG, TOO_LONG, 10)

    def test_tooLongOnHeader(self):
        """
        A frame announcing more than the limit fails on its header, before
        its payload is buffered: here 2**40 bytes, of which none is sent.
        """
        header = clientFrame(BINARY, b"x" * 65536)[:2] + struct.pack("!Q", 2**40)
        messages, reply, end = ClientWebSocket(LIMIT).feed(header)
        self.assertEqual((end.closeCode, end.reason), (MESSAGE_TOO_BIG, TOO_LONG))

    def test_pingNearTheLimit(self):
        """
        A ping between fragments is not counted against the message: with
        one byte of room left, a ping of 125 bytes is answered.
        """
        data = (
            clientFrame(BINARY, b"x" * (LIMIT - 1), fin=False)
            + clientFrame(PING, b"p" * 125)
            + clientFrame(CONT, b"x")
        )
        self.assertEqual(
            ClientWebSocket(LIMIT).feed(data),
            ([b"x" * LIMIT], serverFrame(PONG, b"p" * 125), None),
        )

    @settings(max_examples=300, deadline=None)
    @given(data=st.binary(max_size=2 * LIMIT), cuts=st.lists(st.integers(0)))
    def test_arbitraryBytes(self, data, cuts):
        """
        Any bytes at all give messages within the limit, a Close or a typed
        error with a close code the gateway sends; nothing else.
        """
        points = sorted({c % (len(data) + 1) for c in cuts})
        pieces = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
        messages, reply, end = feedInPieces(ClientWebSocket(LIMIT), pieces)
        for message in messages:
            self.assertLessEqual(len(message), LIMIT)
        if isinstance(end, WebSocketError):
            self.assertIn(end.closeCode, CLOSE_CODES)
            self.assertIn(end.reason, (MALFORMED, TOO_LONG))
            self.assertEqual(closeOf(reply).code, end.closeCode)


class CloseTests(SynchronousTestCase):
    def test_clientClose(self):
        """
        A client's Close is a half-close: the messages before it are
        delivered, nothing after it is read, and the gateway still sends
        messages until its own Close 1000.
        """
        codec = ClientWebSocket(LIMIT)
        data = (
            clientFrame(BINARY, b"last")
            + clientFrame(CLOSE, Close(1001, "tab closed").serialize())
            + clientFrame(BINARY, b"ignored")
        )
        self.assertEqual(
            codec.feed(data), ([b"last"], b"", ClientClosed(1001, "tab closed"))
        )
        self.assertEqual(codec.feed(clientFrame(PING, b"x")), ([], b"", None))
        self.assertEqual(codec.encode([b"reply"]), serverFrame(BINARY, b"reply"))
        self.assertEqual(
            (codec.closeSent, codec.closeCode, codec.encode([b"more"], b"within")),
            (False, None, serverFrame(BINARY, b"more")),
        )
        self.assertEqual(closeOf(codec.close(NORMAL_CLOSURE)), Close(1000, ""))
        self.assertEqual((codec.closeSent, codec.closeCode), (True, NORMAL_CLOSURE))
        self.assertEqual(codec.close(GOING_AWAY), b"")
        self.assertEqual(codec.closeCode, NORMAL_CLOSURE)
        self.assertEqual(codec.encode([b"too late"]), b"")

    def test_emptyClose(self):
        """
        A Close without a payload stands for code 1005 (section 7.1.5).
        """
        self.assertEqual(
            ClientWebSocket(LIMIT).feed(clientFrame(CLOSE)),
            ([], b"", ClientClosed(1005, "")),
        )

    def test_closeByteByByte(self):
        data = clientFrame(CLOSE, Close(1000, "bye").serialize())
        self.assertEqual(
            feedInPieces(ClientWebSocket(LIMIT), cut(data, 1)),
            ([], b"", ClientClosed(1000, "bye")),
        )

    def test_closeCodes(self):
        """
        Every close code SPEC section 10 lists, and no other.
        """
        for code in (1000, 1001, 1002, 1007, 1009, 1011):
            self.assertEqual(
                closeOf(ClientWebSocket(LIMIT).close(code, "why")), Close(code, "why")
            )
        self.assertEqual(
            {NORMAL_CLOSURE, GOING_AWAY, PROTOCOL_ERROR, INVALID_DATA}
            | {MESSAGE_TOO_BIG, INTERNAL_ERROR},
            CLOSE_CODES,
        )
        for code in (1005, 1006, 3000, 999):
            self.assertRaises(ValueError, ClientWebSocket(LIMIT).close, code)

    def test_longReason(self):
        """
        A reason longer than a Close frame holds is cut to 123 bytes, at a
        character boundary.
        """
        frame = ClientWebSocket(LIMIT).close(GOING_AWAY, "\u20ac" * 100)
        self.assertEqual(closeOf(frame), Close(GOING_AWAY, "\u20ac" * 41))

    def test_serverCloseThenClient(self):
        """
        After the gateway's Close (idle timeout, shutdown), the client's
        messages and pings are dropped and its Close ends the handshake.
        """
        codec = ClientWebSocket(LIMIT)
        codec.close(GOING_AWAY)
        self.assertEqual(
            codec.feed(clientFrame(BINARY, b"late") + clientFrame(PING, b"p")),
            ([], b"", None),
        )
        self.assertEqual(
            codec.feed(clientFrame(CLOSE, Close(1001, "").serialize())),
            ([], b"", ClientClosed(1001, "")),
        )

    def test_serverCloseThenError(self):
        """
        A client's error after the gateway's Close sends no second Close.
        """
        codec = ClientWebSocket(LIMIT)
        codec.close(GOING_AWAY)
        messages, reply, end = codec.feed(clientFrame(CONT, b"x"))
        self.assertEqual((messages, reply, end.closeCode), ([], b"", PROTOCOL_ERROR))

    def test_finish(self):
        """
        The client's TCP stream ending: between messages it is no error;
        inside a frame (its header read or not) or a fragmented message it
        is a truncated stream.
        """
        self.assertIsNone(ClientWebSocket(LIMIT).finish())
        frame = clientFrame(BINARY, b"0123456789")
        for end in (1, 2, 6, len(frame) - 1):
            codec = ClientWebSocket(LIMIT)
            codec.feed(frame[:end])
            error = codec.finish()
            self.assertEqual((error.reason, error.closeCode), (TRUNCATED, 1002), end)
        codec = ClientWebSocket(LIMIT)
        codec.feed(clientFrame(BINARY, b"a", fin=False))
        self.assertEqual(codec.finish().reason, TRUNCATED)
        codec = ClientWebSocket(LIMIT)
        codec.feed(frame)
        self.assertIsNone(codec.finish())

    def test_textUnencodable(self):
        """
        Under the text message type, a backend payload that is not UTF-8
        cannot be sent: unencodable, close code 1011, the ones before kept.
        """
        codec = ClientWebSocket(LIMIT, "text")
        error = self.assertRaises(
            WebSocketError, codec.encode, [b"ok", "\u00e9".encode(), b"\xff", b"x"]
        )
        self.assertEqual(
            (error.reason, error.closeCode, error.messages),
            (UNENCODABLE, INTERNAL_ERROR, [b"ok", "\u00e9".encode()]),
        )

    def test_messageType(self):
        self.assertRaises(ValueError, ClientWebSocket, LIMIT, "json")

    def test_sansIO(self):
        """
        The module imports neither Twisted nor asyncio (the codecs' rule).
        """
        check = (
            "import sys, gateway.codec.websocket;"
            "print(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'twisted', 'asyncio'}))"
        )
        output = subprocess.run(
            [sys.executable, "-c", check], capture_output=True, check=True
        ).stdout
        self.assertEqual(output, b"[]\n")


def upgradeRequest(
    path: str = "/", headers: dict[str, str] | None = None, drop: tuple = ()
) -> bytes:
    """
    The upgrade request websockets' client sends for C{path}, with headers
    changed or removed.
    """
    client = ClientProtocol(parse_uri(f"ws://gateway.test{path}"))
    request = client.connect()
    for name in drop:
        del request.headers[name]
    for name, value in (headers or {}).items():
        if name in request.headers:
            del request.headers[name]
        request.headers[name] = value
    return request.serialize()


def acceptedBy(request: bytes, response: bytes) -> bool:
    """
    Whether C{response} is a valid answer to C{request} for websockets'
    client, which checks C{Sec-WebSocket-Accept} and the other headers.
    """
    client = ClientProtocol(parse_uri("ws://gateway.test/"))
    key = request.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0].decode()
    client.key = key
    client.receive_data(response)
    [event] = client.events_received()
    return isinstance(event, Response) and client.handshake_exc is None


class UpgradeTests(SynchronousTestCase):
    def test_accepted(self):
        """
        A valid request, fed whole or byte by byte, gets a 101 that a real
        client accepts; the bytes after it are handed on.
        """
        request = upgradeRequest("/?token=1")
        for pieces in (cut(request + b"frames", len(request) + 6), cut(request, 1)):
            upgrade = WebSocketUpgrade()
            outcomes = [upgrade.feed(piece) for piece in pieces]
            self.assertEqual(outcomes[:-1], [None] * (len(pieces) - 1))
            outcome = outcomes[-1]
            self.assertIsInstance(outcome, Accepted)
            self.assertTrue(acceptedBy(request, outcome.response))
            self.assertEqual(outcome.target, "/?token=1")
        self.assertEqual(outcome.extra, b"")
        self.assertEqual(WebSocketUpgrade().feed(request + b"frames").extra, b"frames")

    def test_noCompression(self):
        """
        permessage-deflate offered by the client is not negotiated.
        """
        offer = "permessage-deflate; client_max_window_bits"
        request = upgradeRequest(headers={"Sec-WebSocket-Extensions": offer})
        outcome = WebSocketUpgrade().feed(request)
        self.assertIsInstance(outcome, Accepted)
        self.assertNotIn(b"Sec-WebSocket-Extensions", outcome.response)

    def assertRefused(self, outcome, status: int, reason: str) -> Refused:
        self.assertIsInstance(outcome, Refused)
        self.assertEqual((outcome.status, outcome.reason), (status, reason))
        head = outcome.response.split(b"\r\n\r\n")[0]
        self.assertTrue(head.startswith(b"HTTP/1.1 %d " % status), head)
        self.assertIn(b"\r\nConnection: close\r\n", head)
        return outcome

    def test_otherPath(self):
        self.assertRefused(
            WebSocketUpgrade("/ws").feed(upgradeRequest("/other")), 404, MALFORMED
        )
        self.assertIsInstance(
            WebSocketUpgrade("/ws").feed(upgradeRequest("/ws?x=y")), Accepted
        )

    def test_origin(self):
        """
        With origins given, only those are upgraded; a request without an
        Origin is refused. Refusals count as denied.
        """
        upgrade = WebSocketUpgrade(origins=["https://app.example"])
        self.assertIsInstance(
            upgrade.feed(upgradeRequest(headers={"Origin": "https://app.example"})),
            Accepted,
        )
        for request in (
            upgradeRequest(headers={"Origin": "https://evil.example"}),
            upgradeRequest(),
        ):
            refused = self.assertRefused(
                WebSocketUpgrade(origins=["https://app.example"]).feed(request),
                403,
                DENIED,
            )
            self.assertNotIn(b"101", refused.response.split(b"\r\n")[0])
        self.assertIsInstance(
            WebSocketUpgrade().feed(upgradeRequest(headers={"Origin": "https://x"})),
            Accepted,
        )

    def test_noUpgradeHeader(self):
        """
        A plain HTTP request gets 426 with the protocol to upgrade to.
        """
        for request in (
            b"GET / HTTP/1.1\r\nHost: gateway.test\r\n\r\n",
            upgradeRequest(drop=("Upgrade",)),
        ):
            refused = self.assertRefused(
                WebSocketUpgrade().feed(request), 426, MALFORMED
            )
            self.assertIn(b"\r\nUpgrade: websocket\r\n", refused.response)

    def test_invalidUpgrades(self):
        """
        Every other invalid upgrade gets 400.
        """
        for request in (
            upgradeRequest(drop=("Connection",)),
            upgradeRequest(headers={"Upgrade": "h2c"}),
            upgradeRequest(drop=("Sec-WebSocket-Key",)),
            upgradeRequest(headers={"Sec-WebSocket-Key": "short"}),
            upgradeRequest(headers={"Sec-WebSocket-Version": "8"}),
            upgradeRequest().replace(b"GET", b"POST", 1),
            upgradeRequest().replace(b"HTTP/1.1", b"HTTP/1.0", 1),
            upgradeRequest(headers={"Transfer-Encoding": "chunked"}),
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ):
            self.assertRefused(WebSocketUpgrade().feed(request), 400, MALFORMED)

    def test_refusedEarly(self):
        """
        A request line that is already wrong is refused as soon as it is
        complete, without waiting for the rest of the head.
        """
        refused = self.assertRefused(
            WebSocketUpgrade().feed(b"GET / HTTP/1.1\nHost: x\n"), 400, MALFORMED
        )
        self.assertEqual(refused.detail, "invalid HTTP request: line without CRLF")
        self.assertRefused(WebSocketUpgrade().feed(b"nonsense\r\n"), 400, MALFORMED)

    def test_sizeBound(self):
        """
        A head of exactly the bound is read; one byte more is refused, even
        before it ends, and so is a head that never ends.
        """
        request = upgradeRequest()
        filler = MAX_REQUEST_SIZE - len(request) - len("X-Pad: \r\n")
        padded = request[:-2] + b"X-Pad: " + b"p" * filler + b"\r\n\r\n"
        self.assertEqual(len(padded), MAX_REQUEST_SIZE)
        self.assertIsInstance(WebSocketUpgrade().feed(padded), Accepted)
        tooBig = padded[:-4] + b"p\r\n\r\n"
        self.assertRefused(WebSocketUpgrade().feed(tooBig), 400, MALFORMED)
        upgrade = WebSocketUpgrade()
        self.assertIsNone(upgrade.feed(padded[:-4]))
        self.assertIsNone(upgrade.feed(b"ppp"))
        self.assertRefused(upgrade.feed(b"p"), 400, MALFORMED)
        self.assertRefused(
            WebSocketUpgrade(maxRequestSize=100).feed(
                b"GET / HTTP/1.1\r\n" + b"a" * 90
            ),
            400,
            MALFORMED,
        )

    @settings(max_examples=300, deadline=None)
    @given(
        prefix=st.sampled_from([b"", b"GET / HTTP/1.1\r\n"]),
        data=st.binary(max_size=200),
        size=st.integers(1, 64),
    )
    def test_arbitraryBytes(self, prefix, data, size):
        """
        Any bytes at all, in any chunking, either wait for more or end in
        an answer with one of the statuses SPEC section 10 names; feeding
        never raises.
        """
        upgrade = WebSocketUpgrade()
        for piece in cut(prefix + data + b"\r\n\r\n", size):
            outcome = upgrade.feed(piece)
            if outcome is not None:
                break
        if isinstance(outcome, Refused):
            self.assertIn(outcome.status, (400, 404, 426))

    @settings(max_examples=200, deadline=None)
    @given(
        name=st.text(st.characters(codec="latin-1"), min_size=1, max_size=20),
        value=st.text(st.characters(codec="latin-1"), max_size=40),
    )
    def test_arbitraryHeader(self, name, value):
        """
        A valid request with one more header of any Latin-1 name and value
        is accepted or refused with 400; nothing raises.
        """
        request = upgradeRequest()
        line = f"{name}: {value}\r\n".encode("latin-1")
        outcome = WebSocketUpgrade().feed(request[:-2] + line + b"\r\n")
        if isinstance(outcome, Refused):
            self.assertEqual(outcome.status, 400, outcome.detail)
        else:
            self.assertIsInstance(outcome, (Accepted, type(None)))

    def test_feedAfterOutcome(self):
        upgrade = WebSocketUpgrade()
        upgrade.feed(upgradeRequest())
        self.assertRaises(RuntimeError, upgrade.feed, b"more")


# End to end: a real client library against a Twisted server using the module.


class EchoWebSocket(Protocol):
    """
    Echoes every message back through the module, as the gateway's pair
    will translate them: one feed per read, one write per chunk of replies.

    The factory sets C{path}, C{origins}, C{maxSize}, C{messageType}, and
    C{hold}: keep the replies until the client's Close (replies that are
    still on their way when the client half-closes). A message
    C{b"go away"} makes the server close with 1001 and wait for the
    client's Close.
    """

    codec: ClientWebSocket | None = None

    def connectionMade(self) -> None:
        self.factory.opened(self)
        self.upgrade = WebSocketUpgrade(self.factory.path, self.factory.origins)
        self.held: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.codec is None:
            outcome = self.upgrade.feed(data)
            if outcome is None:
                return
            self.transport.write(outcome.response)
            if isinstance(outcome, Refused):
                self.factory.ends.append(outcome)
                self.transport.loseConnection()
                return
            self.codec = ClientWebSocket(self.factory.maxSize, self.factory.messageType)
            data = outcome.extra
        messages, reply, end = self.codec.feed(data)
        self.factory.received.extend(messages)
        self.transport.write(reply)
        if b"go away" in messages:
            self.transport.write(self.codec.close(GOING_AWAY, "shutting down"))
        elif self.factory.hold:
            self.held.extend(messages)
        else:
            self.send(messages)
        if end is not None:
            self.factory.ends.append(end)
            if isinstance(end, ClientClosed):
                self.send(self.held)
                self.transport.write(self.codec.close(NORMAL_CLOSURE))
            self.transport.loseConnection()

    def send(self, messages: list[bytes]) -> None:
        try:
            self.transport.write(self.codec.encode(messages))
        except WebSocketError as error:
            self.factory.ends.append(error)
            self.transport.write(self.codec.encode(error.messages))
            self.transport.write(self.codec.close(error.closeCode, error.detail))
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self.factory.closed(self)


def echoServer(
    testCase: TestCase,
    maxSize: int = 65536,
    messageType: str = "binary",
    hold: bool = False,
    path: str = "/",
    origins: list[str] | None = None,
) -> tuple[BackendFactory, str]:
    """
    Listen with L{EchoWebSocket}; return its factory and its ws:// URI.
    """
    factory = BackendFactory(EchoWebSocket)
    factory.maxSize = maxSize
    factory.messageType = messageType
    factory.hold = hold
    factory.path = path
    factory.origins = origins
    factory.ends = []
    port = listenUntilClosed(testCase, factory)
    return factory, f"ws://127.0.0.1:{port}"


def inClient(coroutine):
    """
    Run a websockets client coroutine on its own asyncio loop in a thread,
    within the deadline.
    """

    async def bounded():
        return await asyncio.wait_for(coroutine, DEADLINE)

    return threads.deferToThread(asyncio.run, bounded())


class RealClientTests(TestCase):
    """
    websockets' asyncio client against the module, over TCP on loopback.
    """

    async def test_messagesBothWays(self):
        """
        Text, binary, empty and fragmented messages reach the server whole
        and in order and come back as binary messages; a ping is answered;
        compression offered by the client is declined; the client's close
        ends in the server's Close 1000.
        """
        factory, uri = echoServer(self)
        sent = ["h\u00e9llo", b"\x00\xff", "", b"", "\u20ac" * 1000, b"x" * 40000]
        fragmented = [["frag", "m\u00e9nt", "ed"], [b"a", b"", b"b"]]

        async def client():
            async with connect(uri, close_timeout=DEADLINE) as ws:
                for message in sent + fragmented:
                    await ws.send(message)
                pong = await ws.ping(b"ping?")
                replies = [await ws.recv() for _ in sent + fragmented]
                await pong
                extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
            return replies, extensions, ws.close_code

        replies, extensions, closeCode = await inClient(client())
        expected = [m.encode() if isinstance(m, str) else m for m in sent]
        expected += ["fragm\u00e9nted".encode(), b"ab"]
        self.assertEqual(replies, expected)
        self.assertEqual(factory.received, expected)
        self.assertEqual((extensions, closeCode), (None, NORMAL_CLOSURE))
        self.assertEqual(factory.ends, [ClientClosed(1000, "")])

    async def test_textMessages(self):
        """
        Under the text message type the client receives text; a backend
        payload that is not UTF-8 closes with 1011.
        """
        factory, uri = echoServer(self, messageType="text")

        async def client():
            async with connect(uri, close_timeout=DEADLINE) as ws:
                await ws.send("h\u00e9llo")
                await ws.send(b"bytes")
                replies = [await ws.recv(), await ws.recv()]
                await ws.send(b"\xff")
                try:
                    await ws.recv()
                except ConnectionClosedError:
                    pass
            return replies, ws.close_code

        self.assertEqual(
            await inClient(client()), (["h\u00e9llo", "bytes"], INTERNAL_ERROR)
        )
        self.assertEqual(factory.ends[0].reason, UNENCODABLE)

    async def test_sizeLimit(self):
        """
        A message of exactly the limit is echoed; one byte more closes with
        1009.
        """
        factory, uri = echoServer(self, maxSize=1000)

        async def client():
            async with connect(uri, close_timeout=DEADLINE) as ws:
                await ws.send(b"x" * 1000)
                echo = await ws.recv()
                await ws.send(b"x" * 1001)
                try:
                    await ws.recv()
                except ConnectionClosedError:
                    pass
            return len(echo), ws.close_code

        self.assertEqual(await inClient(client()), (1000, MESSAGE_TOO_BIG))
        self.assertEqual(factory.ends[0].reason, TOO_LONG)

    async def test_clientCloseDeliversReplies(self):
        """
        Replies still on their way when the client sends its Close reach it
        before the server's Close 1000.
        """
        factory, uri = echoServer(self, hold=True)

        async def client():
            ws = await connect(uri, close_timeout=DEADLINE)
            for message in (b"one", b"two", b"three"):
                await ws.send(message)
            await ws.close(1000, "done")
            replies = []
            try:
                while True:
                    replies.append(await ws.recv())
            except ConnectionClosedOK:
                pass
            return replies, ws.close_code

        self.assertEqual(
            await inClient(client()), ([b"one", b"two", b"three"], NORMAL_CLOSURE)
        )
        self.assertEqual(factory.ends, [ClientClosed(1000, "done")])

    async def test_serverClose(self):
        """
        The server's Close 1001 (idle timeout, shutdown) reaches the client,
        whose Close completes the handshake.
        """
        factory, uri = echoServer(self)

        async def client():
            async with connect(uri, close_timeout=DEADLINE) as ws:
                await ws.send(b"go away")
                try:
                    await ws.recv()
                except ConnectionClosedOK:
                    pass
            return ws.close_code, ws.close_reason

        self.assertEqual(await inClient(client()), (GOING_AWAY, "shutting down"))
        self.assertEqual(factory.ends, [ClientClosed(1001, "shutting down")])

    async def test_refusals(self):
        """
        A path other than the WebSocket path gets 404, an origin not listed
        403; both before any message.
        """
        factory, uri = echoServer(self, path="/ws", origins=["https://app.example"])

        async def client():
            statuses = []
            for path, origin in [("/other", "https://app.example"), ("/ws", None)]:
                try:
                    async with connect(uri + path, origin=origin):
                        pass
                except InvalidStatus as error:
                    statuses.append(error.response.status_code)
            async with connect(
                uri + "/ws", origin="https://app.example", close_timeout=DEADLINE
            ) as ws:
                await ws.send(b"allowed")
                statuses.append(await ws.recv())
            return statuses

        self.assertEqual(await inClient(client()), [404, 403, b"allowed"])
        self.assertEqual(
            [(end.status, end.reason) for end in factory.ends[:2]],
            [(404, MALFORMED), (403, DENIED)],
        )
