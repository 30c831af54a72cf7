"""
The proxies the benchmark compares, and how to start each one against an
echo backend on a loopback port.

``gateway``            twistd -n gateway, metrics on a unix socket (no fixed port)
``gateway-nometrics``  the same with ``--metrics none``, when the option exists
``gateway-epoll``      the gateway on Twisted's stock epoll reactor
                       (``twistd --reactor=epoll``; not run by default)
``gateway-x2``         two gateway processes on one port: each is handed its own
                       SO_REUSEPORT socket the way systemd socket activation
                       hands one over (LISTEN_FDS), and the kernel spreads
                       connections between them (not run by default)
``naive``              benchmarks.naive_translator (LineReceiver + Int32StringReceiver)
``asyncio``            benchmarks.asyncio_translator (streams, uvloop when installed)
``portforward``        twisted.protocols.portforward: raw bytes, int32 clients
``haproxy``            HAProxy in TCP mode: raw bytes, int32 clients
``gateway-websocket``  the gateway with ``--client-framing websocket``: one
                       WebSocket message per message (``ws-raw`` clients)
``websockify``         websockify (PyPI), forwarding the bytes of WebSocket
                       messages to the echo backend: each message an int32
                       frame (``ws-int32`` clients)
``direct``             no proxy: the load generator talks to the echo backend
                       (the ceiling of the harness itself; not run by default)

Raw forwarders do not translate, so their clients speak the backend's
framing (int32); the translators' clients speak ``lf``.
"""

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.processes import Child, ChildError, exchange

ALL_PEERS = (
    "gateway",
    "gateway-nometrics",
    "naive",
    "asyncio",
    "portforward",
    "haproxy",
    "gateway-websocket",
    "websockify",
    "gateway-x2",
    "gateway-epoll",
    "direct",
)
DEFAULT_PEERS = ALL_PEERS[:-3]
GATEWAYS = {
    "gateway",
    "gateway-nometrics",
    "gateway-x2",
    "gateway-epoll",
    "gateway-websocket",
}
# The peers whose clients speak WebSocket, and their comparison.
WEBSOCKET_PEERS = ("gateway-websocket", "websockify")
FRAMING = {
    "gateway": "lf",
    "gateway-nometrics": "lf",
    "gateway-epoll": "lf",
    "gateway-x2": "lf",
    "naive": "lf",
    "asyncio": "lf",
    "portforward": "int32",
    "haproxy": "int32",
    "direct": "int32",
    "gateway-websocket": "ws-raw",
    "websockify": "ws-int32",
}
PYTHON_PEERS = {
    "naive": "benchmarks.naive_translator",
    "asyncio": "benchmarks.asyncio_translator",
    "portforward": "benchmarks.twisted_portforward",
}
GATEWAY_LISTENING = re.compile(r"listening on tcp:\d+ at 127\.0\.0\.1:(\d+)")
GATEWAY_READY = re.compile(r"gateway ready")
# The gateway processes of gateway-x2.
PROCESSES = 2
# systemd passes its sockets from this descriptor on (sd_listen_fds).
LISTEN_FDS_START = 3
# The gateway's default --max-connections (SPEC.md).
GATEWAY_MAX_CONNECTIONS = 10000
START_TIMEOUT = 30.0
# Descriptors a proxy needs besides two per connection pair.
FD_SPARE = 200
PROBE_TIMEOUT = 10.0
PROBE_PAYLOAD = b"benchmark probe"

HAPROXY_CONFIG = """\
global
    maxconn {maxconn}
    nbthread 1

defaults
    mode tcp
    timeout connect 10s
    timeout client 1h
    timeout server 1h

frontend benchmark
    bind fd@{fd}
    default_backend echo

backend echo
    server echo 127.0.0.1:{backend_port}
"""


@dataclass
class PeerSettings:
    """
    What starting the peers needs to know.
    """

    python: str = sys.executable
    twistd: str = "twistd"
    root: Path = Path(__file__).resolve().parent.parent
    scratch: Path = Path("/tmp")
    gateway_args: list[str] = field(default_factory=list)
    gateway_options: str = ""
    # Concurrent connections the peer must accept (idle measurements).
    max_connections: int = GATEWAY_MAX_CONNECTIONS
    # RLIMIT_NOFILE the children inherit.
    fd_limit: int = 1024


@dataclass
class RunningPeer:
    """
    A started peer: where its clients connect and the process to sample.
    """

    name: str
    framing: str
    port: int
    child: Child | None
    # Further processes of the same peer (gateway-x2).
    others: list[Child] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return None if self.child is None else self.child.pid

    @property
    def pids(self) -> list[int]:
        """
        Every process of the peer, whose CPU and memory are the peer's.
        """
        return [c.pid for c in ([self.child] if self.child else []) + self.others]

    def stop(self) -> int | None:
        for other in self.others:
            other.stop()
        return None if self.child is None else self.child.stop()


def frame(framing: str, payload: bytes) -> bytes:
    """
    C{payload} framed for a peer's clients.
    """
    if framing == "lf":
        return payload + b"\n"
    if framing == "ws-raw":
        return payload
    return struct.pack(">I", len(payload)) + payload


