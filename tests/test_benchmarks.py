"""
Tests for the benchmark harness: the load generator's reply checks, the echo
backend, the reference translators, and a tiny load generator run.

Servers run as real subprocesses on port 0 and are reached with blocking
sockets that have deadlines; every wait here is bounded.
"""

import json
import math
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

import benchmarks
from benchmarks import compare, loadgen, peers
from benchmarks.loadgen import (
    CORRUPTED,
    MISROUTED,
    REORDERED,
    UNEXPECTED,
    LoadClient,
    ReplyError,
    Tally,
    Verifier,
)
from benchmarks.processes import Child, cpu_seconds, exchange, memory_kib

ROOT = Path(benchmarks.__file__).resolve().parent.parent
# Generous for a loaded 2-core machine, short enough to fail a hung test fast.
DEADLINE = 10.0
# Connections through gateway-x2: enough that both gateways get some.
CONNECTIONS = 32


def frames(verifier: Verifier, first: int, count: int) -> bytes:
    return b"".join(verifier.frame(seq) for seq in range(first, first + count))


class VerifierTests(SynchronousTestCase):
    """
    The reply checks, fed crafted bytes.
    """

    def test_lf_frames(self) -> None:
        """
        An lf message is exactly C{size} payload bytes and a newline; its
        header names the connection and the sequence number.
        """
        verifier = Verifier(conn_id=5, size=64, framing="lf")
        message = verifier.frame(7)
        self.assertEqual(len(message), 65)
        self.assertEqual(message.count(b"\n"), 1)
        self.assertTrue(message.endswith(b"\n"))
        self.assertTrue(message.startswith(b"000005" + b"%010x" % 7))

    def test_int32_frames(self) -> None:
        """
        An int32 message is a 4-byte big-endian length, then C{size} bytes.
        """
        verifier = Verifier(conn_id=1, size=1024, framing="int32")
        message = verifier.frame(0)
        self.assertEqual(struct.unpack(">I", message[:4]), (1024,))
        self.assertEqual(len(message), 1028)

    def test_too_small(self) -> None:
        """
        A message must have room for its header.
        """
        self.assertRaises(ValueError, Verifier, 0, loadgen.HEADER_SIZE - 1, "lf")

    def test_in_order_any_chunking(self) -> None:
        """
        The replies sent, in order, are all counted, however they are split.
        """
        for framing in loadgen.FRAMINGS:
            for chunk in (1, 7, 65, 1000):
                verifier = Verifier(3, 64, framing)
                data = verifier.next_messages(5)
                counted = sum(
                    verifier.received(data[i : i + chunk])
                    for i in range(0, len(data), chunk)
                )
                self.assertEqual((counted, verifier.replies), (5, 5))

    def assertReplyError(
        self, verifier: Verifier, data: bytes, kind: str
    ) -> ReplyError:
        error = self.assertRaises(ReplyError, verifier.received, data)
        self.assertEqual(error.kind, kind)
        return error

    def test_reordered(self) -> None:
        """
        A reply that comes before its turn is reported as reordered.
        """
        for framing in loadgen.FRAMINGS:
            verifier = Verifier(2, 64, framing)
            verifier.next_messages(3)
            error = self.assertReplyError(
                verifier, verifier.frame(1) + verifier.frame(0), REORDERED
            )
            self.assertIn("reply 0", error.detail)
            self.assertIn("message 1", error.detail)

    def test_reordered_later(self) -> None:
        """
        Replies checked in earlier chunks do not hide a swap later on.
        """
        verifier = Verifier(2, 64, "lf")
        verifier.next_messages(4)
        self.assertEqual(verifier.received(frames(verifier, 0, 1) + b"0000"), 1)
        swapped = verifier.frame(2)[4:] + verifier.frame(1)
        error = self.assertReplyError(verifier, swapped, REORDERED)
        self.assertIn("reply 1", error.detail)

    def test_corrupted(self) -> None:
        """
        A changed byte in the padding is reported as corruption, with its place.
        """
        for framing in loadgen.FRAMINGS:
            verifier = Verifier(2, 64, framing)
            verifier.next_messages(2)
            reply = bytearray(frames(verifier, 0, 2))
            at = verifier.frame_size + 40
            reply[at] ^= 0x01
            error = self.assertReplyError(verifier, bytes(reply), CORRUPTED)
            self.assertIn("reply 1", error.detail)
            self.assertIn("byte 40", error.detail)

    def test_corrupted_length(self) -> None:
        """
        A wrong int32 length header is corruption too.
        """
        verifier = Verifier(2, 64, "int32")
        verifier.next_messages(1)
        reply = struct.pack(">I", 65) + verifier.frame(0)[4:]
        self.assertReplyError(verifier, reply, CORRUPTED)

    def test_lf_split_differently(self) -> None:
        """
        A newline moved inside an lf reply is corruption.
        """
        verifier = Verifier(2, 64, "lf")
        verifier.next_messages(1)
        reply = verifier.frame(0)
        self.assertReplyError(verifier, reply[:10] + b"\n" + reply[10:-1], CORRUPTED)

    def test_framed_for_the_wrong_side(self) -> None:
        """
        A translator answering an lf client with the backend's int32 frame
        shows as corrupted replies.
        """
        verifier = Verifier(0, 32, "lf")
        verifier.next_messages(1)
        reply = peers.frame("int32", verifier.frame(0)[:-1])
        self.assertReplyError(verifier, reply, CORRUPTED)

    def test_misrouted(self) -> None:
        """
        Another connection's reply is reported as such.
        """
        verifier = Verifier(2, 64, "lf")
        verifier.next_messages(1)
        other = Verifier(9, 64, "lf")
        error = self.assertReplyError(verifier, other.frame(0), MISROUTED)
        self.assertIn("connection 9", error.detail)

    def test_unexpected(self) -> None:
        """
        Bytes beyond what was sent are an error, not extra replies.
        """
        verifier = Verifier(2, 64, "lf")
        data = verifier.next_messages(1)
        self.assertReplyError(verifier, data + data, UNEXPECTED)

    def test_error_is_not_a_reply(self) -> None:
        """
        The load client counts a bad reply as an error, closes the
        connection, and does not count it among the replies.
        """

        class Transport:
            aborted = False

            def write(self, data: bytes) -> None:
                pass

            def abort(self) -> None:
                self.aborted = True

        tally = Tally()
        verifier = Verifier(0, 64, "lf")
        client = LoadClient(verifier, 4, tally, timed=False)
        transport = Transport()
        client.connection_made(transport)  # type: ignore[arg-type]
        client.data_received(verifier.frame(0))
        client.data_received(verifier.frame(2))
        client.connection_lost(None)
        self.assertEqual(tally.replies, 1)
        self.assertEqual(tally.errors, {REORDERED: 1})
        self.assertTrue(transport.aborted)

    def test_percentile(self) -> None:
        """
        Nearest-rank percentiles.
        """
        ordered = list(range(1, 1001))
        self.assertEqual(loadgen.percentile(ordered, 0.5), 500)
        self.assertEqual(loadgen.percentile(ordered, 0.99), 990)
        self.assertEqual(loadgen.percentile(ordered, 0.999), 999)
        self.assertTrue(math.isnan(loadgen.percentile([], 0.5)))


