"""
Child processes for the benchmarks: start one, drain and watch what it
prints (its port, its result line), sample its CPU time and memory from
/proc, stop it.

Output is read by a thread from the start, so a chatty child (a gateway
logging every closed connection) can never block on a full pipe.
"""

import collections
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence

# "echo backend listening on 127.0.0.1:PORT", or the gateway's
# "listening on tcp:0 at 127.0.0.1:PORT".
ANNOUNCED = re.compile(r"listening on (?:\S+ at )?127\.0\.0\.1:(\d+)")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Lines of a child's output kept for waiting on and for error messages.
KEPT_LINES = 2000
STOP_TIMEOUT = 15.0


class ChildError(RuntimeError):
    """
    A child process did not do what was expected of it.
    """


class Child:
    """
    A running child process, its output merged and drained line by line.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        pass_fds: Sequence[int] = (),
        stdin: int | None = subprocess.DEVNULL,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.process = subprocess.Popen(
            self.argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            pass_fds=tuple(pass_fds),
        )
        self._lines: collections.deque[str] = collections.deque(maxlen=KEPT_LINES)
        self._total = 0
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(
            target=self._drain, name=f"drain {name}", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._changed:
                self._lines.append(line)
                self._total += 1
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """
        The first line of output (since the start) that C{pattern} matches,
        waiting for it at most C{timeout} seconds.

        @raise ChildError: it exited, or time ran out, without printing one.
        """
        deadline = time.monotonic() + timeout
        cursor = 0
        with self._changed:
            while True:
                first = self._total - len(self._lines)
                for index in range(max(cursor, first), self._total):
                    match = pattern.search(self._lines[index - first])
                    if match is not None:
                        return match
                cursor = self._total
                if self._eof:
                    self.process.wait()
                    raise ChildError(
                        f"{self.name} exited (status {self.process.returncode}) "
                        f"without printing {pattern.pattern!r}:\n{self.tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChildError(
                        f"{self.name} printed no {pattern.pattern!r} within "
                        f"{timeout:g} s:\n{self.tail()}"
                    )
                self._changed.wait(remaining)

    def wait_port(self, timeout: float = 30.0) -> int:
        """
        The port the child announced it listens on.
        """
        return int(self.wait_for(ANNOUNCED, timeout)[1])

    def tail(self, count: int = 20) -> str:
        """
        The last lines of output, for error messages.
        """
        lines = list(self._lines)[-count:]
        return "\n".join("    " + line for line in lines)

    def wait(self, timeout: float) -> int:
        """
        Wait for the child to exit by itself; its exit status.
        """
        status = self.process.wait(timeout)
        self._reader.join(5.0)
        return status

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """
        SIGTERM, then SIGKILL if it has not exited after C{timeout} seconds.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5.0)
        return self.process.returncode


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU time of a process (all its threads), in seconds.
    """
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # Fields after the parenthesised command name start at field 3 (state);
    # utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def all_cpu_seconds() -> dict[int, tuple[int, float]]:
    """
    Every process's parent pid and CPU time (see L{cpu_seconds}), by pid.
    Processes that end while this reads are left out.
    """
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        found[int(entry.name)] = (int(fields[1]), cpu)
    return found


def cpu_of(
    before: dict[int, tuple[int, float]],
    after: dict[int, tuple[int, float]],
    pids: set[int],
) -> float:
    """
    CPU seconds used between two L{all_cpu_seconds} snapshots by C{pids}
    and their children.
    """
    total = 0.0
    for pid, (parent, cpu) in after.items():
        if pid in pids or parent in pids:
            total += cpu - before.get(pid, (parent, 0.0))[1]
    return total


def machine_cpu_seconds() -> float:
    """
    CPU seconds all processes together have used since boot (user, nice and
    system time from /proc/stat, summed over CPUs), including processes that
    have ended since.
    """
    with open("/proc/stat") as f:
        fields = f.readline().split()
    assert fields[0] == "cpu"
    return sum(int(x) for x in fields[1:4]) / CLOCK_TICKS


def memory_kib(pid: int, key: str = "VmRSS") -> int:
    """
    A memory figure of a process from /proc/PID/status (VmRSS, VmHWM, ...).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def exchange(
    port: int, data: bytes, reply_size: int, timeout: float, tls: bool = False
) -> bytes:
    """
    Send C{data} to 127.0.0.1:C{port} and read C{reply_size} bytes back,
    within C{timeout} seconds in all; over TLS 1.3 when C{tls} (any
    certificate accepted).

    @raise OSError: on a connection failure, or C{TimeoutError} when the
        reply did not come in time.
    """
    deadline = time.monotonic() + timeout
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls:
        from benchmarks.loadgen import client_tls

        try:
            # The plain socket is detached into the TLS one.
            sock = client_tls().wrap_socket(sock, server_hostname="localhost")
        except BaseException:
            sock.close()
            raise
    with sock:
        sock.sendall(data)
        received = bytearray()
        while len(received) < reply_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"got {bytes(received)!r} of {reply_size} bytes")
            sock.settimeout(remaining)
            chunk = sock.recv(reply_size - len(received))
            if not chunk:
                raise ConnectionError(f"closed after {bytes(received)!r}")
            received += chunk
        return bytes(received)
