"""
Load generator: drives a proxy (or the echo backend directly) and checks
every reply's content and order.

Each message is ``CCCCCCSSSSSSSSSS`` (connection id and sequence number, in
hex) padded to the message size with a fixed pattern, then framed: ``lf``
(payload + newline, the gateway's client side) or ``int32`` (what raw
forwarders such as HAProxy pass to the echo backend untouched).

WebSocket clients: ``ws-raw`` sends each message as one WebSocket message
(the gateway's ``--client-framing websocket``), ``ws-int32`` sends each
int32-framed message as one WebSocket message (what websockify forwards to
the echo backend as raw bytes, and answers with messages cut wherever its
reads cut them). Either way the replies' payloads, joined, must be the
stream sent. Client frames are masked with a key of zeros, which RFC 6455
allows a server no way to tell from any other key, so that the load
generator spends nothing on masking.

Replies must come back as the exact byte stream that was sent, so each chunk
read is compared in one go (a memcmp) against the bytes still awaited; only
when that fails is the chunk parsed to say what went wrong (a reply out of
order, another connection's reply, corrupted bytes, bytes never sent). A
failed check is an error in the results, and its connection is closed: it is
never counted as a reply.

Modes:

``throughput``
    C connections, W messages in flight on each: every reply read is
    answered with as many new messages, written as one batch.
``latency``
    C connections, one message in flight on each; reports p50/p99/p999.
``idle``
    Opens C connections, makes one round trip on each so that the proxy's
    backend connection exists, prints a ``ready`` line, and holds them until
    stdin is closed. For measuring the memory of idle pairs.

The first line printed is ``{"event": "window", "start": T0, "end": T1}``
(``time.monotonic``, which is system-wide) so that a parent process can take
CPU samples of the proxy over exactly the measured interval; the last is the
``{"event": "result", ...}`` JSON line.
"""

import argparse
import array
import asyncio
import json
import math
import multiprocessing
import re
import signal
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import cast

from benchmarks.util import (
    LOOPBACK,
    loop_factory,
    loopback_host,
    raise_nofile_limit,
    run_async,
)

# The framings of the messages' byte stream (Verifier), and what clients
# can speak on the wire: those, or WebSocket messages carrying them.
FRAMINGS = ("lf", "int32", "raw")
WIRE_FRAMINGS = ("lf", "int32", "ws-raw", "ws-int32")
WEBSOCKET_PREFIX = "ws-"
MODES = ("throughput", "latency", "idle")

HEADER_SIZE = 16
MAX_CONNECTION_ID = 0xFFFFFF
HEADER = re.compile(rb"([0-9a-f]{6})([0-9a-f]{10})")
# Printable ASCII from "!" to "~": no newline, and a pattern that shows shifts.
PADDING = bytes(range(0x21, 0x7F))
INT32 = struct.Struct(">I")

# Error kinds, as reported in the results.
REORDERED = "reordered"
MISROUTED = "misrouted"
CORRUPTED = "corrupted"
UNEXPECTED = "unexpected"
LOST = "lost"
CONNECT = "connect"

# Time for all workers to connect before the warm-up starts counting.
CONNECT_GRACE = 0.3
# How many errors are described in full in the results.
MAX_DETAILS = 10
# Idle mode: connections being opened at once (Twisted's listen backlog is 50).
IDLE_CONNECT_CONCURRENCY = 40
IDLE_ROUND_TRIP_TIMEOUT = 30.0


