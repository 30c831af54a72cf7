"""
One side's byte stream turned into the other side's, chunk by chunk.

No Twisted here: bytes in, a L{Translation} out. L{translator} gives the
compiled translator (L{gateway.codec.accelerated}) when it is built, not
switched off, and handles both framings; else L{Translator}, the pure-Python
reference over the framings of this package. Both follow L{ChunkTranslator}
and give the same results, byte for byte.
"""

from __future__ import annotations

from typing import Protocol

from gateway.codec._base import Framing, FramingError, Translation
from gateway.codec.accelerated import speedups
from gateway.codec.delimited import Delimited
from gateway.codec.netstring import Netstring
from gateway.codec.prefixed import LengthPrefixed

__all__ = ["ChunkTranslator", "Translation", "Translator", "translator"]

_NOTHING = Translation(b"", 0, 0, None)

# Built as a tuple, without the NamedTuple's Python-level __new__: one is
# made per read chunk.
_new = tuple.__new__


class ChunkTranslator(Protocol):
    """
    One direction of a connection pair: one framing in, another out.

    It keeps the bytes of a message that is not complete yet; nothing else.
    After a chunk that gave an error, the stream is broken: the translator
    must not be fed again (if it is, the carried-over bytes are as they were
    before the bad chunk).
    """

    @property
    def rest(self) -> bytes:
        """
        The bytes of the incomplete message carried over (at most the size
        limit and one frame's framing).
        """

    def feed(self, data: bytes) -> Translation:
        """
        Translate one chunk, with the incomplete message carried over from
        the previous one.

        @return: see L{Translation}; its error is the L{FramingError} of the
            chunk breaking either framing.
        """

    def finish(self) -> Translation:
        """
        Translate what is left once the sending side has ended its stream:
        an unterminated last C{lf}/C{crlf} line is a message; a partial
        frame of the other framings is a C{truncated} error.
        """


class Translator:
    """
    The reference L{ChunkTranslator}: the framings' C{decode}, C{encode} and
    C{finish}, for any L{Framing}.

    A chunk is decoded whole, then encoded; a decoding error (too long,
    malformed) wins over an unencodable payload before it, whose messages
    still bound the salvage.
    """

    __slots__ = ("_decoder", "_encoder", "_overhead", "_rest")

    def __init__(self, decoder: Framing, encoder: Framing) -> None:
        self._decoder = decoder
        self._encoder = encoder
        self._overhead = decoder.overhead
        self._rest = b""

    @property
    def rest(self) -> bytes:
        """
        The bytes of the incomplete message carried over.
        """
        return self._rest

    def feed(self, data: bytes) -> Translation:
        """
        Translate one chunk (see L{ChunkTranslator.feed}).
        """
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
        return _new(Translation, (out, count, payload, None))

    def finish(self) -> Translation:
        """
        Translate what is left at the end of the stream (see
        L{ChunkTranslator.finish}).
        """
        rest, self._rest = self._rest, b""
        try:
            messages = self._decoder.finish(rest)
            if not messages:
                return _NOTHING
            out = self._encoder.encode(messages)
        except FramingError as error:
            return self._salvaged(error)
        return Translation(out, len(messages), sum(map(len, messages)), None)

    def _salvaged(self, error: FramingError) -> Translation:
        # Messages that came before the bad ones were accepted: deliver them,
        # up to the first the other side cannot carry.
        good = error.messages
        try:
            salvage = self._encoder.encode(good)
        except FramingError as inner:
            good = inner.messages
            salvage = self._encoder.encode(good)
        return Translation(salvage, len(good), sum(map(len, good)), error)


# The framings the compiled translator implements: another class (a
# WebSocket framing), or a delimiter that is not its name's, is left to the
# reference.
_DELIMITERS = {"lf": b"\n", "crlf": b"\r\n"}


def _compiled(framing: Framing) -> bool:
    if isinstance(framing, Delimited):
        return type(framing) is Delimited and (
            _DELIMITERS.get(framing.name) == framing.delimiter
        )
    if type(framing) is LengthPrefixed:
        return framing.name in ("int8", "int16", "int32")
    return type(framing) is Netstring


def translator(decoder: Framing, encoder: Framing) -> ChunkTranslator:
    """
    A translator of messages framed by C{decoder} into C{encoder}'s framing:
    the compiled one when it is there (L{gateway.codec.accelerated}) and
    takes both framings and their size limit, else the reference
    L{Translator}.
    """
    if (
        speedups is not None
        and _compiled(decoder)
        and _compiled(encoder)
        and decoder.maxSize == encoder.maxSize
        and 0 <= decoder.maxSize <= speedups.MAX_LIMIT
    ):
        compiled: ChunkTranslator = speedups.Translator(
            decoder.name, encoder.name, decoder.maxSize
        )
        return compiled
    return Translator(decoder, encoder)
