"""
How many bytes a connection's peer has taken: the progress of writes.

The idle timeout counts a write that makes progress as activity (a slow
reader draining a large reply is not idle, SPEC's C{--idle-timeout}). It
learns of that progress lazily, when its timer fires, by comparing what
L{delivered} says with what it said the time before: nothing is done per
chunk.

On Linux, a TCP socket's C{tcpi_bytes_acked} (C{TCP_INFO}, since Linux 4.1)
counts the bytes the peer's kernel has acknowledged: it grows exactly when
the peer reads and so makes room. Elsewhere (another system, a UNIX
socket) the answer is L{None} and the idle timeout counts reads only.

What the peer's kernel acknowledges is what its application has read, in
steps: a receiver reopens a full window only once it has room for a
segment (TCP's silly window avoidance), which on loopback, with its 64 KiB
segments, means after about 64 KiB have been read.
"""

from __future__ import annotations

import socket
import struct
import sys

from twisted.internet.interfaces import ITransport

# Wrappers a connection's socket may sit under: the PROXY header reader, TLS.
_MAX_DEPTH = 4
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked is the __u64 at offset 120.
_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None
_TCP_INFO_SIZE = 232
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 120


def delivered(transport: ITransport) -> int | None:
    """
    How many bytes written to C{transport} (through any protocol wrappers
    above its socket, TLS records included) its peer has acknowledged.

    @return: a count of bytes that only grows, or L{None} when it cannot be
        known.
    """
    if _TCP_INFO is None:
        return None
    sock = _socketOf(transport)
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        # Closed, or not TCP (a UNIX socket).
        return None
    if len(info) < _BYTES_ACKED_OFFSET + _BYTES_ACKED.size:
        # A kernel older than 4.1.
        return None
    return int(_BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0])


def _socketOf(transport: object) -> socket.socket | None:
    for _ in range(_MAX_DEPTH):
        if transport is None:
            return None
        getHandle = getattr(transport, "getHandle", None)
        if getHandle is not None:
            handle = getHandle()
            if isinstance(handle, socket.socket):
                return handle
        # A protocol wrapper (TLS, the PROXY header reader): look under it.
        transport = getattr(transport, "transport", None)
    return None