def gateway_help(twistd: str, root: Path) -> str | None:
    """
    The gateway plugin's option help, or None when twistd cannot run it.
    """
    try:
        done = subprocess.run(
            [twistd, "gateway", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=root,
            env=gateway_environment(root),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or "--backend" not in done.stdout:
        return None
    return done.stdout


def gateway_environment(root: Path) -> dict[str, str]:
    """
    The environment for twistd: the worktree first on the path, so that its
    plugin and package are the ones measured.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(root), env.get("PYTHONPATH", "")) if p
    )
    return env


def available(
    wanted: list[str], settings: PeerSettings
) -> tuple[list[str], dict[str, str]]:
    """
    Which of the C{wanted} peers can run here, and why the others cannot.
    """
    skipped: dict[str, str] = {}
    if GATEWAYS & set(wanted):
        twistd = shutil.which(settings.twistd) or settings.twistd
        settings.twistd = twistd
        settings.gateway_options = gateway_help(twistd, settings.root) or ""
        if not settings.gateway_options:
            reason = f"{twistd} cannot run the gateway plugin"
            skipped.update(dict.fromkeys(GATEWAYS, reason))
        elif "--metrics" not in settings.gateway_options:
            skipped["gateway-nometrics"] = "the gateway has no --metrics option"
    if "haproxy" in wanted and shutil.which("haproxy") is None:
        skipped["haproxy"] = "haproxy is not on PATH"
    if "websockify" in wanted and websockify_command(settings) is None:
        skipped["websockify"] = (
            "websockify is not installed (pip install websockify) beside"
            f" {settings.python}"
        )
    if (
        "gateway-websocket" in wanted
        and settings.gateway_options
        and "websocket" not in settings.gateway_options
    ):
        skipped["gateway-websocket"] = "the gateway has no WebSocket client framing"
    runnable = [p for p in wanted if p not in skipped]
    return runnable, {p: r for p, r in skipped.items() if p in wanted}


def start(name: str, backend_port: int, settings: PeerSettings) -> RunningPeer:
    """
    Start peer C{name} in front of the echo backend, wait until it is bound,
    and check one message goes through it.

    @raise ChildError: it did not start or did not echo the probe.
    """
    framing = FRAMING[name]
    if name == "direct":
        peer = RunningPeer(name, framing, backend_port, None)
    elif name in PYTHON_PEERS:
        child = Child(
            name,
            [
                settings.python,
                "-m",
                PYTHON_PEERS[name],
                "--backend-port",
                str(backend_port),
            ],
            cwd=str(settings.root),
        )
        peer = _started(name, framing, child, None)
    elif name == "haproxy":
        peer = _start_haproxy(backend_port, settings)
    elif name == "websockify":
        peer = _start_websockify(backend_port, settings)
    elif name == "gateway-x2":
        peer = _start_gateways(backend_port, settings, PROCESSES)
    else:
        peer = _start_gateway(name, backend_port, settings)
    try:
        _probe(peer)
    except BaseException:
        peer.stop()
        raise
    return peer


def _started(name: str, framing: str, child: Child, port: int | None) -> RunningPeer:
    try:
        if port is None:
            port = child.wait_port(START_TIMEOUT)
    except BaseException:
        child.stop()
        raise
    return RunningPeer(name, framing, port, child)


def _gateway_argv(
    name: str, backend_port: int, settings: PeerSettings, listen: str, index: int = 0
) -> list[str]:
    argv = [settings.twistd, "-n", "--pidfile="]
    if name == "gateway-epoll":
        argv.append("--reactor=epoll")
    argv += [
        "gateway",
        "--listen",
        listen,
        "--backend",
        f"tcp:host=127.0.0.1:port={backend_port}",
    ]
    if name == "gateway-websocket":
        argv += ["--client-framing", "websocket"]
    if "--metrics" in settings.gateway_options:
        if name == "gateway-nometrics":
            argv += ["--metrics", "none"]
        else:
            socket_path = settings.scratch / f"metrics-{os.getpid()}-{index}.sock"
            socket_path.unlink(missing_ok=True)
            argv += ["--metrics", f"unix:{socket_path}"]
    wanted = settings.max_connections
    if (
        wanted > GATEWAY_MAX_CONNECTIONS
        and "--max-connections" in settings.gateway_options
    ):
        argv += ["--max-connections", str(wanted)]
    return argv + settings.gateway_args


def _start_gateway(name: str, backend_port: int, settings: PeerSettings) -> RunningPeer:
    argv = _gateway_argv(name, backend_port, settings, "tcp:0:interface=127.0.0.1")
    child = Child(
        name, argv, cwd=str(settings.root), env=gateway_environment(settings.root)
    )
    try:
        port = int(child.wait_for(GATEWAY_LISTENING, START_TIMEOUT)[1])
    except BaseException:
        child.stop()
        raise
    return RunningPeer(name, FRAMING[name], port, child)


# Puts the inherited socket at descriptor 3 and execs the gateway with its own
# pid in LISTEN_PID, as systemd would. (A shell's "3<&N" takes only one-digit
# descriptors, and the test runner may have more open than that.)
_HAND_OVER = f"""
import os, sys
fd = int(sys.argv[1])
if fd != {LISTEN_FDS_START}:
    os.dup2(fd, {LISTEN_FDS_START})
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def _start_gateways(
    backend_port: int, settings: PeerSettings, count: int
) -> RunningPeer:
    """
    C{count} gateways on one port, each with its own listening socket
    (SO_REUSEPORT), handed over as systemd does: descriptor 3, C{LISTEN_FDS},
    C{LISTEN_FDNAMES}, and C{LISTEN_PID} set to the gateway's own pid.
    """
    sockets: list[socket.socket] = []
    children: list[Child] = []
    port = 0
    try:
        for index in range(count):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(4096)
            listener.set_inheritable(True)
            port = listener.getsockname()[1]
            fd = listener.fileno()
            argv = _gateway_argv(
                "gateway-x2",
                backend_port,
                settings,
                "systemd:domain=INET:name=gateway",
                index,
            )
            env = gateway_environment(settings.root)
            env.update(LISTEN_FDS="1", LISTEN_FDNAMES="gateway")
            child = Child(
                f"gateway-x2 #{index + 1}",
                [sys.executable, "-c", _HAND_OVER, str(fd), *argv],
                cwd=str(settings.root),
                env=env,
                pass_fds=[fd],
            )
            children.append(child)
        for child in children:
            child.wait_for(GATEWAY_READY, START_TIMEOUT)
    except BaseException:
        for child in children:
            child.stop()
        raise
    finally:
        for listener in sockets:
            listener.close()
    return RunningPeer("gateway-x2", "lf", port, children[0], children[1:])


def _start_haproxy(backend_port: int, settings: PeerSettings) -> RunningPeer:
    # HAProxy cannot report a port 0 listener's port: hand it a bound socket.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4096)
        listener.set_inheritable(True)
        port = listener.getsockname()[1]
        config = settings.scratch / f"haproxy-{port}.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(
                maxconn=haproxy_maxconn(settings),
                fd=listener.fileno(),
                backend_port=backend_port,
            )
        )
        child = Child(
            "haproxy",
            ["haproxy", "-db", "-f", str(config)],
            pass_fds=[listener.fileno()],
        )
    finally:
        listener.close()
    return _started("haproxy", "int32", child, port)


