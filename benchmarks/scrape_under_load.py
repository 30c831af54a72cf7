"""
Do scrapes stall traffic, or traffic stall scrapes?

Measures, on loopback only and for a bounded time:

1. how long one render of C{/metrics} takes in-process (C{generate_latest},
   text and OpenMetrics) for a registry of a handful of listeners and
   backends, as the gateway builds it;
2. against a real C{twistd gateway} (built-in demo backend, four
   listeners), in three phases of C{--duration} seconds each:
   - idle: scrape latency with no traffic;
   - load: a few client connections keep C{--depth} pipelined messages
     each in flight; a probe connection measures one-message round trips;
   - load + scrapes: the same, while C{/metrics} is scraped every
     C{--scrape-interval} seconds.

The probe's round trips in the last two phases say whether scrapes stall
traffic; the scrape latencies idle and under load say whether traffic
stalls scrapes.

Run from the checkout: C{.venv/bin/python benchmarks/scrape_under_load.py}.
The load itself runs in a child process (C{--load}) so that it does not
share an interpreter with the probe and the scraper.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

PAYLOAD = b"m" * 63  # plus "\n": 64 bytes a message on the client side
LISTENERS = 4
LISTENING = re.compile(rb"listening on (\S+) at 127\.0\.0\.1:(\d+)")
READY = b"gateway ready:"
STARTUP_DEADLINE = 30.0
READ_SIZE = 65536
# What Prometheus 2.x asks for: OpenMetrics first, so that is what it is served.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,"
    "application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def percentiles(samples: list[float]) -> str:
    """
    p50, p99 and max of C{samples} (seconds) in milliseconds.
    """
    if not samples:
        return "no samples"
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    return (
        f"p50 {at(0.5):7.2f} ms  p99 {at(0.99):7.2f} ms"
        f"  max {ordered[-1] * 1000:7.2f} ms  (n={len(ordered)})"
    )


def renderTimes(repeat: int) -> list[tuple[str, float, int, int]]:
    """
    Median time of one exposition of a gateway-shaped registry.
    """
    from prometheus_client import CollectorRegistry, disable_created_metrics
    from prometheus_client.exposition import generate_latest
    from prometheus_client.openmetrics.exposition import (
        generate_latest as generateOpenMetrics,
    )

    from gateway.metrics import GatewayMetrics

    disable_created_metrics()  # as the gateway does
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, "bench")
    for index in range(5):
        listener = metrics.listener(f"tcp:{7000 + index}")
        listener.accepted()
        listener.upstream(10, 640)
        listener.downstream(10, 640)
        listener.closed("client_closed", 0.25)
        listener.protocolError("client", "too_long")
    for index in range(3):
        metrics.backend(f"tcp:10.0.0.{index + 1}:9000").connected(0.001)
    results = []
    encoders = [("text", generate_latest), ("openmetrics", generateOpenMetrics)]
    for name, encode in encoders:
        output = encode(registry)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            encode(registry)
            times.append(time.perf_counter() - started)
        samples = sum(
            1 for line in output.splitlines() if line and not line.startswith(b"#")
        )
        results.append((name, statistics.median(times), len(output), samples))
    return results


def freePort() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def startGateway() -> tuple[subprocess.Popen, dict[str, int]]:
    """
    A gateway with four listeners and the demo backend; its ports, by
    listener name, once it says it is ready.
    """
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    listen = []
    for _ in range(LISTENERS):
        listen += ["--listen", f"tcp:{freePort()}:interface=127.0.0.1"]
    process = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "gateway", *listen]
        + ["--metrics", "tcp:0:interface=127.0.0.1", "--idle-timeout", "0"],
        stdout=subprocess.PIPE,
    )
    output = b""
    deadline = time.monotonic() + STARTUP_DEADLINE
    while READY not in output:
        line = process.stdout.readline()
        if not line or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the gateway did not start:\n" + output.decode())
        output += line
    # Keep reading its log so that the pipe never fills.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    ports = {name.decode(): int(port) for name, port in LISTENING.findall(output)}
    return process, ports


def scrapeFor(port: int, seconds: float, interval: float) -> list[float]:
    """
    GET /metrics every C{interval} seconds for C{seconds}, as Prometheus
    does (OpenMetrics); each latency.
    """
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept": PROMETHEUS_ACCEPT}
    )
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        latencies.append(time.perf_counter() - started)
        time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    return latencies


def probeFor(port: int, seconds: float) -> list[float]:
    """
    One message at a time through the gateway for C{seconds}; each round
    trip.
    """
    latencies = []
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = connection.makefile("rb")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            connection.sendall(PAYLOAD + b"\n")
            reader.readline()
            latencies.append(time.perf_counter() - started)
    return latencies


def child(mode: str, port: int, options: argparse.Namespace) -> subprocess.Popen:
    """
    This script in a child process, as the load (C{--load}) or the scraper
    (C{--scrape}), so that neither shares an interpreter with the probe.
    """
    command = [sys.executable, __file__, mode, str(port)]
    for name in ["connections", "depth", "duration", "scrape_interval"]:
        command += ["--" + name.replace("_", "-"), str(getattr(options, name))]
    return subprocess.Popen(command, stdout=subprocess.PIPE)


def result(process: subprocess.Popen, options: argparse.Namespace):
    return json.loads(process.communicate(timeout=options.duration + 60)[0])


async def loadClients(port: int, connections: int, depth: int, seconds: float) -> None:
    line = PAYLOAD + b"\n"
    end = time.monotonic() + seconds
    counts = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(line * depth)
        sent = depth
        replies = 0
        while time.monotonic() < end:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                break
            replies += chunk.count(b"\n")
            # Top the window back up to depth messages in flight.
            missing = depth - (sent - replies)
            if missing > 0:
                writer.write(line * missing)
                sent += missing
                await writer.drain()
        writer.write_eof()
        while chunk := await reader.read(READ_SIZE):
            replies += chunk.count(b"\n")
        writer.close()
        counts.append(replies)

    await asyncio.gather(*(client() for _ in range(connections)))
    print(json.dumps({"replies": sum(counts), "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--scrape", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--scrape-interval", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=200)
    options = parser.parse_args()
    if options.load is not None:
        asyncio.run(
            loadClients(
                options.load, options.connections, options.depth, options.duration
            )
        )
        return
    if options.scrape is not None:
        scrapes = scrapeFor(options.scrape, options.duration, options.scrape_interval)
        print(json.dumps(scrapes))
        return

    print(f"one render of /metrics in-process (median of {options.repeat}):")
    for name, seconds, size, samples in renderTimes(options.repeat):
        print(
            f"  {name:12} {seconds * 1000:6.2f} ms  ({size} bytes, {samples} samples)"
        )

    gateway, ports = startGateway()
    try:
        metrics = ports.pop("metrics")
        (port, *_) = ports.values()
        print(
            f"\nlive gateway, {LISTENERS} listeners, demo backend;"
            f" {options.connections} clients x {options.depth} messages in flight;"
            f" {options.duration:g} s a phase; a scrape every"
            f" {options.scrape_interval:g} s"
        )
        idle = result(child("--scrape", metrics, options), options)
        print(f"  idle:          scrape   {percentiles(idle)}")

        for scraping in (False, True):
            load = child("--load", port, options)
            scraper = child("--scrape", metrics, options) if scraping else None
            probes = probeFor(port, options.duration)
            replies = result(load, options)
            rate = replies["replies"] / replies["seconds"]
            label = "load + scrapes" if scraping else "load:"
            print(f"  {label:14} {rate:9.0f} messages/s through the gateway")
            print(f"  {'':14} probe    {percentiles(probes)}")
            if scraper is not None:
                print(f"  {'':14} scrape   {percentiles(result(scraper, options))}")
    finally:
        gateway.terminate()
        gateway.wait(timeout=60)


if __name__ == "__main__":
    main()