def start(testcase: SynchronousTestCase, name: str, module: str, *args: str) -> int:
    """
    Start a benchmark server module, stop it at the end of the test, and
    return its port.
    """
    child = Child(name, [sys.executable, "-m", module, *args], cwd=str(ROOT))
    testcase.addCleanup(child.stop)
    return child.wait_port(DEADLINE)


class RecordingBackend:
    """
    A listening socket standing in for the backend, to see the exact frames.
    """

    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(DEADLINE)
        testcase.addCleanup(self.listener.close)
        self.port = self.listener.getsockname()[1]
        self.testcase = testcase

    def accept(self) -> socket.socket:
        connection, _ = self.listener.accept()
        connection.settimeout(DEADLINE)
        self.testcase.addCleanup(connection.close)
        return connection


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data


class ServerTests(SynchronousTestCase):
    """
    The echo backend and the reference translators, over real sockets.
    """

    def test_echo(self) -> None:
        """
        The echo backend writes back every byte, however large the write.
        """
        port = start(self, "echo", "benchmarks.echo_backend")
        data = struct.pack(">I", 5) + b"hello" + bytes(range(256)) * 1024
        self.assertEqual(exchange(port, data, len(data), DEADLINE), data)

    def test_echo_half_close(self) -> None:
        """
        After the client's half-close, the echo backend sends the rest and closes.
        """
        port = start(self, "echo", "benchmarks.echo_backend")
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
            sock.sendall(b"last words")
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := sock.recv(1024):
                received += chunk
        self.assertEqual(received, b"last words")

    def assertTranslates(self, module: str) -> None:
        """
        Lines from the client reach the backend as int32 frames, and frames
        from the backend reach the client as lines.
        """
        backend = RecordingBackend(self)
        port = start(self, module, module, "--backend-port", str(backend.port))
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as client:
            client.sendall(b"hello\n\nworld\n")
            upstream = backend.accept()
            expected = b"\0\0\0\x05hello" + b"\0\0\0\0" + b"\0\0\0\x05world"
            self.assertEqual(read_exactly(upstream, len(expected)), expected)
            upstream.sendall(b"\0\0\0\x03abc" + b"\0\0\0\0" + b"\0\0\0\x01z")
            self.assertEqual(read_exactly(client, 7), b"abc\n\nz\n")

    def assertEchoesThrough(self, module: str) -> None:
        """
        Messages sent through the translator to the echo backend come back.
        """
        echo = start(self, "echo", "benchmarks.echo_backend")
        port = start(self, module, module, "--backend-port", str(echo))
        lines = b"".join(b"message %d\n" % i for i in range(100))
        self.assertEqual(exchange(port, lines, len(lines), DEADLINE), lines)

    def test_naive_translates(self) -> None:
        self.assertTranslates("benchmarks.naive_translator")

    def test_naive_echoes(self) -> None:
        self.assertEchoesThrough("benchmarks.naive_translator")

    def test_asyncio_translates(self) -> None:
        self.assertTranslates("benchmarks.asyncio_translator")

    def test_asyncio_echoes(self) -> None:
        self.assertEchoesThrough("benchmarks.asyncio_translator")

    def test_portforward_forwards(self) -> None:
        """
        Twisted's port forwarder passes bytes untouched both ways.
        """
        echo = start(self, "echo", "benchmarks.echo_backend")
        port = start(
            self,
            "portforward",
            "benchmarks.twisted_portforward",
            "--backend-port",
            str(echo),
        )
        data = peers.frame("int32", b"raw")
        self.assertEqual(exchange(port, data, len(data), DEADLINE), data)


