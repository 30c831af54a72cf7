"""
WebSocket clients (RFC 6455): the opening handshake and the client's frames.

Bytes in, bytes out, no I/O and no Twisted, like the other framings. Two
objects per client connection:

  - L{WebSocketUpgrade} reads the HTTP upgrade request and answers it: the
    C{101} response and the bytes after the request (already frames), or an
    HTTP error response (400, 403, 404, 426) that ends the connection.
  - L{ClientWebSocket} then turns each read chunk of client frames into the
    complete messages it holds, plus the bytes the client is owed at once
    (pongs, or the Close frame of an error); and a list of backend messages
    into one buffer of server frames.

The library: the Sans-I/O layer of C{websockets}, rather than C{wsproto}.

  - Speed per message, measured on CPython 3.11 with 64-byte masked client
    frames in 64 KiB chunks (CPU time; C{benchmarks/websocket_codec.py}):
    C{websockets}' frame parser, driven one chunk at a time, costs about
    3 microseconds a frame (3.6 to 4.2 through its whole C{Protocol}),
    C{wsproto}'s connection 12; serializing a server frame 1.3 against
    1.9. C{websockets} unmasks in C (its C{speedups} module),
    C{wsproto} in Python.
  - Fit with chunk-by-chunk translation: C{Frame.parse} refuses a frame
    longer than the room left in the message on its header alone, before
    buffering its payload, so memory stays bounded by the message size
    limit; C{wsproto} has no size limit and hands out pieces of frames of
    any length. C{ServerProtocol.accept} checks every header of the upgrade
    request and builds the HTTP responses, refusals included.
  - Neither library's connection object gives the gateway's closing order
    (SPEC section 10: a client's Close is a half-close; the backend's
    remaining replies go out before the gateway's Close): C{websockets}'
    C{Protocol} echoes a Close at once and ends the stream, C{wsproto}'s
    connection refuses to send a message once the client's Close is in. So
    this module drives the library's frame layer (C{Frame.parse},
    C{Frame.serialize}, C{Close.parse}, C{Close.serialize}) itself and keeps
    what the gateway decides here: message reassembly, the size limit on
    the whole message, UTF-8 validation of text (C{websockets}' Sans-I/O
    layer leaves that to its I/O layers) and when the Close goes out.
  - Maintenance: C{websockets} releases several times a year, is typed and
    has no dependencies; C{wsproto} releases less often and needs C{h11}.

What this module takes from C{websockets}: C{Frame.parse} (with the
frame checks of C{Frame.check}), C{Frame.serialize}, C{Close.parse},
C{Close.serialize}, C{ServerProtocol} for the request, its checks and its
responses, and the exceptions they raise; public names of C{websockets}
that have kept their signatures since its version 10. The tests run all of
them, so a release that changes one fails them.

Costs per 64-byte message: decoding about 3.1 microseconds, of which 2.95
are the library's parser (the opcode's enum lookup, the C{Frame} dataclass,
its checks, the unmasking and, most of it, the generator-based reading of
header, mask and payload); encoding 0.08 in chunks of messages, because
the header of every payload shorter than 126 bytes is looked up in a table
that C{Frame.serialize} built.

No extension is offered, so permessage-deflate is never negotiated.
"""

from __future__ import annotations

import codecs
import http
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast

from websockets.exceptions import (
    InvalidMessage,
    InvalidOrigin,
    InvalidUpgrade,
    PayloadTooBig,
    ProtocolError,
)
from websockets.frames import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    Close,
    CloseCode,
    Frame,
    Opcode,
)
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Origin

from gateway.codec._base import (
    MALFORMED,
    TOO_LONG,
    TRUNCATED,
    UNENCODABLE,
    FramingError,
)

# The gateway's reason for a refused origin (SPEC section 10): the
# connection counts as rejected, as the admission rules' refusals do.
DENIED = "denied"

