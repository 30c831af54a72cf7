"""
Framings that put each payload's length before it: C{int8}, C{int16}, C{int32}.
"""

import struct

from gateway.codec._base import TOO_LONG, TRUNCATED, UNENCODABLE, FramingError

_FORMATS = {1: ">B", 2: ">H", 4: ">I"}


class LengthPrefixed:
    """
    An unsigned big-endian length of C{prefixSize} bytes, then the payload.
    """

    def __init__(self, prefixSize: int, maxSize: int) -> None:
        self.name = f"int{prefixSize * 8}"
        self.maxSize = maxSize
        self.prefixSize = prefixSize
        self.overhead = prefixSize
        self.prefixLimit = 2 ** (prefixSize * 8) - 1
        header = struct.Struct(_FORMATS[prefixSize])
        self._unpackFrom = header.unpack_from
        self._pack = header.pack

    def decode(self, data: bytes) -> tuple[list[bytes], bytes]:
        messages: list[bytes] = []
        append = messages.append
        unpackFrom = self._unpackFrom
        prefixSize = self.prefixSize
        maxSize = self.maxSize
        offset = 0
        end = len(data)
        lastHeader = end - prefixSize
        # One test per frame for both ways out of the loop: the frame is
        # incomplete, or its header alone is over the limit.
        while offset <= lastHeader:
            (length,) = unpackFrom(data, offset)
            start = offset + prefixSize
            stop = start + length
            if stop > end or length > maxSize:
                break
            append(data[start:stop])
            offset = stop
        else:
            return messages, data[offset:] if offset else data
        if length > maxSize:
            # Refused on the header alone, before buffering any body.
            raise FramingError(
                TOO_LONG,
                f"{self.name} length {length} over the limit of {maxSize}",
                messages,
            )
        return messages, data[offset:] if offset else data

    def finish(self, rest: bytes) -> list[bytes]:
        if rest:
            raise FramingError(
                TRUNCATED,
                f"stream ended inside a {self.name} frame ({len(rest)} bytes)",
            )
        return []

    def encode(self, messages: list[bytes], within: bytes = b"") -> bytes:
        pack = self._pack
        try:
            if len(messages) == 1:
                # One message per chunk, as request/response traffic has it.
                return pack(len(messages[0])) + messages[0]
            # Headers made by map and interleaved with the payloads by slice
            # assignment, then joined once: C-level iteration throughout.
            parts: list[bytes] = [b""] * (2 * len(messages))
            parts[0::2] = map(pack, map(len, messages))
        except struct.error:
            # A length the header cannot hold: packing checks every one.
            good = []
            for message in messages:
                if len(message) > self.prefixLimit:
                    break
                good.append(message)
            raise FramingError(
                UNENCODABLE,
                f"payload of {len(message)} bytes does not fit a {self.name} length",
                good,
            )
        parts[1::2] = messages
        return b"".join(parts)