def startGatewayPeer(testcase: SynchronousTestCase, name: str) -> peers.RunningPeer:
    """
    Start the gateway peer C{name} in front of a new echo backend, with this
    venv's twistd; both are stopped at the end of the test.
    """
    echo = start(testcase, "echo", "benchmarks.echo_backend")
    settings = peers.PeerSettings(
        python=sys.executable, twistd=str(Path(sys.executable).with_name("twistd"))
    )
    runnable, skipped = peers.available([name], settings)
    testcase.assertEqual(runnable, [name], skipped)
    peer = peers.start(name, echo, settings)
    testcase.addCleanup(peer.stop)
    return peer


def startPeer(testcase: SynchronousTestCase, name: str) -> peers.RunningPeer:
    """
    Start peer C{name} (any kind) in front of a new echo backend, its files
    in the test's own directory; skipped when its program is not installed.
    """
    echo = start(testcase, "echo", "benchmarks.echo_backend")
    # Short: the gateway's metrics socket goes here (AF_UNIX paths are short).
    scratch = Path(tempfile.mkdtemp(prefix="bench-test-"))
    testcase.addCleanup(shutil.rmtree, scratch, True)
    settings = peers.PeerSettings(
        python=sys.executable,
        twistd=str(Path(sys.executable).with_name("twistd")),
        scratch=scratch,
    )
    runnable, skipped = peers.available([name], settings)
    if name in skipped and name not in peers.GATEWAYS:
        raise SkipTest(skipped[name])
    testcase.assertEqual(runnable, [name], skipped)
    peer = peers.start(name, echo, settings)
    testcase.addCleanup(peer.stop)
    testcase.settings = settings  # type: ignore[attr-defined]
    return peer


