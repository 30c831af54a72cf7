"""
A fast echo server for the backend side of the gateway.

It writes back every byte it reads, unparsed: a byte-for-byte echo is a
correct echo of any framing, so it serves int32 frames to the gateway and
the reference translators, and the same frames to raw forwarders.

Reading stops while the write buffer is above the high-water mark, so memory
stays bounded whatever the peer does. A half-close from the peer is answered
after everything read has been written back.

    python -m benchmarks.echo_backend [--port 0]

prints ``echo backend listening on 127.0.0.1:PORT`` once bound.
"""

import argparse
import asyncio
from typing import cast

from benchmarks.util import (
    LOOPBACK,
    loopback_host,
    raise_nofile_limit,
    run_async,
    serve_until_signalled,
)

# Large enough that a stream of big messages is written back in few calls.
READ_HIGH_WATER = 1 << 20


class Echo(asyncio.Protocol):
    """
    Write back what is read; stop reading while the peer does not read.
    """

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=READ_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        # Returning False closes the transport once the echoes are flushed.
        return False

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def serve(host: str, port: int) -> None:
    """
    Listen, announce the port, echo until SIGTERM or SIGINT.
    """
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, host, port, backlog=4096)
    await serve_until_signalled(server, "echo backend")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--host", type=loopback_host, default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    run_async(lambda: serve(args.host, args.port))


if __name__ == "__main__":
    main()