# The close codes the gateway sends (SPEC section 10, RFC 6455 section 7.4.1).
NORMAL_CLOSURE = CloseCode.NORMAL_CLOSURE  # 1000: either side ended its stream
GOING_AWAY = CloseCode.GOING_AWAY  # 1001: idle timeout, shutdown
PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR  # 1002: a malformed frame
INVALID_DATA = CloseCode.INVALID_DATA  # 1007: a text message not UTF-8
MESSAGE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG  # 1009: over --max-message-size
INTERNAL_ERROR = CloseCode.INTERNAL_ERROR  # 1011: the backend failed
CLOSE_CODES = frozenset(
    {
        NORMAL_CLOSURE,
        GOING_AWAY,
        PROTOCOL_ERROR,
        INVALID_DATA,
        MESSAGE_TOO_BIG,
        INTERNAL_ERROR,
    }
)

# The most bytes of request line and headers read before refusing: nginx's
# default header buffer and HAProxy's tune.bufsize are of this order, and a
# browser's upgrade request is under 1 KiB.
MAX_REQUEST_SIZE = 8192

# RFC 6455 section 5.5: a control frame carries at most 125 bytes, and a
# Close frame's first two are the code, which leaves 123 for the reason.
MAX_CONTROL_PAYLOAD = 125
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2

MESSAGE_TYPES = ("binary", "text")

_END_OF_HEAD = b"\r\n\r\n"
_NO_EXTENSIONS: tuple[()] = ()


# The upgrade.


@dataclass(frozen=True)
class Accepted:
    """
    The upgrade succeeded.

    @ivar response: the C{101 Switching Protocols} response to write.
    @ivar extra: the bytes that followed the request in what was fed: the
        client's first frames, to feed to L{ClientWebSocket.feed}.
    @ivar target: the request target, path and query (for logs).
    @ivar origin: the request's C{Origin} header, if any (for logs).
    """

    response: bytes
    extra: bytes
    target: str
    origin: str | None


@dataclass(frozen=True)
class Refused:
    """
    The upgrade was refused: write C{response}, then close the connection.

    @ivar status: the HTTP status (400, 403, 404 or 426).
    @ivar reason: L{DENIED} for an origin that is not allowed (the connection
        counts as rejected); L{MALFORMED} for everything else (it counts as
        the client's protocol error).
    @ivar detail: a sentence for logs.
    @ivar response: the HTTP response, with C{Connection: close}.
    """

    status: int
    reason: str
    detail: str
    response: bytes


