"""
Compare gateway with reference proxies, on loopback, and print a Markdown
report: ``python -m benchmarks.compare [--quick]``.

One echo backend serves every run. For each repetition, each scenario runs
against each peer in turn (the peer order rotates between repetitions, so
that drift in the machine's state does not favour one peer), each run in a
freshly started peer process so that its peak RSS is its own. The report
gives medians over repetitions, and the gateway's msg/s divided by each
peer's, per repetition (runs of one repetition are minutes apart at most).

Scenarios:

a. 64-byte messages, 32 connections, 256 in flight each (msg/s)
b. 1 KiB messages, 8 connections, 256 in flight each (msg/s, MB/s)
c. request/response: 16 connections, 1 in flight each (msg/s, p50, p99, p999)
h. TLS handshakes: 16 workers, each opening a TLS 1.3 connection (ECDSA P-256
   certificate), sending one message, reading it back, closing (conn/s);
   against HAProxy (ssl crt, one thread) and stunnel
n. connection churn: the same over plain TCP (conn/s); against HAProxy and a
   direct connection to the echo backend
t. TLS bulk: 64-byte messages, 8 long-lived TLS connections, 256 in flight
   each (msg/s); against HAProxy and stunnel

Scenarios h, n and t name their own peers; --peers chooses those of a, b, c.

CPU % of the proxy (and of the echo backend) is read from /proc/PID/stat
(utime + stime) over exactly the measured window; 100 % is one core. Peak
RSS is VmHWM from /proc/PID/status at the end of the run.

Then an idle measurement per peer: RSS of the idle proxy, and RSS growth per
idle client+backend pair once N pairs are open (each pair made one round
trip, so the backend connection exists).
"""

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import peers
from benchmarks.processes import (
    Child,
    ChildError,
    all_cpu_seconds,
    cpu_of,
    cpu_seconds,
    machine_cpu_seconds,
    memory_kib,
)
from benchmarks.util import raise_nofile_limit


@dataclass(frozen=True)
class Scenario:
    """
    One load shape.
    """

    key: str
    title: str
    mode: str
    size: int
    connections: int
    window: int
    # The peers this scenario compares; empty for the plan's (--peers).
    peers: tuple[str, ...] = ()


TLS_PEERS = ("gateway-tls", "haproxy-tls", "stunnel")
SCENARIOS = (
    Scenario("a", "64 B, 32 conns x 256 in flight", "throughput", 64, 32, 256),
    Scenario("b", "1 KiB, 8 conns x 256 in flight", "throughput", 1024, 8, 256),
    Scenario("c", "req/resp, 16 conns x 1 in flight", "latency", 64, 16, 1),
    Scenario(
        "h",
        "TLS handshakes, 16 workers x 1 message per connection",
        "churn",
        64,
        16,
        1,
        TLS_PEERS,
    ),
    Scenario(
        "n",
        "new TCP connections, 16 workers x 1 message per connection",
        "churn",
        64,
        16,
        1,
        ("gateway", "haproxy", "direct"),
    ),
    Scenario(
        "t", "TLS 64 B, 8 conns x 256 in flight", "throughput", 64, 8, 256, TLS_PEERS
    ),
)

FULL = {"reps": 3, "duration": 10.0, "warmup": 1.0, "idle_pairs": 10000}
QUICK = {"reps": 1, "duration": 0.8, "warmup": 0.2, "idle_pairs": 1000}
# Time for a proxy's memory to settle before its RSS is read.
SETTLE = {"full": 1.0, "quick": 0.2}

WINDOW_LINE = re.compile(r'^\{"event": "window".*\}$')
RESULT_LINE = re.compile(r'^\{"event": "result".*\}$')
READY_LINE = re.compile(r'^\{"event": "ready".*\}$')
# CPU % used by processes outside the benchmark above which a run is
# flagged as disturbed (other sessions, kernel threads).
NOISY = 15.0
# Beyond the run's own duration, how long a load generator may take.
LOADGEN_SLACK = 60.0
IDLE_OPEN_TIMEOUT = 300.0
# Peers whose idle pairs are not measured, and why (said in the report).
NO_IDLE = {
    "direct": "no proxy",
    "websockify": "a process forked per connection",
}