def run_loadgen(testcase: SynchronousTestCase, port: int, *args: str) -> dict:
    """
    A short load generator run: its result line, once it has exited.
    """
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen", "--port", str(port), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 3,
    )
    lines = done.stdout.splitlines()
    testcase.assertEqual(json.loads(lines[0])["event"], "window", done.stderr)
    result = json.loads(lines[-1])
    testcase.assertEqual(result["event"], "result")
    testcase.assertEqual(done.returncode, 1 if result["errors"] else 0)
    return result


SHORT = ("-d", "0.3", "--warmup", "0.1")


class TLSPeerTests(SynchronousTestCase):
    """
    The TLS peers of scenarios h and t: each serves TLS 1.3 with the
    benchmark's ECDSA P-256 certificate, and echoes through to the backend
    in both load generator modes that use them.
    """

    def assertServesTLS(self, name: str) -> None:

        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec

        peer = startPeer(self, name)
        settings = self.settings  # type: ignore[attr-defined]
        with socket.create_connection(("127.0.0.1", peer.port), DEADLINE) as plain:
            context = loadgen.client_tls()
            with context.wrap_socket(plain, server_hostname="localhost") as sock:
                self.assertEqual(sock.version(), "TLSv1.3")
                served = x509.load_der_x509_certificate(sock.getpeercert(True))
        ours = x509.load_pem_x509_certificate(settings.tls_cert.read_bytes())
        self.assertEqual(served, ours)
        key = served.public_key()
        self.assertIsInstance(key, ec.EllipticCurvePublicKey)
        self.assertEqual(key.curve.name, "secp256r1")
        framing = peers.FRAMING[name]
        churned = run_loadgen(
            self, peer.port, "--framing", framing, "--mode", "churn", "-c", "2",
            "--tls", *SHORT,
        )  # fmt: skip
        self.assertEqual(churned["errors"], 0, churned["error_details"])
        self.assertGreater(churned["messages"], 0)
        bulk = run_loadgen(
            self, peer.port, "--framing", framing, "-c", "2", "-w", "8", "--tls",
            *SHORT,
        )  # fmt: skip
        self.assertEqual(bulk["errors"], 0, bulk["error_details"])
        self.assertGreater(bulk["messages"], 0)

    def test_gateway(self) -> None:
        self.assertServesTLS("gateway-tls")

    def test_haproxy(self) -> None:
        self.assertServesTLS("haproxy-tls")

    def test_stunnel(self) -> None:
        self.assertServesTLS("stunnel")


class TranslatorPeerTests(SynchronousTestCase):
    """
    gateway and gateway-python: the same gateway with the compiled and the
    pure-Python translator, for an A/B comparison in one run.
    """

    def test_which_translator(self) -> None:
        """
        The gateway peer has the compiled translator loaded (when it is
        built); gateway-python has not, and translates all the same.
        """
        from gateway.codec import accelerated

        if accelerated.speedups is None:
            raise SkipTest("the compiled translator is not built or is turned off")
        for name, loaded in (("gateway", True), ("gateway-python", False)):
            peer = startPeer(self, name)
            message = b"message\n"
            self.assertEqual(
                exchange(peer.port, message, len(message), DEADLINE), message
            )
            maps = Path(f"/proc/{peer.pid}/maps").read_text()
            self.assertEqual("_speedups" in maps, loaded, name)