class WebSocketUpgrade:
    """
    Reads one HTTP upgrade request (RFC 6455 section 4.2) and answers it.

    Feed the client's bytes as they come until L{feed} returns an outcome;
    nothing may be fed after that.

    @ivar path: the only path that is upgraded (the query is not compared).
    @ivar origins: the allowed C{Origin} values; None allows any, and a
        request without C{Origin} is refused when a list is given.
    @ivar maxRequestSize: the most bytes of request line and headers.
    """

    def __init__(
        self,
        path: str = "/",
        origins: Sequence[str] | None = None,
        maxRequestSize: int = MAX_REQUEST_SIZE,
    ) -> None:
        self.path = path
        self.origins = list(origins) if origins else None
        self.maxRequestSize = maxRequestSize
        self._buffer = bytearray()
        # websockets' HTTP parser checks each header line as soon as it is
        # complete, so a request that goes wrong early is refused early.
        self._protocol = ServerProtocol(
            origins=None if self.origins is None else list(map(Origin, self.origins))
        )
        self._parsed = 0
        self._done = False

    def feed(self, data: bytes) -> Accepted | Refused | None:
        """
        Take the next bytes from the client.

        @return: None while the request is incomplete, then an L{Accepted} or
            a L{Refused}.
        @raise RuntimeError: when called again after an outcome.
        """
        if self._done:
            raise RuntimeError("the WebSocket upgrade has already ended")
        buffer = self._buffer
        buffer += data
        limit = self.maxRequestSize
        # The end of the head must lie within the limit; a match may start in
        # the last three bytes already searched.
        end = buffer.find(_END_OF_HEAD, max(0, self._parsed - 3), limit)
        if end == -1:
            lastLine = buffer.rfind(b"\n", self._parsed, limit) + 1
            if lastLine > self._parsed:
                self._protocol.receive_data(bytes(buffer[self._parsed : lastLine]))
                self._parsed = lastLine
                if self._protocol.handshake_exc is not None:
                    return self._refuseInvalid()
            if len(buffer) >= limit:
                return self._refuse(
                    http.HTTPStatus.BAD_REQUEST,
                    MALFORMED,
                    f"request head over {limit} bytes",
                )
            return None
        end += len(_END_OF_HEAD)
        self._protocol.receive_data(bytes(buffer[self._parsed : end]))
        self._parsed = end
        if self._protocol.handshake_exc is not None:
            return self._refuseInvalid()
        [request] = self._protocol.events_received()
        assert isinstance(request, Request)
        return self._answer(request, bytes(buffer[end:]))

    def _answer(self, request: Request, extra: bytes) -> Accepted | Refused:
        path = request.path.partition("?")[0]
        if path != self.path:
            return self._refuse(
                http.HTTPStatus.NOT_FOUND,
                MALFORMED,
                f"path {path!r} is not the WebSocket path {self.path!r}",
            )
        response = self._protocol.accept(request)
        error = self._protocol.handshake_exc
        if error is None:
            self._done = True
            return Accepted(
                response.serialize(), extra, request.path, request.headers.get("Origin")
            )
        if isinstance(error, InvalidOrigin):
            origin = error.value
            return self._refuse(
                http.HTTPStatus.FORBIDDEN,
                DENIED,
                f"origin {origin} not allowed" if origin else "no Origin header",
            )
        if isinstance(error, InvalidUpgrade) and "Upgrade" not in request.headers:
            # RFC 9110 section 15.5.22: a 426 names the protocol to upgrade
            # to, which websockets' response does.
            self._done = True
            return Refused(
                http.HTTPStatus.UPGRADE_REQUIRED.value,
                MALFORMED,
                "no Upgrade header",
                response.serialize(),
            )
        # SPEC section 10 answers every other invalid upgrade with 400, the
        # methods and HTTP versions websockets answers 405 and 505 included.
        return self._refuse(http.HTTPStatus.BAD_REQUEST, MALFORMED, _describe(error))

    def _refuseInvalid(self) -> Refused:
        error = self._protocol.handshake_exc
        assert error is not None
        return self._refuse(http.HTTPStatus.BAD_REQUEST, MALFORMED, _describe(error))

    def _refuse(self, status: http.HTTPStatus, reason: str, detail: str) -> Refused:
        self._done = True
        text = f"Failed to open a WebSocket connection: {detail}.\n"
        response = self._protocol.reject(status, text)
        return Refused(status.value, reason, detail, response.serialize())


def _describe(error: BaseException) -> str:
    if isinstance(error, InvalidMessage):
        # websockets puts the parser's own error, the one that names what is
        # wrong, at the end of the chain, under an EOFError that would read
        # as if the connection had closed.
        while error.__cause__ is not None:
            error = error.__cause__
        return f"invalid HTTP request: {error}"
    return str(error)


# The messages.


@dataclass(frozen=True, slots=True)
class ClientClosed:
    """
    The client sent a Close frame: no message follows.

    The client's write side is shut (RFC 6455 section 5.5.1) but it still
    reads: the replies on their way go out first, then the gateway's Close
    (L{NORMAL_CLOSURE}).

    @ivar code: the client's close code; 1005 when its Close had none.
    @ivar reason: the client's close reason, possibly empty.
    """

    code: int
    reason: str


class WebSocketError(FramingError):
    """
    Bytes that break RFC 6455 or the gateway's limits, or a backend payload
    that cannot be sent.

    @ivar closeCode: the close code that goes with it (L{PROTOCOL_ERROR},
        L{INVALID_DATA}, L{MESSAGE_TOO_BIG}, L{INTERNAL_ERROR}).
    @ivar reason: as for L{FramingError}: L{MALFORMED}, L{TOO_LONG},
        L{TRUNCATED}, L{UNENCODABLE}.
    """

    def __init__(
        self,
        closeCode: int,
        reason: str,
        detail: str,
        messages: list[bytes] | None = None,
    ) -> None:
        super().__init__(reason, detail, messages)
        self.closeCode = closeCode