@dataclass
class Run:
    """
    One scenario against one peer.
    """

    peer: str
    scenario: str
    rep: int
    failure: str = ""
    msg_per_s: float = math.nan
    payload_mb_per_s: float = math.nan
    p50_us: float = math.nan
    p99_us: float = math.nan
    p999_us: float = math.nan
    proxy_cpu: float = math.nan
    backend_cpu: float = math.nan
    loadgen_cpu: float = math.nan
    other_cpu: float = math.nan
    peak_rss_kib: float = math.nan
    errors: int = 0
    error_details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failure


@dataclass
class IdleRun:
    """
    Memory of one peer with many idle pairs.
    """

    peer: str
    pairs: int
    failure: str = ""
    idle_rss_kib: float = math.nan
    loaded_rss_kib: float = math.nan
    per_pair_bytes: float = math.nan
    open_seconds: float = math.nan
    opened: int = 0
    errors: int = 0


@dataclass
class Plan:
    """
    What to run, from the command line.
    """

    peers: list[str]
    scenarios: list[Scenario]
    reps: int
    duration: float
    warmup: float
    idle_pairs: int
    settle: float
    loadgen_procs: int
    python: str = sys.executable
    notes: list[str] = field(default_factory=list)
    # Peers that cannot run here (and why): left out of every scenario.
    skipped: dict[str, str] = field(default_factory=dict)

    def peers_of(self, scenario: Scenario) -> list[str]:
        """
        The peers C{scenario} runs against, those that can run here.
        """
        names = list(scenario.peers) or self.peers
        return [name for name in names if name not in self.skipped]


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def loadgen_argv(plan: Plan, port: int, framing: str, *options: str) -> list[str]:
    return [
        plan.python,
        "-m",
        "benchmarks.loadgen",
        "--port",
        str(port),
        "--framing",
        framing,
        *options,
    ]


def measure(
    plan: Plan,
    scenario: Scenario,
    peer_name: str,
    rep: int,
    echo: Child,
    echo_port: int,
    settings: peers.PeerSettings,
) -> Run:
    """
    Start the peer, load it for one scenario, sample it, stop it.
    """
    run = Run(peer_name, scenario.key, rep)
    try:
        peer = peers.start(peer_name, echo_port, settings)
    except ChildError as e:
        run.failure = f"did not start: {e}"
        return run
    loadgen = None
    try:
        loadgen = Child(
            f"loadgen for {peer_name}",
            loadgen_argv(
                plan,
                peer.port,
                peer.framing,
                "--mode",
                scenario.mode,
                "--connections",
                str(scenario.connections),
                "--window",
                str(scenario.window),
                "--size",
                str(scenario.size),
                "--duration",
                str(plan.duration),
                "--warmup",
                str(plan.warmup),
                "--procs",
                str(plan.loadgen_procs),
                *(["--tls"] if peer_name in peers.TLS_PEERS else []),
            ),
            cwd=str(settings.root),
        )
        window = json.loads(loadgen.wait_for(WINDOW_LINE, LOADGEN_SLACK)[0])
        watched = {"proxy": peer.pids, "backend": [echo.pid]}
        ours = {os.getpid(), echo.pid, loadgen.pid, *peer.pids}
        sleep_until(window["start"])
        began = time.monotonic()
        before = {k: sum(map(cpu_seconds, pids)) for k, pids in watched.items()}
        everyone, machine = all_cpu_seconds(), machine_cpu_seconds()
        sleep_until(window["end"])
        after = {k: sum(map(cpu_seconds, pids)) for k, pids in watched.items()}
        machine = machine_cpu_seconds() - machine
        mine = cpu_of(everyone, all_cpu_seconds(), ours)
        elapsed = time.monotonic() - began
        run.other_cpu = max(0.0, 100 * (machine - mine) / elapsed)
        result = json.loads(
            loadgen.wait_for(RESULT_LINE, plan.duration + LOADGEN_SLACK)[0]
        )
        loadgen.wait(LOADGEN_SLACK)
        if peer.pid is not None:
            run.proxy_cpu = 100 * (after["proxy"] - before["proxy"]) / elapsed
            run.peak_rss_kib = sum(memory_kib(pid, "VmHWM") for pid in peer.pids)
        run.backend_cpu = 100 * (after["backend"] - before["backend"]) / elapsed
        run.msg_per_s = result["msg_per_s"]
        run.payload_mb_per_s = result["payload_mb_per_s"]
        run.loadgen_cpu = result["loadgen_cpu_percent"]
        run.errors = result["errors"]
        run.error_details = result["error_details"]
        if result["latency_us"]:
            run.p50_us = result["latency_us"]["p50"]
            run.p99_us = result["latency_us"]["p99"]
            run.p999_us = result["latency_us"]["p999"]
    except (ChildError, OSError, ValueError, KeyError) as e:
        run.failure = f"{type(e).__name__}: {e}"
    finally:
        if loadgen is not None:
            loadgen.stop()
        peer.stop()
    return run