def haproxy_maxconn(settings: PeerSettings) -> int:
    """
    Room for the connections wanted, within the descriptors HAProxy may open
    (two per connection, plus its own).
    """
    return min(settings.max_connections + 1000, (settings.fd_limit - FD_SPARE) // 2)


def websockify_command(settings: PeerSettings) -> list[str] | None:
    """
    How to run websockify with the benchmark's Python, or None when it is
    not installed there.
    """
    done = subprocess.run(
        [settings.python, "-c", "import websockify"], capture_output=True, timeout=60
    )
    if done.returncode != 0:
        return None
    return [settings.python, "-m", "websockify"]


# websockify reports no port it was given as 0: a free one is found first.
WEBSOCKIFY_LISTENING = re.compile(r"proxying from 127\.0\.0\.1:(\d+)")


def _start_websockify(backend_port: int, settings: PeerSettings) -> RunningPeer:
    """
    websockify as its users run it (a process forked per connection), in
    front of the echo backend.
    """
    command = websockify_command(settings)
    assert command is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    child = Child(
        "websockify",
        [*command, f"127.0.0.1:{port}", f"127.0.0.1:{backend_port}"],
        cwd=str(settings.scratch),
    )
    try:
        child.wait_for(WEBSOCKIFY_LISTENING, START_TIMEOUT)
    except BaseException:
        child.stop()
        raise
    return RunningPeer("websockify", FRAMING["websockify"], port, child)


def websocket_exchange(port: int, payload: bytes, timeout: float) -> bytes:
    """
    Send C{payload} as one WebSocket message to 127.0.0.1:C{port} and
    return the payloads of the messages that come back, joined, once they
    are as long as it.
    """
    from benchmarks.loadgen import UPGRADE_REQUEST, WebSocketClientSide

    side = WebSocketClientSide(len(payload))
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(UPGRADE_REQUEST)
        received = b""
        sent = False
        while len(received) < len(payload):
            if side.open and not sent:
                sock.sendall(side.wrap(payload))
                sent = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"got {received!r} of {payload!r}")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {received!r}")
            received += side.feed(chunk)
        return received


def _probe(peer: RunningPeer) -> None:
    message = frame(peer.framing, PROBE_PAYLOAD)
    try:
        if peer.framing.startswith("ws-"):
            reply = websocket_exchange(peer.port, message, PROBE_TIMEOUT)
        else:
            reply = exchange(peer.port, message, len(message), PROBE_TIMEOUT)
    except OSError as e:
        raise ChildError(f"{peer.name} did not echo a probe: {e}\n{_tail(peer)}")
    if reply != message:
        raise ChildError(f"{peer.name} echoed {reply!r} for {message!r}")


def _tail(peer: RunningPeer) -> str:
    return "" if peer.child is None else peer.child.tail()
