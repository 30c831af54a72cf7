"""
What every framing offers, and the error a peer's bytes can cause.
"""

from typing import NamedTuple, Protocol

# Reasons, as used in logs and in the protocol error metric.
TOO_LONG = "too_long"
MALFORMED = "malformed"
TRUNCATED = "truncated"
UNENCODABLE = "unencodable"


class FramingError(Exception):
    """
    Bytes that break a framing's rules.

    @ivar reason: a short stable name (L{TOO_LONG}, L{MALFORMED},
        L{TRUNCATED}, L{UNENCODABLE}) for metrics and logs.
    @ivar detail: a sentence for humans.
    @ivar messages: the complete, valid messages that came before the
        offending bytes, so that nothing already accepted is lost.
    """

    def __init__(self, reason: str, detail: str, messages: list[bytes] | None = None):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail
        self.messages = messages if messages is not None else []

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class Framing(Protocol):
    """
    One way of marking where messages begin and end on a byte stream.
    """

    name: str
    maxSize: int

    @property
    def overhead(self) -> int | None:
        """
        The bytes of framing each message adds to its payload, when that is
        the same for every message (so that the payload bytes of a decoded
        chunk are known without summing the messages); None when it varies.
        """

    def decode(self, data: bytes) -> tuple[list[bytes], bytes]:
        """
        Split C{data} into every complete message and the incomplete rest.

        @raise FramingError: when C{data} breaks the framing or holds a
            message longer than C{maxSize}.
        """

    def finish(self, rest: bytes) -> list[bytes]:
        """
        The messages the incomplete rest stands for once the stream has ended.

        @raise FramingError: when the rest is a truncated frame.
        """

    def encode(self, messages: list[bytes], within: bytes = b"") -> bytes:
        """
        Frame every message, in order, into one bytes object.

        C{within}, when given, holds every payload (the chunk they were
        decoded from): a framing that must check payloads for a byte
        sequence may search it once instead of the payloads.

        @raise FramingError: with reason L{UNENCODABLE} when a payload cannot
            be carried by this framing; its C{messages} are the ones before it.
        """


class Translation(NamedTuple):
    """
    What translating one chunk (or the end of a stream) gives.

    @ivar data: the bytes for the other side. After an error, the
        translation of the good messages that came before the bad bytes (the
        salvage), which are still to be delivered.
    @ivar messages: how many messages C{data} holds.
    @ivar payload: how many payload bytes they hold, framing not counted.
    @ivar error: the L{FramingError} that stopped the chunk, or None when the
        whole chunk was good. The compiled translator's has no C{messages}
        (it makes no Python object per message).
    """

    data: bytes
    messages: int
    payload: int
    error: FramingError | None