def measure_idle(plan: Plan, peer_name: str, settings: peers.PeerSettings) -> IdleRun:
    """
    RSS of an idle peer, then with C{plan.idle_pairs} idle pairs through it.

    A fresh echo backend serves each peer, so that the pairs closed by one
    measurement (TIME_WAIT on loopback) never crowd the next one's ports.
    """
    run = IdleRun(peer_name, plan.idle_pairs)
    echo = start_echo(plan, settings)
    try:
        peer = peers.start(peer_name, echo.wait_port(), settings)
    except ChildError as e:
        echo.stop()
        run.failure = f"did not start: {e}"
        return run
    loadgen = None
    try:
        time.sleep(plan.settle)
        assert peer.pid is not None
        run.idle_rss_kib = sum(map(memory_kib, peer.pids))
        loadgen = Child(
            f"idle loadgen for {peer_name}",
            loadgen_argv(
                plan,
                peer.port,
                peer.framing,
                "--mode",
                "idle",
                "--connections",
                str(plan.idle_pairs),
            ),
            cwd=str(settings.root),
            stdin=subprocess.PIPE,
        )
        ready = json.loads(loadgen.wait_for(READY_LINE, IDLE_OPEN_TIMEOUT)[0])
        time.sleep(plan.settle)
        run.loaded_rss_kib = sum(map(memory_kib, peer.pids))
        run.opened = ready["connections"]
        run.open_seconds = ready["seconds"]
        run.errors = ready["errors"]
        if run.opened:
            growth = run.loaded_rss_kib - run.idle_rss_kib
            run.per_pair_bytes = growth * 1024 / run.opened
        assert loadgen.process.stdin is not None
        loadgen.process.stdin.close()
        loadgen.wait(LOADGEN_SLACK)
    except (ChildError, OSError, ValueError, KeyError) as e:
        run.failure = f"{type(e).__name__}: {e}"
    finally:
        if loadgen is not None:
            loadgen.stop()
        peer.stop()
        echo.stop()
    return run


def start_echo(plan: Plan, settings: peers.PeerSettings) -> Child:
    return Child(
        "echo backend",
        [plan.python, "-m", "benchmarks.echo_backend"],
        cwd=str(settings.root),
    )


def rotated(items: list[str], by: int) -> list[str]:
    by %= max(1, len(items))
    return items[by:] + items[:by]


def run_all(
    plan: Plan, settings: peers.PeerSettings
) -> tuple[list[Run], list[IdleRun]]:
    """
    Every scenario against every peer, C{plan.reps} times, then the idle
    measurements.
    """
    runs: list[Run] = []
    echo = start_echo(plan, settings)
    try:
        echo_port = echo.wait_port()
        for rep in range(plan.reps):
            for scenario in plan.scenarios:
                for name in rotated(plan.peers_of(scenario), rep):
                    run = measure(plan, scenario, name, rep, echo, echo_port, settings)
                    runs.append(run)
                    progress(describe(run, plan.reps))
    finally:
        echo.stop()
    idle_runs = []
    if plan.idle_pairs > 0:
        settings.max_connections = plan.idle_pairs + 100
        for name in plan.peers:
            if name in plan.skipped:
                continue
            if name in NO_IDLE:
                if name != "direct":
                    plan.notes.append(
                        f"idle pairs of {name} not measured: {NO_IDLE[name]}"
                    )
                continue
            idle = measure_idle(plan, name, settings)
            idle_runs.append(idle)
            progress(describe_idle(idle))
    return runs, idle_runs


def describe(run: Run, reps: int) -> str:
    where = f"[rep {run.rep + 1}/{reps}] {run.scenario} {run.peer}"
    if not run.ok:
        return f"{where}: FAILED {run.failure}"
    churn = any(s.key == run.scenario and s.mode == "churn" for s in SCENARIOS)
    text = f"{where}: {run.msg_per_s:,.0f} {'conn/s' if churn else 'msg/s'}"
    if not math.isnan(run.proxy_cpu):
        text += f", proxy CPU {run.proxy_cpu:.0f}%"
    if run.other_cpu > NOISY:
        text += f", DISTURBED: other processes used {run.other_cpu:.0f}% CPU"
    if not math.isnan(run.p50_us):
        text += f", p50 {run.p50_us:.0f} us, p99 {run.p99_us:.0f} us"
    if run.errors:
        text += f", {run.errors} ERRORS: {'; '.join(run.error_details[:3])}"
    return text


