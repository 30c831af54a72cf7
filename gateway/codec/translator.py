"""
One side's byte stream turned into the other side's, chunk by chunk.

No Twisted here: bytes in, a L{Translation} out.
"""

from __future__ import annotations

from gateway.codec._base import Framing, FramingError

# What translating one chunk gives: the bytes for the other side, how many
# messages they hold, how many payload bytes those messages carry, and the
# error that stopped the chunk (None when the whole chunk was good). With an
# error, the first three are the translation of the good messages that came
# before the bad bytes, which are still to be delivered.
#
# A plain tuple, not a named one: one is built per read chunk, and a named
# tuple's constructor is a Python-level call.
Translation = tuple[bytes, int, int, FramingError | None]

_NOTHING: Translation = (b"", 0, 0, None)


class Translator:
    """
    Turns one side's byte stream into the other side's, chunk by chunk.

    It keeps the bytes of a message that is not complete yet; nothing else.
    After a chunk that gave an error, the stream is broken: the translator
    must not be fed again.
    """

    def __init__(self, decoder: Framing, encoder: Framing) -> None:
        self._decoder = decoder
        self._encoder = encoder
        self._overhead = decoder.overhead
        self._rest = b""

    def feed(self, data: bytes) -> Translation:
        """
        Translate one chunk.

        @return: see L{Translation}; the error is the L{FramingError} of the
            chunk breaking either framing.
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
        return out, count, payload, None

    def finish(self) -> Translation:
        """
        Translate what is left once the sending side has ended its stream.

        @return: see L{Translation}; a truncated last frame is an error.
        """
        rest, self._rest = self._rest, b""
        try:
            messages = self._decoder.finish(rest)
        except FramingError as error:
            return self._salvaged(error)
        if not messages:
            return _NOTHING
        try:
            out = self._encoder.encode(messages)
        except FramingError as error:
            return self._salvaged(error)
        return out, len(messages), sum(map(len, messages)), None

    def _salvaged(self, error: FramingError) -> Translation:
        # Messages that came before the bad ones were accepted: deliver them.
        # The decoder's error lists them; the encoder may refuse one of them
        # too, and then only those before it are good.
        good = error.messages
        try:
            out = self._encoder.encode(good)
        except FramingError as inner:
            good = inner.messages
            out = self._encoder.encode(good)
        return out, len(good), sum(map(len, good)), error
