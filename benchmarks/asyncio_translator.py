"""
An asyncio translator (on uvloop when installed), as a reference point.

Streams, the way most asyncio code is written: per client, one task reads
lines with C{readline} and writes length-prefixed frames to the backend,
another reads frames with C{readexactly} and writes lines back; both await
C{drain()} after each write, which is asyncio's flow control. An unterminated
last line is sent on as a last message; end of input is passed on as a
half-close.

    python -m benchmarks.asyncio_translator --backend-port PORT

prints ``asyncio translator listening on 127.0.0.1:PORT`` once bound.
"""

import argparse
import asyncio
import struct
from collections.abc import Awaitable, Callable

from benchmarks.util import (
    LOOPBACK,
    MAX_MESSAGE_SIZE,
    loop_factory,
    loopback_host,
    raise_nofile_limit,
    run_async,
    serve_until_signalled,
)

INT32 = struct.Struct(">I")
# StreamReader's limit bounds a line including its newline.
STREAM_LIMIT = MAX_MESSAGE_SIZE + 1


async def upstream(lines: asyncio.StreamReader, frames: asyncio.StreamWriter) -> None:
    """
    Client lines to backend frames, until the client's end of input.
    """
    while True:
        line = await lines.readline()
        if not line:
            break
        payload = line[:-1] if line.endswith(b"\n") else line
        frames.write(INT32.pack(len(payload)) + payload)
        await frames.drain()
    if frames.can_write_eof():
        frames.write_eof()


async def downstream(frames: asyncio.StreamReader, lines: asyncio.StreamWriter) -> None:
    """
    Backend frames to client lines, until the backend closes.
    """
    while True:
        try:
            header = await frames.readexactly(INT32.size)
        except asyncio.IncompleteReadError:
            break
        (length,) = INT32.unpack(header)
        if length > MAX_MESSAGE_SIZE:
            break
        payload = await frames.readexactly(length)
        lines.write(payload + b"\n")
        await lines.drain()


def translator(
    backend_host: str, backend_port: int
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """
    The per-client connection handler for C{asyncio.start_server}.
    """

    async def handle(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            backend_reader, backend_writer = await asyncio.open_connection(
                backend_host, backend_port, limit=STREAM_LIMIT
            )
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(
                upstream(client_reader, backend_writer),
                downstream(backend_reader, client_writer),
            )
        except (OSError, ValueError, asyncio.IncompleteReadError):
            # A reset, or a line over the limit: drop the pair.
            pass
        finally:
            backend_writer.close()
            client_writer.close()

    return handle


async def serve(host: str, port: int, backend_host: str, backend_port: int) -> None:
    """
    Listen, announce the port, translate until SIGTERM or SIGINT.
    """
    server = await asyncio.start_server(
        translator(backend_host, backend_port),
        host,
        port,
        limit=STREAM_LIMIT,
        backlog=4096,
    )
    await serve_until_signalled(server, f"asyncio translator ({loop_factory()[1]})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--host", type=loopback_host, default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backend-host", type=loopback_host, default=LOOPBACK)
    parser.add_argument("--backend-port", type=int, required=True)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    run_async(lambda: serve(args.host, args.port, args.backend_host, args.backend_port))


if __name__ == "__main__":
    main()
