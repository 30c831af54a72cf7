"""
Translation chunk by chunk, by the compiled accelerator when there is one.

L{translator} is the one place that chooses: C{gateway.codec._speedups}
(built from C{_speedups.c} when a compiler was there at install time) or
L{PythonTranslator}, the reference built on the framings of this package.
Both take the same chunks and give the same L{Result}s, byte for byte:
tests/test_speedups.py drives them side by side.

C{GATEWAY_NO_EXTENSIONS=1} in the environment forces the reference (the
accelerator is then not even imported), as a way out should it misbehave.
"""

import os
from types import ModuleType
from typing import NamedTuple, Protocol

from gateway.codec import framing
from gateway.codec._base import FramingError

__all__ = [
    "ACCELERATED",
    "PythonTranslator",
    "Result",
    "Translator",
    "speedups",
    "translator",
]


class Result(NamedTuple):
    """
    What one chunk (or the end of the stream) translates to.

    @ivar data: the bytes for the other side. After an error, the
        translation of the good messages before the bad one (the salvage).
    @ivar messages: how many messages C{data} holds.
    @ivar payload: how many payload bytes they hold, framing not counted.
    @ivar error: the first protocol error (its C{reason} is one of
        C{gateway.codec._base}'s), or None. With the accelerator, its
        C{messages} is empty: no Python object is made per message.
    """

    data: bytes
    messages: int
    payload: int
    error: FramingError | None


class Translator(Protocol):
    """
    One direction of a connection pair: one framing in, another out.
    """

    @property
    def rest(self) -> bytes:
        """
        The bytes of the incomplete message carried over (at most the size
        limit and one frame's framing).
        """

    def feed(self, data: bytes) -> Result:
        """
        Translate one chunk, with the incomplete message carried over from
        the previous one. After an error the carried-over bytes are left as
        they were; the pair is expected to close.
        """

    def finish(self) -> Result:
        """
        Translate what is left once the sending side has ended its stream:
        an unterminated last C{lf}/C{crlf} line is a message; a partial
        frame of the other framings is a C{truncated} error.
        """


_NOTHING = Result(b"", 0, 0, None)


class PythonTranslator:
    """
    The reference: the framings' C{decode}, C{encode} and C{finish}.

    A chunk is decoded whole, then encoded; a decoding error (too long,
    malformed) wins over an unencodable payload before it, whose messages
    still bound the salvage.
    """

    __slots__ = ("_decoder", "_encoder", "_overhead", "_rest")

    def __init__(self, source: str, target: str, maxSize: int) -> None:
        self._decoder = framing(source, maxSize)
        self._encoder = framing(target, maxSize)
        self._overhead = self._decoder.overhead
        self._rest = b""

    @property
    def rest(self) -> bytes:
        """
        The bytes of the incomplete message carried over.
        """
        return self._rest

    def feed(self, data: bytes) -> Result:
        if self._rest:
            data = self._rest + data
        try:
            messages, rest = self._decoder.decode(data)
            count = len(messages)
            out = self._encoder.encode(messages, data) if count else b""
        except FramingError as error:
            return self._salvaged(error)
        self._rest = rest
        if not count:
            return _NOTHING
        if self._overhead is None:
            payload = sum(map(len, messages))
        else:
            payload = len(data) - len(rest) - count * self._overhead
        return Result(out, count, payload, None)

    def finish(self) -> Result:
        rest, self._rest = self._rest, b""
        try:
            messages = self._decoder.finish(rest)
            if not messages:
                return _NOTHING
            out = self._encoder.encode(messages)
        except FramingError as error:
            return self._salvaged(error)
        return Result(out, len(messages), sum(map(len, messages)), None)

    def _salvaged(self, error: FramingError) -> Result:
        # Messages that came before the bad ones were accepted: deliver them,
        # up to the first the other side cannot carry.
        good = error.messages
        try:
            salvage = self._encoder.encode(good)
        except FramingError as inner:
            good = inner.messages
            salvage = self._encoder.encode(good)
        return Result(salvage, len(good), sum(map(len, good)), error)


def _forcedOff() -> bool:
    return os.environ.get("GATEWAY_NO_EXTENSIONS", "") not in ("", "0")


def _load() -> ModuleType | None:
    if _forcedOff():
        return None
    try:
        from gateway.codec import _speedups
    except ImportError:
        # Installed where no compiler was: the reference does the work.
        return None
    _speedups.configure(Result, FramingError)
    return _speedups


#: The compiled module, or None when it is not built or is switched off.
speedups: ModuleType | None = _load()

#: Whether L{translator} gives compiled translators.
ACCELERATED = speedups is not None


def translator(source: str, target: str, maxSize: int) -> Translator:
    """
    A translator of messages framed as C{source} into C{target}'s framing
    (names of L{gateway.codec.FRAMINGS}), refusing payloads over C{maxSize}
    bytes: the compiled one when there is one, else L{PythonTranslator}.

    @raise KeyError: for a framing name that does not exist.
    """
    if speedups is not None and 0 <= maxSize <= speedups.MAX_LIMIT:
        return speedups.Translator(source, target, maxSize)
    return PythonTranslator(source, target, maxSize)