# The upgrade request of every WebSocket client (RFC 6455 section 1.3's
# example key: the server's answer is not checked beyond its status).
UPGRADE_REQUEST = (
    b"GET / HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)
END_OF_HEAD = b"\r\n\r\n"
OPCODE_CLOSE = 0x8


def client_frame_header(length: int) -> bytes:
    """
    The header of a final binary client frame of C{length} payload bytes,
    masked with a key of zeros (RFC 6455 section 5.2).
    """
    if length < 126:
        size = bytes([0x80 | length])
    elif length < 1 << 16:
        size = bytes([0x80 | 126]) + length.to_bytes(2, "big")
    else:
        size = bytes([0x80 | 127]) + length.to_bytes(8, "big")
    return b"\x82" + size + b"\x00\x00\x00\x00"


class WebSocketClientSide:
    """
    A WebSocket client's wire, for the load generator: the upgrade, frames
    out, and the payloads of the server's frames in.

    @ivar open: whether the server's 101 has been read.
    """

    def __init__(self, message_size: int) -> None:
        self.header = client_frame_header(message_size)
        self.message_size = message_size
        self.open = False
        self.closed = False
        self._buffer = bytearray()

    def wrap(self, data: bytes) -> bytes:
        """
        C{data}, whole messages of C{message_size} bytes, as client frames.
        """
        size, header = self.message_size, self.header
        return b"".join(
            [header + data[i : i + size] for i in range(0, len(data), size)]
        )

    def feed(self, data: bytes) -> bytes:
        """
        The payload bytes of every complete server frame so far, joined.

        @raise ConnectionError: the upgrade was refused.
        """
        buffer = self._buffer
        buffer += data
        if not self.open:
            end = buffer.find(END_OF_HEAD)
            if end == -1:
                return b""
            status = bytes(buffer[: buffer.find(b"\r\n")])
            if b" 101 " not in status:
                raise ConnectionError(f"upgrade refused: {status!r}")
            del buffer[: end + len(END_OF_HEAD)]
            self.open = True
        payloads = []
        at, end = 0, len(buffer)
        while end - at >= 2:
            length = buffer[at + 1] & 0x7F
            head = 2
            if length == 126:
                if end - at < 4:
                    break
                length = int.from_bytes(buffer[at + 2 : at + 4], "big")
                head = 4
            elif length == 127:
                if end - at < 10:
                    break
                length = int.from_bytes(buffer[at + 2 : at + 10], "big")
                head = 10
            if end - at < head + length:
                break
            if buffer[at] & 0x0F == OPCODE_CLOSE:
                self.closed = True
            else:
                payloads.append(buffer[at + head : at + head + length])
            at += head + length
        del buffer[:at]
        return b"".join(payloads)


class ReplyError(Exception):
    """
    A reply that is not the next echo the connection awaits.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class Verifier:
    """
    One connection's messages: makes them, and checks the replies against them.

    Transport-free, so that tests can feed it crafted bytes.
    """

    def __init__(self, conn_id: int, size: int, framing: str) -> None:
        if not 0 <= conn_id <= MAX_CONNECTION_ID:
            raise ValueError(f"connection id out of range: {conn_id}")
        if size < HEADER_SIZE:
            raise ValueError(f"message size must be at least {HEADER_SIZE} bytes")
        if framing not in FRAMINGS:
            raise ValueError(f"unknown framing {framing!r}")
        self.conn_id = conn_id
        self.size = size
        self.framing = framing
        padding = (PADDING * (size // len(PADDING) + 1))[: size - HEADER_SIZE]
        prefix = b"%06x" % conn_id
        if framing == "lf":
            self._head, self._tail, self._header_at = prefix, padding + b"\n", 0
        elif framing == "raw":
            self._head, self._tail, self._header_at = prefix, padding, 0
        else:
            self._head, self._tail, self._header_at = (
                INT32.pack(size) + prefix,
                padding,
                4,
            )
        self.frame_size = len(self.frame(0))
        self.sent = 0
        self.replies = 0
        self._received = 0
        self._awaited = bytearray()

    def frame(self, seq: int) -> bytes:
        """
        Message number C{seq}, framed.
        """
        return self._head + b"%010x" % seq + self._tail

    def next_messages(self, count: int) -> bytes:
        """
        The next C{count} framed messages, as one string to write; they are
        now awaited as replies.
        """
        head, tail, start = self._head, self._tail, self.sent
        data = b"".join(
            [head + b"%010x" % seq + tail for seq in range(start, start + count)]
        )
        self.sent = start + count
        self._awaited += data
        return data

    def received(self, data: bytes) -> int:
        """
        Check a chunk of reply bytes; return how many replies it completed.

        @raise ReplyError: the chunk is not what was awaited.
        """
        awaited = self._awaited
        if len(data) <= len(awaited) and awaited.startswith(data):
            del awaited[: len(data)]
            self._received += len(data)
            before = self.replies
            self.replies = self._received // self.frame_size
            return self.replies - before
        raise self._diagnose(data)

    def _diagnose(self, data: bytes) -> ReplyError:
        awaited = self._awaited
        common = min(len(data), len(awaited))
        bad = next((i for i in range(common) if data[i] != awaited[i]), common)
        where = f"connection {self.conn_id}"
        if bad == common:
            return ReplyError(
                UNEXPECTED,
                f"{where}: {len(data) - common} bytes beyond the {self.sent} "
                "messages sent",
            )
        offset = self._received + bad
        seq = offset // self.frame_size
        start = seq * self.frame_size
        # The bytes of this reply that came in earlier chunks were as expected.
        earlier = self.frame(seq)[: max(0, self._received - start)]
        rest_at = max(0, start - self._received)
        reply = earlier + data[rest_at : start - self._received + self.frame_size]
        where = f"{where}, reply {seq}"
        match = HEADER.match(reply, self._header_at)
        if match is not None:
            conn_id, got = int(match[1], 16), int(match[2], 16)
            if conn_id != self.conn_id:
                return ReplyError(
                    MISROUTED, f"{where}: got connection {conn_id}'s message {got}"
                )
            if got != seq:
                return ReplyError(REORDERED, f"{where}: got message {got} instead")
        return ReplyError(
            CORRUPTED, f"{where}: byte {offset - start} of the frame differs"
        )


@dataclass
class Config:
    """
    One load generator run.
    """

    port: int
    host: str = LOOPBACK
    framing: str = "lf"
    mode: str = "throughput"
    connections: int = 32
    window: int = 256
    size: int = 64
    duration: float = 10.0
    warmup: float = 1.0
    procs: int = 1


@dataclass
class Tally:
    """
    What one worker process saw.
    """

    replies: int = 0
    measuring: bool = False
    latencies: array.array = field(default_factory=lambda: array.array("q"))
    errors: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.details) < MAX_DETAILS:
            self.details.append(f"{kind}: {detail}")


class LoadClient(asyncio.Protocol):
    """
    Keeps C{window} messages in flight on one connection.
    """

    transport: asyncio.Transport

    def __init__(
        self,
        verifier: Verifier,
        window: int,
        tally: Tally,
        timed: bool,
        websocket: WebSocketClientSide | None = None,
    ):
        self.verifier = verifier
        self.window = window
        self.tally = tally
        self.timed = timed
        self.websocket = websocket
        self.closing = False
        self._sent_at = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.websocket is not None:
            self.transport.write(UPGRADE_REQUEST)
            return
        self._start()

    def _start(self) -> None:
        self._sent_at = time.perf_counter_ns()
        self.write(self.verifier.next_messages(self.window))

    def write(self, data: bytes) -> None:
        if self.websocket is not None:
            data = self.websocket.wrap(data)
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        websocket = self.websocket
        if websocket is not None:
            opened = websocket.open
            try:
                data = websocket.feed(data)
            except ConnectionError as e:
                self.tally.error(CONNECT, str(e))
                self.close()
                return
            if not opened and websocket.open:
                self._start()
        try:
            done = self.verifier.received(data) if data else 0
        except ReplyError as e:
            self.tally.error(e.kind, e.detail)
            self.close()
            return
        if done:
            tally = self.tally
            tally.replies += done
            if self.timed:
                now = time.perf_counter_ns()
                if tally.measuring:
                    tally.latencies.append(now - self._sent_at)
                self._sent_at = now
            self.write(self.verifier.next_messages(done))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.closing = True
            self.tally.error(
                LOST,
                f"connection {self.verifier.conn_id} closed by the peer "
                f"({exc or 'end of stream'}) after {self.verifier.replies} replies",
            )

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.transport.abort()


class IdleClient(asyncio.Protocol):
    """
    Makes one round trip, then stays idle.
    """

    transport: asyncio.Transport

    def __init__(
        self,
        verifier: Verifier,
        tally: Tally,
        websocket: WebSocketClientSide | None = None,
    ) -> None:
        self.verifier = verifier
        self.tally = tally
        self.websocket = websocket
        self.closing = False
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.websocket is None:
            self.transport.write(self.verifier.next_messages(1))
        else:
            self.transport.write(UPGRADE_REQUEST)

    def data_received(self, data: bytes) -> None:
        websocket = self.websocket
        try:
            if websocket is not None:
                opened = websocket.open
                data = websocket.feed(data)
                if not opened and websocket.open:
                    message = self.verifier.next_messages(1)
                    self.transport.write(websocket.wrap(message))
            if not data:
                return
            if self.verifier.received(data) and not self.answered.done():
                self.answered.set_result(None)
        except ReplyError as e:
            self.tally.error(e.kind, e.detail)
            self.close()
        except ConnectionError as e:
            self.tally.error(CONNECT, str(e))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(ConnectionError(f"closed: {exc}"))
        if not self.closing:
            self.closing = True
            self.tally.error(LOST, f"idle connection {self.verifier.conn_id} closed")

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.transport.abort()


def stream_framing(wire: str) -> str:
    """
    The framing of the messages' byte stream for a wire framing.
    """
    return wire.removeprefix(WEBSOCKET_PREFIX)


def websocket_side(wire: str, verifier: Verifier) -> WebSocketClientSide | None:
    """
    A WebSocket client's wire for C{verifier}'s messages, when C{wire} is a
    WebSocket framing.
    """
    if not wire.startswith(WEBSOCKET_PREFIX):
        return None
    return WebSocketClientSide(verifier.frame_size)


async def drive(
    config: Config, conn_ids: list[int], start_at: float, end_at: float
) -> dict:
    """
    One worker: connect, load, and count replies between C{start_at} and
    C{end_at} (C{time.monotonic} values).
    """
    loop = asyncio.get_running_loop()
    tally = Tally()
    timed = config.mode == "latency"
    window = 1 if timed else config.window

    async def connect(conn_id: int) -> LoadClient:
        verifier = Verifier(conn_id, config.size, stream_framing(config.framing))
        websocket = websocket_side(config.framing, verifier)
        _, client = await loop.create_connection(
            lambda: LoadClient(verifier, window, tally, timed, websocket),
            config.host,
            config.port,
        )
        return client

    clients = []
    for outcome in await asyncio.gather(
        *(connect(c) for c in conn_ids), return_exceptions=True
    ):
        if isinstance(outcome, BaseException):
            tally.error(CONNECT, repr(outcome))
        else:
            clients.append(outcome)
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    tally.measuring = True
    replies, cpu, began = tally.replies, time.process_time(), time.monotonic()
    await asyncio.sleep(max(0.0, end_at - time.monotonic()))
    tally.measuring = False
    replies = tally.replies - replies
    elapsed = time.monotonic() - began
    cpu = time.process_time() - cpu
    for client in clients:
        client.close()
    await asyncio.sleep(0)
    return {
        "replies": replies,
        "elapsed": elapsed,
        "cpu": cpu,
        "errors": tally.errors,
        "details": tally.details,
        "latencies": tally.latencies.tobytes(),
    }


def _worker(
    config: Config,
    conn_ids: list[int],
    start_at: float,
    end_at: float,
    queue: "multiprocessing.Queue[dict]",
) -> None:
    queue.put(run_async(lambda: drive(config, conn_ids, start_at, end_at)))


def percentile(ordered: list[int] | array.array, fraction: float) -> float:
    """
    Nearest-rank percentile of an ascending sequence.
    """
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def summarize(config: Config, parts: list[dict]) -> dict:
    """
    Merge the workers' results into the result line.
    """
    errors: dict[str, int] = {}
    details: list[str] = []
    latencies = array.array("q")
    for part in parts:
        for kind, count in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
        details.extend(part["details"])
        latencies.frombytes(part["latencies"])
    messages = sum(p["replies"] for p in parts)
    rate = sum(p["replies"] / p["elapsed"] for p in parts if p["elapsed"] > 0)
    cpu = sum(p["cpu"] / p["elapsed"] for p in parts if p["elapsed"] > 0)
    result = {
        "event": "result",
        **asdict(config),
        "loop": loop_factory()[1],
        "messages": messages,
        "msg_per_s": rate,
        "payload_mb_per_s": rate * config.size / 1e6,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "error_details": details[:MAX_DETAILS],
        "loadgen_cpu_percent": 100.0 * cpu,
        "latency_us": None,
    }
    if config.mode == "latency":
        ordered = sorted(latencies)
        result["latency_us"] = {
            "samples": len(ordered),
            "p50": percentile(ordered, 0.50) / 1000,
            "p99": percentile(ordered, 0.99) / 1000,
            "p999": percentile(ordered, 0.999) / 1000,
        }
    if config.mode == "latency":
        result["window"] = 1
    return result


def run(config: Config, start_at: float, end_at: float) -> dict:
    """
    Spread the connections over C{config.procs} processes and run them.
    """
    ids = list(range(config.connections))
    groups = [ids[i :: config.procs] for i in range(config.procs)]
    groups = [g for g in groups if g]
    if len(groups) == 1:
        parts = [run_async(lambda: drive(config, groups[0], start_at, end_at))]
        return summarize(config, parts)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [
        context.Process(target=_worker, args=(config, g, start_at, end_at, queue))
        for g in groups
    ]
    for worker in workers:
        worker.start()
    deadline = end_at + 60.0
    parts = [queue.get(timeout=max(1.0, deadline - time.monotonic())) for _ in workers]
    for worker in workers:
        worker.join()
    return summarize(config, parts)


def _finish(stop: "asyncio.Future[None]") -> None:
    if not stop.done():
        stop.set_result(None)


class _EndOfInput(asyncio.Protocol):
    """
    Ends idle mode when stdin closes, without a thread blocked on it.
    """

    def __init__(self, stop: "asyncio.Future[None]") -> None:
        self.stop = stop

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        _finish(self.stop)


async def hold_idle(config: Config) -> dict:
    """
    Open C{config.connections} idle pairs through the proxy, announce them,
    and keep them until stdin closes (or SIGTERM).
    """
    loop = asyncio.get_running_loop()
    tally = Tally()
    gate = asyncio.Semaphore(IDLE_CONNECT_CONCURRENCY)
    began = time.monotonic()

    async def open_one(conn_id: int) -> IdleClient:
        async with gate:
            verifier = Verifier(conn_id, config.size, stream_framing(config.framing))
            websocket = websocket_side(config.framing, verifier)
            _, client = await loop.create_connection(
                lambda: IdleClient(verifier, tally, websocket), config.host, config.port
            )
            await asyncio.wait_for(client.answered, IDLE_ROUND_TRIP_TIMEOUT)
            return client

    clients = []
    for outcome in await asyncio.gather(
        *(open_one(c) for c in range(config.connections)), return_exceptions=True
    ):
        if isinstance(outcome, BaseException):
            tally.error(CONNECT, repr(outcome))
        else:
            clients.append(outcome)
    ready = {
        "event": "ready",
        "connections": len(clients),
        "seconds": time.monotonic() - began,
        "errors": sum(tally.errors.values()),
    }
    print(json.dumps(ready), flush=True)
    stop: asyncio.Future[None] = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, _finish, stop)
    try:
        await loop.connect_read_pipe(lambda: _EndOfInput(stop), sys.stdin)
    except (OSError, ValueError):
        pass  # stdin is not a pipe, terminal or socket: wait for SIGTERM
    await stop
    for client in clients:
        client.close()
    await asyncio.sleep(0)
    return {
        "event": "result",
        **asdict(config),
        "opened": len(clients),
        "errors": sum(tally.errors.values()),
        "error_kinds": tally.errors,
        "error_details": tally.details,
    }


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        description="Load generator for gateway and reference proxies (loopback only)."
    )
    parser.add_argument("--host", type=loopback_host, default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--framing", choices=WIRE_FRAMINGS, default="lf")
    parser.add_argument("--mode", choices=MODES, default="throughput")
    parser.add_argument("--connections", "-c", type=int, default=32)
    parser.add_argument("--window", "-w", type=int, default=256, help="in flight")
    parser.add_argument("--size", "-s", type=int, default=64, help="payload bytes")
    parser.add_argument("--duration", "-d", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--procs", type=int, default=1)
    args = parser.parse_args(argv)
    if args.size < HEADER_SIZE:
        parser.error(f"--size must be at least {HEADER_SIZE}")
    if not 1 <= args.connections <= MAX_CONNECTION_ID + 1:
        parser.error("--connections out of range")
    if args.window < 1 or args.procs < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--window, --procs and --duration must be positive")
    return Config(**vars(args))


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    raise_nofile_limit()
    if config.mode == "idle":
        result = run_async(lambda: hold_idle(config))
    else:
        start_at = time.monotonic() + CONNECT_GRACE + config.warmup
        end_at = start_at + config.duration
        print(json.dumps({"event": "window", "start": start_at, "end": end_at}))
        sys.stdout.flush()
        result = run(config, start_at, end_at)
    print(json.dumps(result), flush=True)
    raise SystemExit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
