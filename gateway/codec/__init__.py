"""
Message framings: whole read chunks in, messages and the unused rest out.

Every framing turns a chunk of bytes into all the complete messages it holds
plus the bytes of an incomplete one, and a list of messages into one bytes
object. Work is done per chunk with C-level bytes operations wherever the
framing allows it, so that translation costs little per message.

No Twisted imports here: this is plain bytes in, bytes out.
"""

from collections.abc import Callable

from gateway.codec._base import Framing, FramingError, Translation
from gateway.codec.delimited import Delimited
from gateway.codec.netstring import Netstring
from gateway.codec.prefixed import LengthPrefixed
from gateway.codec.translator import ChunkTranslator, Translator, translator

__all__ = [
    "FRAMINGS",
    "ChunkTranslator",
    "Framing",
    "FramingError",
    "Translation",
    "Translator",
    "framing",
    "translator",
]

FRAMINGS: dict[str, Callable[[int], Framing]] = {
    "lf": lambda maxSize: Delimited(b"\n", maxSize, "lf"),
    "crlf": lambda maxSize: Delimited(b"\r\n", maxSize, "crlf"),
    "int8": lambda maxSize: LengthPrefixed(1, maxSize),
    "int16": lambda maxSize: LengthPrefixed(2, maxSize),
    "int32": lambda maxSize: LengthPrefixed(4, maxSize),
    "netstring": lambda maxSize: Netstring(maxSize),
}


def framing(name: str, maxSize: int) -> Framing:
    """
    The framing called C{name}, accepting payloads of up to C{maxSize} bytes.

    @raise KeyError: for a name not in L{FRAMINGS}.
    """
    return FRAMINGS[name](maxSize)