def describe_idle(run: IdleRun) -> str:
    if run.failure:
        return f"[idle] {run.peer}: FAILED {run.failure}"
    return (
        f"[idle] {run.peer}: {run.idle_rss_kib / 1024:.1f} MiB idle, "
        f"{run.per_pair_bytes / 1024:.1f} KiB per pair ({run.opened} pairs)"
    )


def median(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def number(value: float, digits: int = 0, scale: float = 1.0) -> str:
    if math.isnan(value):
        return "-"
    return f"{value / scale:,.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append(
        "|" + "|".join("---" if i < 2 else "--:" for i in range(len(header))) + "|"
    )
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def disturbed(run: Run) -> bool:
    return run.other_cpu > NOISY


def usable(selected: list[Run]) -> list[Run]:
    """
    The runs to take medians of: the undisturbed ones when there are any.
    """
    ok = [r for r in selected if r.ok]
    return [r for r in ok if not disturbed(r)] or ok


def pick_baseline(names: list[str]) -> str | None:
    for candidate in ("gateway", "gateway-tls", "gateway-nometrics", "naive"):
        if candidate in names:
            return candidate
    return None


def report(
    plan: Plan,
    runs: list[Run],
    idle_runs: list[IdleRun],
    skipped: dict[str, str],
    settings: peers.PeerSettings,
) -> str:
    """
    The Markdown report.
    """
    out = ["# gateway benchmark", ""]
    out += [f"- {line}" for line in environment(settings)]
    out.append(
        f"- {plan.reps} repetition(s) of {plan.duration:g} s after {plan.warmup:g} s "
        f"warm-up; {plan.loadgen_procs} load generator process(es); medians below"
    )
    for name, reason in skipped.items():
        out.append(f"- skipped {name}: {reason}")
    out += [f"- {note}" for note in plan.notes]
    out.append("")

    def cell(scenario: Scenario, name: str) -> list[Run]:
        return [r for r in runs if r.scenario == scenario.key and r.peer == name]

    def stat(selected: list[Run], get: Callable[[Run], float]) -> float:
        return median(get(r) for r in usable(selected))

    for scenario in plan.scenarios:
        latency = scenario.mode == "latency"
        out.append(f"## {scenario.key}. {scenario.title}")
        out.append("")
        rate = "conn/s" if scenario.mode == "churn" else "msg/s"
        header = ["peer", "client framing", rate]
        header += ["p50 µs", "p99 µs", "p999 µs"] if latency else ["payload MB/s"]
        header += ["proxy CPU %", "echo CPU %", "loadgen CPU %", "other CPU % (max)"]
        header += ["peak RSS MiB", "runs used"]
        header += ["errors"]
        rows = []
        for name in plan.peers_of(scenario):
            selected = cell(scenario, name)
            failed = sum(not r.ok for r in selected)
            errors = sum(r.errors for r in selected)
            row = [
                name,
                peers.FRAMING[name],
                number(stat(selected, lambda r: r.msg_per_s)),
            ]
            if latency:
                row += [
                    number(stat(selected, lambda r: r.p50_us)),
                    number(stat(selected, lambda r: r.p99_us)),
                    number(stat(selected, lambda r: r.p999_us)),
                ]
            else:
                row.append(number(stat(selected, lambda r: r.payload_mb_per_s), 1))
            row += [
                number(stat(selected, lambda r: r.proxy_cpu)),
                number(stat(selected, lambda r: r.backend_cpu)),
                number(stat(selected, lambda r: r.loadgen_cpu)),
                number(max((r.other_cpu for r in selected if r.ok), default=math.nan)),
                number(stat(selected, lambda r: r.peak_rss_kib), 1, 1024),
                f"{len(usable(selected))}/{len(selected)}",
            ]
            row.append(f"{errors}" + (f" ({failed} run(s) failed)" if failed else ""))
            rows.append(row)
        out += table(header, rows)
        out.append("")

    def ratios(title: str, compared: list[tuple[Scenario, str, list[str]]]) -> None:
        out.append(f"## {title} ÷ peer, per repetition")
        out.append("")
        out.append(
            "Each ratio is of msg/s (conn/s in the connection scenarios) in"
            " one repetition; the median is of those ratios, not the ratio"
            " of the medians above."
        )
        out.append("")
        header = ["scenario", "peer"] + [f"rep {i + 1}" for i in range(plan.reps)]
        header.append("median")
        rows = []
        for scenario, baseline, others in compared:
            mine = {r.rep: r for r in cell(scenario, baseline) if r.ok}
            for name in others:
                theirs = {r.rep: r for r in cell(scenario, name) if r.ok}
                clean, noisy, cells = [], [], []
                for i in range(plan.reps):
                    if i in mine and i in theirs and theirs[i].msg_per_s:
                        ratio = mine[i].msg_per_s / theirs[i].msg_per_s
                        suspect = disturbed(mine[i]) or disturbed(theirs[i])
                        (noisy if suspect else clean).append(ratio)
                        cells.append(number(ratio, 2) + (" *" if suspect else ""))
                    else:
                        cells.append("-")
                summary = number(median(clean or noisy), 2)
                rows.append([scenario.key, name, *cells, summary])
        out.extend(table(header, rows))
        out.append("")
        out.append(
            f"\\* other processes used more than {NOISY:g} % CPU during the "
            "gateway's run or the peer's run of that repetition: that ratio is"
            " suspect, and left out of the median "
            "unless all are. Likewise, the medians in the tables above are "
            "of the undisturbed runs when there are any (runs used)."
        )
        out.append("")

    # Each scenario's gateway against its other peers (scenarios h, n and t
    # name their own, with their own gateway).
    compared = []
    for scenario in plan.scenarios:
        names = plan.peers_of(scenario)
        baseline = pick_baseline(names)
        # The WebSocket peers' clients speak another framing: they are
        # compared with each other below.
        others = [p for p in names if p != baseline and p not in peers.WEBSOCKET_PEERS]
        if baseline and others:
            compared.append((scenario, baseline, others))
    if compared:
        ratios(" or ".join(sorted({b for _, b, _ in compared})), compared)
    # WebSocket clients: the gateway against websockify, both speaking
    # WebSocket to their clients.
    if all(name in plan.peers for name in peers.WEBSOCKET_PEERS):
        first, rest = peers.WEBSOCKET_PEERS[0], list(peers.WEBSOCKET_PEERS[1:])
        ratios(first, [(s, first, rest) for s in plan.scenarios if not s.peers])

    if idle_runs:
        out.append(f"## Idle pairs ({plan.idle_pairs} client+backend pairs)")
        out.append("")
        header = ["peer", "idle RSS MiB", "RSS with pairs MiB", "per pair KiB"]
        header += ["opening s", "errors"]
        rows = []
        for idle in idle_runs:
            if idle.failure:
                rows.append(
                    [idle.peer, "-", "-", "-", "-", f"failed: {idle.failure[:80]}"]
                )
                continue
            rows.append(
                [
                    idle.peer,
                    number(idle.idle_rss_kib, 1, 1024),
                    number(idle.loaded_rss_kib, 1, 1024),
                    number(idle.per_pair_bytes, 1, 1024),
                    number(idle.open_seconds, 1),
                    f"{idle.errors}"
                    + (
                        f" (only {idle.opened} opened)"
                        if idle.opened < idle.pairs
                        else ""
                    ),
                ]
            )
        out += table(header, rows)
        out.append("")

    failures = [r for r in runs if not r.ok] + [r for r in runs if r.errors]
    if failures:
        out.append("## Failures and errors")
        out.append("")
        for r in failures:
            detail = r.failure or "; ".join(r.error_details[:3])
            out.append(
                f"- rep {r.rep + 1} {r.scenario} {r.peer}: {detail.splitlines()[0]}"
            )
        out.append("")
    return "\n".join(out)


