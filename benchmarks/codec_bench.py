"""
What translating a chunk costs per message, reference against accelerator.

    python -m benchmarks.codec_bench [--chunk BYTES] [--total BYTES] [--reps N]

A stream of equal messages framed as the source framing is cut into chunks
of C{--chunk} bytes (messages straddle the cuts, as reads do) and fed to a
fresh translator of each implementation; the best of C{--reps} runs is
reported in nanoseconds per message. Prints a Markdown table.
"""

import argparse
import time
from collections.abc import Callable
from functools import partial

from gateway.codec import framing
from gateway.codec.accelerated import speedups
from gateway.codec.translator import ChunkTranslator, Translator

# The pairs the gateway's default framings meet, each way.
PAIRS = [("lf", "int32"), ("int32", "lf")]
SIZES = [64, 1024]


def chunks(source: str, size: int, chunk: int, total: int) -> tuple[list[bytes], int]:
    """
    About C{total} bytes of messages of C{size} bytes (a framing's payload
    of C{size - 1} bytes plus its newline, so that an lf message is C{size}
    bytes on the wire) framed as C{source}, cut every C{chunk} bytes; and
    how many messages they hold.
    """
    payload = b"x" * (size - 1)
    frame = framing(source, size).encode([payload])
    count = max(1, total // len(frame))
    stream = frame * count
    return [stream[i : i + chunk] for i in range(0, len(stream), chunk)], count


def perMessage(
    make: Callable[[], ChunkTranslator], pieces: list[bytes], count: int, reps: int
) -> float:
    """
    The best time over C{reps} runs to translate every piece, in ns per
    message; each run's output is checked to hold every message.
    """
    best = float("inf")
    for _ in range(reps):
        translator = make()
        feed = translator.feed
        got = 0
        start = time.perf_counter_ns()
        for piece in pieces:
            got += feed(piece).messages
        elapsed = time.perf_counter_ns() - start
        if got != count:
            raise AssertionError(f"translated {got} messages of {count}")
        best = min(best, elapsed / count)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--chunk", type=int, default=65536, help="bytes per read")
    parser.add_argument("--total", type=int, default=16 << 20, help="bytes per run")
    parser.add_argument("--reps", type=int, default=5)
    options = parser.parse_args(argv)
    limit = 65536
    print(
        f"{options.chunk}-byte chunks, {options.total >> 20} MiB per run,"
        f" best of {options.reps}; ns per message"
    )
    print()
    print("| translation | message | Python | C | speed-up |")
    print("|---|---|---:|---:|---:|")
    for source, target in PAIRS:
        for size in SIZES:
            pieces, count = chunks(source, size, options.chunk, options.total)
            python = perMessage(
                partial(Translator, framing(source, limit), framing(target, limit)),
                pieces,
                count,
                options.reps,
            )
            if speedups is None:
                compiled = "not built"
                ratio = ""
            else:
                seconds = perMessage(
                    partial(speedups.Translator, source, target, limit),
                    pieces,
                    count,
                    options.reps,
                )
                compiled = f"{seconds:.1f}"
                ratio = f"{python / seconds:.1f}x"
            print(
                f"| {source} -> {target} | {size} B | {python:.1f} |"
                f" {compiled} | {ratio} |"
            )


if __name__ == "__main__":
    main()