class GatewayPairTests(SynchronousTestCase):
    """
    gateway-x2: two real gateways sharing one port.
    """

    def test_both_serve(self) -> None:
        """
        Both gateways accept connections on the one port (SO_REUSEPORT
        spreads them), and each connection is translated to the backend and
        back.
        """
        peer = startGatewayPeer(self, "gateway-x2")
        self.assertEqual(len(peer.pids), peers.PROCESSES)
        # The kernel hashes each connection to one of the two sockets: the
        # chance that CONNECTIONS all land on the same one is 2 ** -31.
        for index in range(CONNECTIONS):
            message = b"message %d\n" % index
            self.assertEqual(
                exchange(peer.port, message, len(message), DEADLINE), message
            )
        for child in [peer.child, *peer.others]:
            child.wait_for(re.compile(r"closed systemd:gateway "), DEADLINE)


class StockReactorPeerTests(SynchronousTestCase):
    """
    gateway-epoll: the gateway on Twisted's own epoll reactor.
    """

    def test_translates_on_stock_reactor(self) -> None:
        peer = startGatewayPeer(self, "gateway-epoll")
        peer.child.wait_for(
            re.compile(r"reactor class: twisted\.internet\.epollreactor\.EPollReactor"),
            DEADLINE,
        )
        message = b"message\n"
        self.assertEqual(exchange(peer.port, message, len(message), DEADLINE), message)


class LoadgenRunTests(SynchronousTestCase):
    """
    The load generator as the harness runs it.
    """

    def test_int32_against_echo(self) -> None:
        """
        A tiny throughput run against the echo backend: replies, no errors.
        """
        echo = start(self, "echo", "benchmarks.echo_backend")
        result = run_loadgen(
            self,
            echo,
            "--framing",
            "int32",
            "-c",
            "2",
            "-w",
            "8",
            "-d",
            "0.3",
            "--warmup",
            "0.1",
        )
        self.assertEqual(result["errors"], 0, result["error_details"])
        self.assertGreater(result["messages"], 0)

    def test_latency_lf_through_naive(self) -> None:
        """
        A tiny latency run through a translator: percentiles, no errors.
        """
        echo = start(self, "echo", "benchmarks.echo_backend")
        port = start(
            self, "naive", "benchmarks.naive_translator", "--backend-port", str(echo)
        )
        result = run_loadgen(
            self,
            port,
            "--mode",
            "latency",
            "-c",
            "2",
            "-d",
            "0.3",
            "--warmup",
            "0.1",
            "--procs",
            "2",
        )
        self.assertEqual(result["errors"], 0, result["error_details"])
        self.assertGreater(result["latency_us"]["samples"], 0)
        self.assertLessEqual(result["latency_us"]["p50"], result["latency_us"]["p99"])

    def test_churn(self) -> None:
        """
        Churn mode opens a connection per message, each checked: through the
        gateway (whose log shows one closed pair per connection) and straight
        to the echo backend.
        """
        peer = startPeer(self, "gateway")
        result = run_loadgen(self, peer.port, "--mode", "churn", "-c", "2", *SHORT)
        self.assertEqual(result["errors"], 0, result["error_details"])
        self.assertGreater(result["messages"], 0)
        closed = re.compile(r"closed tcp:0 \S+ via \S+ after \S+: 1 messages")
        peer.child.wait_for(closed, DEADLINE)
        echo = start(self, "echo", "benchmarks.echo_backend")
        direct = run_loadgen(
            self, echo, "--framing", "int32", "--mode", "churn", "-c", "2", *SHORT
        )
        self.assertEqual(direct["errors"], 0, direct["error_details"])
        self.assertGreater(direct["messages"], 0)

    def test_churn_counts_connections(self) -> None:
        """
        In churn mode a reply is counted once per connection, however many
        workers: the echo backend sees as many connections as are counted
        (give or take those in flight at the end of the window).
        """
        echo = start(self, "echo", "benchmarks.echo_backend")
        result = run_loadgen(
            self, echo, "--framing", "int32", "--mode", "churn", "-c", "3", *SHORT
        )
        # One message each: the message count is the connection count, and
        # no steady connection is opened besides (it would count thousands).
        self.assertEqual(result["errors"], 0, result["error_details"])
        self.assertLess(result["messages"], 100_000)

    def test_idle(self) -> None:
        """
        Idle mode opens its connections, says so, and holds them until its
        stdin closes.
        """
        echo = start(self, "echo", "benchmarks.echo_backend")
        child = Child(
            "idle loadgen",
            [sys.executable, "-m", "benchmarks.loadgen", "--port", str(echo)]
            + ["--framing", "int32", "--mode", "idle", "--connections", "5"],
            cwd=str(ROOT),
            stdin=subprocess.PIPE,
        )
        self.addCleanup(child.stop)
        ready = json.loads(child.wait_for(compare.READY_LINE, DEADLINE)[0])
        self.assertEqual((ready["connections"], ready["errors"]), (5, 0))
        assert child.process.stdin is not None
        child.process.stdin.close()
        result = json.loads(child.wait_for(compare.RESULT_LINE, DEADLINE)[0])
        self.assertEqual(child.wait(DEADLINE), 0)
        self.assertEqual((result["opened"], result["errors"]), (5, 0))