def environment(settings: peers.PeerSettings) -> list[str]:
    """
    What the numbers were measured on.
    """
    import twisted

    lines = [
        f"{os.cpu_count()} CPU(s), {platform.machine()}, Linux {platform.release()}",
        f"Python {platform.python_version()}, Twisted {twisted.__version__} "
        f"(harness: {sys.executable})",
    ]
    try:
        import uvloop

        lines.append(
            f"loadgen, echo backend, asyncio peer on uvloop {uvloop.__version__}"
        )
    except ImportError:
        lines.append("uvloop not installed: asyncio's own loop everywhere")
    haproxy = shutil.which("haproxy")
    if haproxy:
        version = subprocess.run([haproxy, "-v"], capture_output=True, text=True)
        lines.append(version.stdout.splitlines()[0] if version.stdout else haproxy)
    commit = subprocess.run(
        ["git", "-C", str(settings.root), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
    )
    if commit.returncode == 0:
        lines.append(f"worktree at {commit.stdout.strip()}")
    if settings.gateway_options:
        lines.append(f"gateway via {settings.twistd}")
    return lines


def parse_args(
    argv: list[str] | None = None,
) -> tuple[Plan, peers.PeerSettings, str | None]:
    parser = argparse.ArgumentParser(
        description="Benchmark gateway against reference proxies (loopback only)."
    )
    parser.add_argument("--quick", action="store_true", help="about a minute in all")
    parser.add_argument("--reps", type=int, help="repetitions (3; quick: 1)")
    parser.add_argument(
        "--duration", type=float, help="seconds per run (10; quick: 0.8)"
    )
    parser.add_argument(
        "--warmup", type=float, help="seconds before counting (1; quick: 0.2)"
    )
    parser.add_argument(
        "--peers",
        default=",".join(peers.DEFAULT_PEERS),
        help=f"comma-separated, from {','.join(peers.ALL_PEERS)}",
    )
    parser.add_argument(
        "--scenarios", default="".join(s.key for s in SCENARIOS), help="e.g. ab"
    )
    parser.add_argument("--gateway-args", default="", help="extra gateway options")
    parser.add_argument(
        "--twistd", default="twistd", help="twistd of the venv the gateway runs in"
    )
    parser.add_argument(
        "--idle-pairs", type=int, help="idle pairs, 0 to skip (10000; quick: 1000)"
    )
    parser.add_argument("--loadgen-procs", type=int, default=1)
    parser.add_argument("--json", help="also write every run's figures here")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in peers.ALL_PEERS]
    if unknown:
        parser.error(f"unknown peer(s): {', '.join(unknown)}")
    scenarios = [s for s in SCENARIOS if s.key in args.scenarios]
    if not scenarios:
        parser.error("no known scenario in --scenarios")

    def pick(value: float | None, key: str) -> float:
        return defaults[key] if value is None else value

    plan = Plan(
        peers=wanted,
        scenarios=scenarios,
        reps=int(pick(args.reps, "reps")),
        duration=pick(args.duration, "duration"),
        warmup=pick(args.warmup, "warmup"),
        idle_pairs=int(pick(args.idle_pairs, "idle_pairs")),
        settle=SETTLE["quick" if args.quick else "full"],
        loadgen_procs=args.loadgen_procs,
    )
    if plan.reps < 1 or plan.duration <= 0 or plan.loadgen_procs < 1:
        parser.error("--reps, --duration and --loadgen-procs must be positive")
    settings = peers.PeerSettings(
        twistd=args.twistd, gateway_args=shlex.split(args.gateway_args)
    )
    return plan, settings, args.json