class Decoded(NamedTuple):
    """
    What one chunk of client bytes held.

    @ivar messages: every complete message payload, in order; those before
        an error or a Close included.
    @ivar reply: bytes to write to the client now: pongs, then the Close
        frame of an error.
    @ivar end: None while the client goes on; a L{ClientClosed} after its
        Close frame; a L{WebSocketError} when its bytes broke the rules.
        Either way nothing it sends afterwards is read.
    """

    messages: list[bytes]
    reply: bytes
    end: ClientClosed | WebSocketError | None


def _serverFrame(opcode: Opcode, payload: bytes) -> bytes:
    return Frame(opcode, payload).serialize(mask=False)


def _headers(opcode: Opcode) -> tuple[bytes, ...]:
    # The header of an unmasked, unfragmented frame depends on its opcode and
    # payload length alone (RFC 6455 section 5.2), so websockets builds the
    # header of every short length once here, and encoding a short message
    # is a lookup instead of a Frame and a BytesIO.
    return tuple(
        _serverFrame(opcode, bytes(length))[: -length or None]
        for length in range(MAX_CONTROL_PAYLOAD + 1)
    )


# Headers of server frames of 0 to 125 bytes, by opcode.
_SHORT_HEADERS = {BINARY: _headers(BINARY), TEXT: _headers(TEXT)}


def _closeReason(text: str) -> str:
    # Cut to what a Close frame can carry, at a character boundary.
    return text.encode()[:MAX_CLOSE_REASON].decode("utf-8", "ignore")


class _Unparsed:
    """
    The client bytes not parsed yet, read the way C{Frame.parse} reads: a
    generator that waits until C{n} bytes are there, then takes them.
    """

    __slots__ = ("data",)

    def __init__(self) -> None:
        # A bytearray: appending a chunk and deleting from the front cost
        # no copy of the rest, however many reads a long frame takes.
        self.data = bytearray()

    def readExact(self, n: int) -> Generator[None, None, bytearray]:
        data = self.data
        while len(data) < n:
            yield
        taken = data[:n]
        del data[:n]
        return taken