def reportPlan(
    peerNames: list[str], scenarios: list[compare.Scenario], reps: int
) -> compare.Plan:
    """
    A plan for building a report from made-up runs: nothing is started.
    """
    return compare.Plan(
        peers=peerNames,
        scenarios=scenarios,
        reps=reps,
        duration=1.0,
        warmup=0.1,
        idle_pairs=0,
        settle=0.0,
        loadgen_procs=1,
    )


class HarnessTests(SynchronousTestCase):
    """
    Pieces of the comparison script.
    """

    def test_proc_sampling(self) -> None:
        """
        CPU time and memory figures come from /proc.
        """
        import os

        self.assertGreater(cpu_seconds(os.getpid()), 0)
        self.assertGreater(memory_kib(os.getpid(), "VmHWM"), 0)

    def test_rotation(self) -> None:
        """
        Each repetition starts with a different peer.
        """
        names = ["a", "b", "c"]
        self.assertEqual(
            [compare.rotated(names, rep)[0] for rep in range(4)], ["a", "b", "c", "a"]
        )

    def test_compare(self) -> None:
        """
        The comparison script, cut down to one short run and a few idle
        pairs, reports the peer it ran.
        """
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.compare", "--peers", "naive"]
            + ["--scenarios", "c", "--reps", "1", "--duration", "0.3"]
            + ["--warmup", "0.1", "--idle-pairs", "20"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=DEADLINE * 6,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("## c. req/resp", done.stdout)
        self.assertIn("| naive | lf |", done.stdout)
        self.assertIn("## Idle pairs (20 client+backend pairs)", done.stdout)

    def test_report(self) -> None:
        """
        The report has a table per scenario and the ratios of the baseline
        to each peer, per repetition.
        """
        plan = reportPlan(["gateway", "naive"], list(compare.SCENARIOS), reps=2)
        runs = [
            compare.Run(peer, s.key, rep, msg_per_s=rate, proxy_cpu=100.0)
            for s in compare.SCENARIOS
            for rep in range(2)
            for peer, rate in (("gateway", 300.0), ("naive", 100.0))
        ]
        text = compare.report(plan, runs, [], {}, peers.PeerSettings())
        self.assertIn("## c. req/resp", text)
        self.assertIn("| a | naive | 3.00 | 3.00 | 3.00 |", text)

    def test_report_websocket_apart(self) -> None:
        """
        The WebSocket peers, whose clients speak another framing, are
        compared with each other, not with the byte-stream gateway; each
        repetition's progress line gives the scenario's unit.
        """
        plan = reportPlan(
            ["gateway", "naive", *peers.WEBSOCKET_PEERS],
            [s for s in compare.SCENARIOS if s.key in "an"],
            reps=1,
        )
        runs = [
            compare.Run(peer, s.key, 0, msg_per_s=100.0)
            for s in plan.scenarios
            for peer in plan.peers_of(s)
        ]
        text = compare.report(plan, runs, [], {}, peers.PeerSettings())
        first, second = peers.WEBSOCKET_PEERS[:2]
        self.assertNotIn(f"| a | {first} |", text)
        self.assertIn(f"| a | {second} | 1.00 | 1.00 |", text)
        self.assertIn("| a | naive | 1.00 | 1.00 |", text)
        churn = compare.Run("gateway", "n", 0, msg_per_s=10.0)
        self.assertIn("10 conn/s", compare.describe(churn, 1))
        steady = compare.Run("gateway", "a", 0, msg_per_s=10.0)
        self.assertIn("10 msg/s", compare.describe(steady, 1))

    def test_report_scenario_peers(self) -> None:
        """
        Scenarios with their own peers (h, n, t) report those, in connections
        per second for the churn ones, with the TLS gateway as the baseline
        of the TLS scenarios.
        """
        plan = reportPlan(["gateway", "naive"], list(compare.SCENARIOS), reps=1)
        rates = {"gateway-tls": 80.0, "haproxy-tls": 100.0, "stunnel": 160.0}
        rates.update({"gateway": 50.0, "haproxy": 100.0, "direct": 200.0})
        runs = [
            compare.Run(peer, s.key, 0, msg_per_s=rates.get(peer, 25.0))
            for s in compare.SCENARIOS
            for peer in plan.peers_of(s)
        ]
        text = compare.report(plan, runs, [], {}, peers.PeerSettings())
        self.assertIn("## h. TLS handshakes", text)
        self.assertIn("| peer | client framing | conn/s |", text)
        self.assertIn("| h | haproxy-tls | 0.80 | 0.80 |", text)
        self.assertIn("| t | stunnel | 0.50 | 0.50 |", text)
        self.assertIn("| n | direct | 0.25 | 0.25 |", text)
        self.assertIn("| a | naive | 2.00 | 2.00 |", text)
        self.assertNotIn("| h | naive |", text)
        plan.skipped = {"stunnel": "not installed"}
        self.assertEqual(
            plan.peers_of(compare.SCENARIOS[3]), ["gateway-tls", "haproxy-tls"]
        )

    def test_disturbed_runs(self) -> None:
        """
        A run during which other processes were busy is starred and left
        out of the medians.
        """
        plan = reportPlan(["gateway", "naive"], [compare.SCENARIOS[0]], reps=3)
        # Rep 2's gateway run shared the machine: half its usual rate.
        rates = {("gateway", 1): 150.0}
        busy = compare.NOISY * 2
        runs = [
            compare.Run(
                peer,
                "a",
                rep,
                msg_per_s=rates.get((peer, rep), 300.0 if peer == "gateway" else 100.0),
                other_cpu=busy if (peer, rep) in rates else 0.0,
            )
            for rep in range(3)
            for peer in ("gateway", "naive")
        ]
        text = compare.report(plan, runs, [], {}, peers.PeerSettings())
        self.assertIn("| a | naive | 3.00 | 1.50 * | 3.00 | 3.00 |", text)
        self.assertIn("| gateway | lf | 300 |", text)
        self.assertIn("| 2/3 |", text)


def serverFrame(payload: bytes, opcode=None) -> bytes:
    from websockets.frames import BINARY, Frame

    return Frame(opcode or BINARY, payload).serialize(mask=False)


class WebSocketClientSideTests(SynchronousTestCase):
    """
    The load generator's WebSocket wire, against websockets' own frames.
    """

    def test_wrap(self) -> None:
        """
        Each message becomes one final binary client frame, masked (with a
        key of zeros), that websockets' server-side parser reads back, at
        each of the three length encodings.
        """
        from websockets.frames import BINARY, Frame
        from websockets.streams import StreamReader

        for size in (16, 125, 126, 65535, 65536):
            side = loadgen.WebSocketClientSide(size)
            messages = [bytes([i]) * size for i in range(3)]
            reader = StreamReader()
            reader.feed_data(side.wrap(b"".join(messages)))
            reader.feed_eof()
            parsed = []
            for _ in messages:
                parser = Frame.parse(reader.read_exact, mask=True)
                try:
                    next(parser)
                except StopIteration as done:
                    parsed.append(done.value)
            self.assertEqual([f.data for f in parsed], messages, size)
            self.assertTrue(all(f.fin and f.opcode is BINARY for f in parsed))

    def test_feedAnyChunking(self) -> None:
        """
        The 101 response, then server frames of every length encoding, cut
        anywhere: the payloads come out joined and in order; a Close frame
        is noticed.
        """
        from websockets.frames import CLOSE

        payloads = [b"a" * 5, b"", b"b" * 126, b"c" * 70000]
        response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        data = response + b"".join(map(serverFrame, payloads))
        data += serverFrame(b"\x03\xe8", CLOSE)
        for chunk in (1, 3, 100, 65536):
            side = loadgen.WebSocketClientSide(16)
            out = b"".join(
                side.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)
            )
            self.assertEqual(
                (out, side.open, side.closed), (b"".join(payloads), True, True)
            )

    def test_refused(self) -> None:
        side = loadgen.WebSocketClientSide(16)
        self.assertRaises(ConnectionError, side.feed, b"HTTP/1.1 403 Forbidden\r\n\r\n")

    def test_raw_frames(self) -> None:
        """
        A raw message is exactly C{size} bytes: no framing in the stream.
        """
        verifier = Verifier(conn_id=5, size=64, framing="raw")
        self.assertEqual(len(verifier.frame(3)), 64)
        self.assertTrue(verifier.frame(3).startswith(b"000005" + b"%010x" % 3))


