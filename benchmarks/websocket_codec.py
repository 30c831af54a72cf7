"""
The cost per message of gateway.codec.websocket, without sockets.

    .venv/bin/python -m benchmarks.websocket_codec [--chunks N]

Decoding: masked client frames of 64-byte payloads, 64 KiB at a time, one
feed per chunk as the gateway reads them. Encoding: the same number of
64-byte backend messages per call, and one message per call. "library
alone" drives websockets' frame parser over the same chunks and the same
buffer with nothing else, to show how much of the decoding cost is the
library's.

Times are CPU time of this process (time.process_time), the best of several
runs, so that other work on a shared machine weighs less on them.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from websockets.frames import BINARY, TEXT, Frame

from gateway.codec import framing
from gateway.codec.websocket import ClientWebSocket, _Unparsed

PAYLOAD = 64
CHUNK = 65536
LIMIT = 65536
RUNS = 7


def best(run: Callable[[], int]) -> float:
    """
    The least CPU seconds per message over L{RUNS} runs of C{run}, which
    returns how many messages it handled.
    """
    times = []
    for _ in range(RUNS):
        started = time.process_time()
        count = run()
        times.append((time.process_time() - started) / count)
    return min(times)


def libraryAlone(chunk: bytes, chunks: int) -> int:
    unparsed = _Unparsed()
    payloads: list[bytes] = []

    def parser():
        while True:
            frame = yield from Frame.parse(
                unparsed.readExact, mask=True, max_size=LIMIT, extensions=()
            )
            payloads.append(frame.data)

    running = parser()
    next(running)
    count = 0
    for _ in range(chunks):
        unparsed.data += chunk
        next(running)
        count += len(payloads)
        payloads.clear()
    return count


def decode(chunk: bytes, chunks: int) -> int:
    codec = ClientWebSocket(LIMIT)
    return sum(len(codec.feed(chunk).messages) for _ in range(chunks))


def upstream(chunk: bytes, chunks: int) -> int:
    """
    What the gateway does per client chunk: decode, then frame for an
    int32 backend.
    """
    codec = ClientWebSocket(LIMIT)
    backend = framing("int32", LIMIT)
    count = 0
    for _ in range(chunks):
        messages = codec.feed(chunk).messages
        backend.encode(messages)
        count += len(messages)
    return count


def encode(messageType: str, messages: list[bytes], calls: int) -> int:
    codec = ClientWebSocket(LIMIT, messageType)
    for _ in range(calls):
        codec.encode(messages)
    return calls * len(messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--chunks", type=int, default=100, help="chunks per run")
    chunks = parser.parse_args().chunks
    payload = os.urandom(PAYLOAD)
    text = b"t" * PAYLOAD
    binaryFrame = Frame(BINARY, payload).serialize(mask=True)
    perChunk = CHUNK // len(binaryFrame)
    binaryChunk = binaryFrame * perChunk
    textChunk = Frame(TEXT, text).serialize(mask=True) * perChunk
    rows = [
        ("decode, library alone", lambda: libraryAlone(binaryChunk, chunks)),
        ("decode binary", lambda: decode(binaryChunk, chunks)),
        ("decode text", lambda: decode(textChunk, chunks)),
        ("decode binary + int32 encode", lambda: upstream(binaryChunk, chunks)),
        ("encode binary", lambda: encode("binary", [payload] * perChunk, chunks)),
        ("encode text", lambda: encode("text", [text] * perChunk, chunks)),
        (
            "encode binary, 1 per call",
            lambda: encode("binary", [payload], 100 * chunks),
        ),
    ]
    print(f"{PAYLOAD}-byte messages, {perChunk} per {CHUNK}-byte chunk\n")
    print("| what | ns/message | messages/s |")
    print("|---|---:|---:|")
    for name, run in rows:
        seconds = best(run)
        print(f"| {name} | {seconds * 1e9:,.0f} | {1 / seconds:,.0f} |")


if __name__ == "__main__":
    main()