class ClientWebSocket:
    """
    One client's WebSocket connection after the upgrade, in both directions.

    Client messages may be text or binary, whole or fragmented, with pings
    between the fragments; C{maxSize} bounds each whole message. Messages to
    the client are sent as C{messageType} frames, one frame each.

    Memory: the bytes of one incomplete frame or fragmented message, so at
    most C{maxSize} plus a frame header, plus the chunk being read.
    """

    name = "websocket"
    # Frame headers vary with the payload's length (see Framing.overhead).
    overhead = None
    # One per open WebSocket client: slots keep it small.
    __slots__ = (
        "maxSize",
        "messageType",
        "_opcode",
        "_shortHeaders",
        "_unparsed",
        "_messages",
        "_replies",
        "_fragmented",
        "_fragmentSize",
        "_betweenFrames",
        "_ended",
        "closeSent",
        "closeCode",
        "_parser",
    )

    def __init__(self, maxSize: int, messageType: str = "binary") -> None:
        """
        @param maxSize: the longest message accepted, in bytes.
        @param messageType: C{"binary"} or C{"text"}: the type of the
            messages sent to the client.
        @raise ValueError: for another message type.
        """
        if messageType not in MESSAGE_TYPES:
            raise ValueError(f"WebSocket message type {messageType!r}")
        self.maxSize = maxSize
        self.messageType = messageType
        self._opcode = TEXT if messageType == "text" else BINARY
        self._shortHeaders = _SHORT_HEADERS[self._opcode]
        self._unparsed = _Unparsed()
        self._messages: list[bytes] = []
        self._replies: list[bytes] = []
        # Whether a fragmented message is in progress, and its length so far
        # (for the limit and the error's detail); its pieces and its UTF-8
        # decoder are the parser's own. And whether the parser waits for
        # the next frame or inside one (for finish).
        self._fragmented = False
        self._fragmentSize = 0
        self._betweenFrames = True
        self._ended = False
        self.closeSent = False
        self.closeCode: int | None = None
        self._parser = self._parse()
        next(self._parser)

    def feed(self, data: bytes) -> Decoded:
        """
        Read one chunk of client bytes.

        Once a result has an C{end}, later chunks are not read: the result is
        empty.
        """
        if self._ended:
            return Decoded([], b"", None)
        self._unparsed.data += data
        end: ClientClosed | WebSocketError | None = None
        try:
            next(self._parser)
        except StopIteration as closed:
            end = closed.value
        except ProtocolError as error:
            end = WebSocketError(PROTOCOL_ERROR, MALFORMED, str(error))
        except UnicodeDecodeError as error:
            # RFC 6455 section 8.1: invalid UTF-8 in a text message (or a
            # Close reason) fails the connection with 1007.
            end = WebSocketError(
                INVALID_DATA,
                MALFORMED,
                f"text not UTF-8: {error.reason} at byte {error.start}",
            )
        except PayloadTooBig as error:
            size = self._fragmentSize + (error.size or 0)
            end = WebSocketError(
                MESSAGE_TOO_BIG,
                TOO_LONG,
                f"message of at least {size} bytes over the limit of {self.maxSize}",
            )
        messages, self._messages = self._messages, []
        if self._replies:
            reply = b"".join(self._replies)
            self._replies = []
        else:
            reply = b""
        if end is None:
            if self.closeSent:
                # The gateway's Close is out: only the client's Close matters.
                return Decoded([], b"", None)
            return Decoded(messages, reply, None)
        self._ended = True
        if self.closeSent:
            return Decoded([], b"", end)
        if isinstance(end, WebSocketError):
            end.messages = messages
            reply += self.close(end.closeCode, end.detail)
        return Decoded(messages, reply, end)

    def finish(self) -> WebSocketError | None:
        """
        The client's TCP stream has ended without a Close frame.

        @return: a L{TRUNCATED} error when it ended inside a frame or a
            fragmented message; None when it ended between messages.
        """
        if self._ended:
            return None
        self._ended = True
        if self._betweenFrames and not self._fragmented:
            return None
        return WebSocketError(
            PROTOCOL_ERROR,
            TRUNCATED,
            "stream ended inside a "
            + ("fragmented message" if self._betweenFrames else "frame"),
        )

    def encode(self, messages: list[bytes], within: bytes = b"") -> bytes:
        """
        Frame every backend message, in order, into one bytes object.

        The signature is L{Framing.encode}'s, so that this object can be the
        encoding side of a translator; C{within} is not needed.

        Once the gateway's Close has been sent, nothing more may be: the
        result is empty.

        @raise WebSocketError: with reason L{UNENCODABLE} and close code
            L{INTERNAL_ERROR} when the message type is text and a payload is
            not UTF-8; its C{messages} are the ones before it.
        """
        if self.closeSent:
            return b""
        if self._opcode is TEXT:
            self._checkText(messages)
        headers = self._shortHeaders
        try:
            if len(messages) == 1:
                # One message per chunk, as request/response traffic has it.
                return headers[len(messages[0])] + messages[0]
            # Headers looked up by map, interleaved with the payloads by
            # slice assignment, joined once: C-level iteration throughout.
            parts: list[bytes] = [b""] * (2 * len(messages))
            parts[0::2] = map(headers.__getitem__, map(len, messages))
        except IndexError:
            # A payload longer than a two-byte header allows.
            return self._encodeLong(messages)
        parts[1::2] = messages
        return b"".join(parts)

    def _encodeLong(self, messages: list[bytes]) -> bytes:
        headers = self._shortHeaders
        opcode = self._opcode
        parts = []
        for message in messages:
            if len(message) <= MAX_CONTROL_PAYLOAD:
                parts.append(headers[len(message)])
                parts.append(message)
            else:
                parts.append(_serverFrame(opcode, message))
        return b"".join(parts)

    def _checkText(self, messages: list[bytes]) -> None:
        for index, message in enumerate(messages):
            try:
                message.decode()
            except UnicodeDecodeError as error:
                raise WebSocketError(
                    INTERNAL_ERROR,
                    UNENCODABLE,
                    f"payload of {len(message)} bytes cannot be sent as text: "
                    f"not UTF-8 ({error.reason} at byte {error.start})",
                    messages[:index],
                ) from None

    def close(self, code: int, reason: str = "") -> bytes:
        """
        The gateway's Close frame, with C{code} and C{reason} (cut to the 123
        bytes a Close frame carries).

        Only one is ever sent (RFC 6455 section 5.5.1): once it has been,
        the result is empty, and L{encode} and L{feed} give nothing more but
        the client's Close. C{closeSent} and C{closeCode} tell whether it
        has been sent and with which code (for the pair's close log line).

        @param code: one of L{CLOSE_CODES}.
        @raise ValueError: for another code.
        """
        if code not in CLOSE_CODES:
            raise ValueError(f"close code {code} is not one the gateway sends")
        if self.closeSent:
            return b""
        self.closeSent = True
        self.closeCode = code
        payload = Close(code, _closeReason(reason)).serialize()
        return _serverFrame(CLOSE, payload)

    def _parse(self) -> Generator[None, None, ClientClosed]:
        """
        Read frames for as long as the client sends them; return at its Close.

        Runs until it needs more bytes each time L{feed} steps it. Raises
        websockets' L{ProtocolError} or L{PayloadTooBig}, or
        L{UnicodeDecodeError}, when the client breaks the rules.
        """
        unparsed = self._unparsed.data
        readExact = self._unparsed.readExact
        parse = Frame.parse
        maxSize = self.maxSize
        pieces: list[bytes] = []
        text = False
        decoder = codecs.getincrementaldecoder("utf-8")()
        while True:
            while not unparsed:
                self._betweenFrames = True
                yield
            self._betweenFrames = False
            # The limit on the frame is the room left in the message, but a
            # control frame between fragments may carry 125 bytes whatever
            # the room: the frame's own check refuses longer ones.
            room = maxSize - self._fragmentSize
            frame = yield from parse(
                readExact,
                mask=True,
                max_size=room if room > MAX_CONTROL_PAYLOAD else MAX_CONTROL_PAYLOAD,
                extensions=_NO_EXTENSIONS,
            )
            opcode = frame.opcode
            # Bytes: a client's frames are masked, and unmasking gives bytes
            # (websockets types the attribute wider, for its other paths).
            data = cast(bytes, frame.data)
            if opcode is BINARY or opcode is TEXT:
                if self._fragmented:
                    raise ProtocolError("expected a continuation frame")
                if len(data) > room:
                    raise PayloadTooBig(len(data), maxSize)
                if frame.fin:
                    if opcode is TEXT:
                        data.decode()
                    self._messages.append(data)
                    continue
                self._fragmented = True
                self._fragmentSize = len(data)
                pieces = [data]
                text = opcode is TEXT
                if text:
                    decoder.reset()
                    # Fails as soon as the bytes cannot start valid text
                    # (RFC 6455 section 8.1), not at the last fragment.
                    decoder.decode(data)
            elif opcode is CONT:
                if not self._fragmented:
                    raise ProtocolError("unexpected continuation frame")
                if len(data) > room:
                    raise PayloadTooBig(len(data), maxSize)
                pieces.append(data)
                if text:
                    decoder.decode(data, frame.fin)
                if frame.fin:
                    self._messages.append(b"".join(pieces))
                    pieces = []
                    self._fragmented = False
                    self._fragmentSize = 0
                else:
                    self._fragmentSize += len(data)
            elif opcode is PING:
                # RFC 6455 section 5.5.2; the gateway's own Close ends pongs.
                if not self.closeSent:
                    self._replies.append(_serverFrame(PONG, data))
            elif opcode is CLOSE:
                if self._fragmented:
                    raise ProtocolError("Close frame inside a fragmented message")
                close = Close.parse(data)
                return ClientClosed(close.code, close.reason)
            # A pong (unsolicited: the gateway sends no pings) needs nothing.