class WebSocketPeerTests(SynchronousTestCase):
    """
    The WebSocket peers, and the load generator speaking WebSocket to them.
    """

    def tinyRun(self, peer: peers.RunningPeer) -> dict:
        result = run_loadgen(
            self,
            peer.port,
            "--framing",
            peer.framing,
            "-c",
            "3",
            "-w",
            "16",
            "-s",
            "64",
            *SHORT,
        )
        self.assertEqual(result["errors"], 0, result["error_details"])
        self.assertGreater(result["messages"], 0)
        return result

    def test_gateway(self) -> None:
        """
        The gateway with WebSocket clients: a probe message and a tiny run,
        every reply checked.
        """
        peer = startGatewayPeer(self, "gateway-websocket")
        self.assertEqual(peer.framing, "ws-raw")
        self.assertEqual(
            peers.websocket_exchange(peer.port, b"probe", DEADLINE), b"probe"
        )
        self.tinyRun(peer)

    def test_websockify(self) -> None:
        """
        websockify forwards the bytes of WebSocket messages (int32 frames)
        to the echo backend and back, however it cuts its replies.
        """
        settings = peers.PeerSettings(python=sys.executable)
        if peers.websockify_command(settings) is None:
            raise SkipTest("websockify is not installed (the test extra installs it)")
        echo = start(self, "echo", "benchmarks.echo_backend")
        peer = peers.start("websockify", echo, settings)
        self.addCleanup(peer.stop)
        message = peers.frame("int32", b"probe")
        self.assertEqual(
            peers.websocket_exchange(peer.port, message, DEADLINE), message
        )
        self.tinyRun(peer)

    def test_report(self) -> None:
        """
        The report compares the gateway with websockify when both ran.
        """
        self.assertIn("websockify", peers.DEFAULT_PEERS)
        self.assertIn("gateway-websocket", peers.DEFAULT_PEERS)
        self.assertIn("websockify", compare.NO_IDLE)
