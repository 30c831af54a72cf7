"""
Framings that end each message with a delimiter: C{lf} and C{crlf}.
"""

from gateway.codec._base import TOO_LONG, UNENCODABLE, FramingError


class Delimited:
    """
    Messages each followed by C{delimiter}; a payload may not contain it.
    """

    def __init__(self, delimiter: bytes, maxSize: int, name: str) -> None:
        self.name = name
        self.maxSize = maxSize
        self.delimiter = delimiter
        self.overhead = len(delimiter)

    def decode(self, data: bytes) -> tuple[list[bytes], bytes]:
        messages = data.split(self.delimiter)
        rest = messages.pop()
        maxSize = self.maxSize
        # The total payload bounds every single one, which saves the scan in
        # the common case of a chunk of short messages.
        payload = len(data) - len(rest) - len(messages) * len(self.delimiter)
        if payload > maxSize and max(map(len, messages)) > maxSize:
            good = []
            for message in messages:
                if len(message) > maxSize:
                    break
                good.append(message)
            raise FramingError(
                TOO_LONG,
                f"{self.name} message of {len(message)} bytes,"
                f" over the limit of {maxSize}",
                good,
            )
        if len(rest) > maxSize:
            raise FramingError(
                TOO_LONG,
                f"{self.name} message longer than the limit of {maxSize} bytes"
                " and still not terminated",
                messages,
            )
        return messages, rest

    def finish(self, rest: bytes) -> list[bytes]:
        # An unterminated last line is still a message; a lone CR at its end
        # is the first half of a CRLF that never came.
        if self.delimiter == b"\r\n" and rest.endswith(b"\r"):
            rest = rest[:-1]
        return [rest] if rest else []

    def encode(self, messages: list[bytes]) -> bytes:
        delimiter = self.delimiter
        data = delimiter.join([*messages, b""])
        # Any delimiter beyond the ones joined in came from inside a payload.
        if data.count(delimiter) != len(messages):
            good = []
            for message in messages:
                if delimiter in message:
                    break
                good.append(message)
            raise FramingError(
                UNENCODABLE,
                f"payload contains the {self.name} delimiter {delimiter!r}",
                good,
            )
        return data