def main(argv: list[str] | None = None) -> None:
    plan, settings, json_path = parse_args(argv)
    # Each idle pair costs the proxy two descriptors; children inherit this.
    limit = raise_nofile_limit(max(65536, 2 * plan.idle_pairs + peers.FD_SPARE))
    settings.fd_limit = limit
    most = (limit - peers.FD_SPARE) // 2
    if plan.idle_pairs > most:
        plan.notes.append(
            f"idle pairs capped to {most} (from {plan.idle_pairs}): RLIMIT_NOFILE "
            f"is {limit} and cannot be raised here, a proxy needs 2 per pair"
        )
        progress(plan.notes[-1])
        plan.idle_pairs = most
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as scratch:
        settings.scratch = Path(scratch)
        wanted = list(plan.peers)
        for scenario in plan.scenarios:
            wanted += [p for p in scenario.peers if p not in wanted]
        runnable, skipped = peers.available(wanted, settings)
        plan.skipped = skipped
        plan.peers = [p for p in plan.peers if p in runnable]
        for name, reason in skipped.items():
            progress(f"skipping {name}: {reason}")
        if not runnable:
            progress("no peer can run")
            raise SystemExit(1)
        runs, idle_runs = run_all(plan, settings)
        text = report(plan, runs, idle_runs, skipped, settings)
    print(text)
    progress(f"done in {time.monotonic() - began:.0f} s")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(
                {
                    "runs": [asdict(r) for r in runs],
                    "idle": [asdict(r) for r in idle_runs],
                    "skipped": skipped,
                },
                f,
                indent=1,
            )
    if any(not r.ok or r.errors for r in runs) or any(
        r.failure or r.errors for r in idle_runs
    ):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
