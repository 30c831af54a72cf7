"""
Netstrings: the payload's length in decimal, a colon, the payload, a comma.
"""

from itertools import chain, repeat

from gateway.codec._base import MALFORMED, TOO_LONG, TRUNCATED, FramingError

_COMMA = ord(",")
_ZERO = ord("0")


class Netstring:
    """
    C{b"5:hello,"}: digits without leading zeros, a colon, payload, a comma.
    """

    name = "netstring"
    overhead = None

    def __init__(self, maxSize: int) -> None:
        self.maxSize = maxSize
        self._maxDigits = len(str(maxSize))

    def decode(self, data: bytes) -> tuple[list[bytes], bytes]:
        messages: list[bytes] = []
        append = messages.append
        maxSize = self.maxSize
        maxDigits = self._maxDigits
        offset = 0
        end = len(data)
        while offset < end:
            colon = data.find(b":", offset, offset + maxDigits + 1)
            if colon == -1:
                head = data[offset : offset + maxDigits + 1]
                if not head.isdigit():
                    raise FramingError(
                        MALFORMED,
                        f"netstring length {head!r} is not a number",
                        messages,
                    )
                if len(head) > maxDigits:
                    raise FramingError(
                        TOO_LONG,
                        f"netstring length over the limit of {maxSize}",
                        messages,
                    )
                break
            digits = data[offset:colon]
            if not digits.isdigit() or (len(digits) > 1 and digits[0] == _ZERO):
                raise FramingError(
                    MALFORMED, f"netstring length {digits!r} is not a number", messages
                )
            length = int(digits)
            if length > maxSize:
                raise FramingError(
                    TOO_LONG,
                    f"netstring length {length} over the limit of {maxSize}",
                    messages,
                )
            stop = colon + 1 + length
            if stop >= end:
                break
            if data[stop] != _COMMA:
                raise FramingError(
                    MALFORMED, "netstring payload not followed by a comma", messages
                )
            append(data[colon + 1 : stop])
            offset = stop + 1
        return messages, data[offset:] if offset else data

    def finish(self, rest: bytes) -> list[bytes]:
        if rest:
            raise FramingError(
                TRUNCATED, f"stream ended inside a netstring ({len(rest)} bytes)"
            )
        return []

    def encode(self, messages: list[bytes], within: bytes = b"") -> bytes:
        heads = map(b"%d:".__mod__, map(len, messages))
        return b"".join(chain.from_iterable(zip(heads, messages, repeat(b","))))
