"""
End to end: what a real C{twistd gateway} says when it cannot start, in
the foreground and as a daemon, and what C{--help} and C{--version} print.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import tempfile

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.e2e import DEADLINE, TWISTD, runToEnd
from tests.test_tap import PYTHON_WORDS

# Usage text that twistd prints for its own errors; never for the gateway's.
USAGE_WORDS = ("Usage:", "Options:", "--help")


class OneLineTests(TestCase):
    """
    A bad option ends C{twistd -n gateway} with one line on stderr, nothing
    on stdout, status 1: no usage text and no traceback.
    """

    async def test_badValues(self) -> None:
        """
        A sample of the mistakes (tests.test_tap runs them all through
        twistd's own option parser), two processes at a time.
        """
        cases = [
            (["--backend", "tcp:host=x"], "--backend"),
            (["--listen", "tcp6:7000:interface=::1"], "--listen"),
            (["--listen", "tcp:127.0.0.1:7000"], "--listen"),
            (["--backend", "tls:h:1:trustRoots=/nonexistent"], "--backend"),
            (["--listen", "unix:/nonexistent/dir/gw.sock"], "--listen"),
            (["--client-framing", "lf", "--client-framing", "crlf"], "--client"),
            (["--backend-framing", "int8"], "--backend-framing"),
            (["--listen", "ssl:7443"], "--listen"),
        ]
        processes = []
        for start in range(0, len(cases), 2):
            processes += await gatherResults(
                [
                    runToEnd([*arguments, "--metrics", "none"])
                    for arguments, _ in cases[start : start + 2]
                ]
            )
        for (arguments, option), process in zip(cases, processes):
            errors = process.errors.decode("utf-8", "replace")
            self.assertEqual(process.exitCode, 1, errors)
            self.assertEqual(process.output, b"", arguments)
            lines = errors.splitlines()
            self.assertEqual(len(lines), 1, errors)
            self.assertIn(option, lines[0])
            for word in PYTHON_WORDS + USAGE_WORDS:
                self.assertNotIn(word, lines[0])

    async def test_portInUse(self) -> None:
        """
        A listener that cannot bind: one line on stderr, naming the option,
        the address and why, and status 1.
        """
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            process = await runToEnd(
                ["--listen", f"tcp:{port}:interface=127.0.0.1", "--metrics", "none"]
            )
        self.assertEqual(process.exitCode, 1)
        self.assertEqual(
            process.errors.decode(),
            f"gateway: --listen tcp:{port}:interface=127.0.0.1: cannot listen on"
            f" 127.0.0.1:{port}: address already in use (another process listens"
            " there)\n",
        )
        self.assertNotIn("Traceback", process.log())


def twistd(
    arguments: list[str], directory: str | None = None
) -> subprocess.CompletedProcess[str]:
    """
    Run C{twistd} with C{arguments} to its end (or the deadline).
    """
    return subprocess.run(
        [TWISTD, *arguments],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=directory,
    )


class HelpAndVersionTests(SynchronousTestCase):
    def test_help(self) -> None:
        """
        C{--help} still prints the whole usage, and exits 0.
        """
        result = twistd(["gateway", "--help"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--max-message-size=", result.stdout)
        self.assertIn("--listen-tls=", result.stdout)

    def test_version(self) -> None:
        """
        C{twistd gateway --version}: one line with the gateway's, Twisted's,
        Python's and OpenSSL's versions, status 0.
        """
        from gateway.tap import versionLine

        result = twistd(["gateway", "--version"])
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (0, versionLine() + "\n", ""),
        )


class DaemonTests(SynchronousTestCase):
    """
    C{twistd gateway} without C{-n}: twistd forks a daemon and waits for it
    to start. A failure after the fork ends the waiting process at once
    with the one line and status 1, and leaves no pid file.
    """

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="gw-daemon-")
        self.addCleanup(subprocess.run, ["rm", "-rf", self.directory])
        self.pidfile = os.path.join(self.directory, "twistd.pid")
        self.logfile = os.path.join(self.directory, "twistd.log")

    def taken(self) -> int:
        """
        A loopback port something listens on until the test ends.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        return taken.getsockname()[1]

    def daemon(self, arguments: list[str]) -> subprocess.CompletedProcess[str]:
        return twistd(
            [f"--pidfile={self.pidfile}", f"--logfile={self.logfile}", "gateway"]
            + arguments,
            self.directory,
        )

    def assertFailed(self, result: subprocess.CompletedProcess[str], line: str) -> None:
        self.assertEqual((result.returncode, result.stdout), (1, ""), result.stderr)
        self.assertEqual(result.stderr, line + "\n")
        self.assertFalse(os.path.exists(self.pidfile), "the pid file is left")
        with open(self.logfile) as log:
            text = log.read()
        self.assertIn(line, text)
        self.assertNotIn("Traceback", text)

    def test_listenerPortInUse(self) -> None:
        port = self.taken()
        result = self.daemon(
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--metrics", "none"]
        )
        self.assertFailed(
            result,
            f"gateway: --listen tcp:{port}:interface=127.0.0.1: cannot listen on"
            f" 127.0.0.1:{port}: address already in use (another process listens"
            " there)",
        )

    def test_metricsPortInUse(self) -> None:
        """
        The metrics listener binds after the proxy's, which are bound (and
        closed again by the exit) by then.
        """
        port = self.taken()
        result = self.daemon(
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--metrics",
                f"tcp:{port}:interface=127.0.0.1",
            ]
        )
        self.assertFailed(
            result,
            f"gateway: --metrics tcp:{port}:interface=127.0.0.1: cannot listen on"
            f" 127.0.0.1:{port}: address already in use (another process listens"
            " there)",
        )

    def test_optionError(self) -> None:
        """
        An option error, before the fork, is the same one line.
        """
        result = self.daemon(["--backend", "tcp:host=x"])
        self.assertEqual(result.returncode, 1)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn("--backend 'tcp:host=x': no port", result.stderr)
        self.assertFalse(os.path.exists(self.pidfile))

    def test_started(self) -> None:
        """
        A daemon that starts: twistd returns 0 at once, silently, and the
        daemon runs under the pid in the pid file, which it removes when
        SIGTERM ends it.
        """
        if not hasattr(os, "pidfd_open"):
            raise SkipTest("needs os.pidfd_open (Linux 5.3, Python 3.9)")
        result = self.daemon(
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--metrics",
                "tcp:0:interface=127.0.0.1",
            ]
        )
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "", ""))
        with open(self.pidfile) as file:
            pid = int(file.read())
        pidfd = os.pidfd_open(pid)
        self.addCleanup(os.close, pidfd)
        os.kill(pid, signal.SIGTERM)
        readable, _, _ = select.select([pidfd], [], [], DEADLINE)
        self.assertEqual(readable, [pidfd], "the daemon ended")
        self.assertFalse(os.path.exists(self.pidfile))

    def test_sigusr1ReopensLogFile(self) -> None:
        """
        After logrotate has moved the log file away, SIGUSR1 makes the
        daemon write to a new file at the same path. (SIGUSR1 is handled
        before a SIGTERM pending with it: lower signals are run first.)
        """
        if not hasattr(os, "pidfd_open"):
            raise SkipTest("needs os.pidfd_open (Linux 5.3, Python 3.9)")
        result = self.daemon(
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--metrics",
                "tcp:0:interface=127.0.0.1",
            ]
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(self.pidfile) as file:
            pid = int(file.read())
        pidfd = os.pidfd_open(pid)
        self.addCleanup(os.close, pidfd)
        rotated = self.logfile + ".1"
        os.rename(self.logfile, rotated)
        os.kill(pid, signal.SIGUSR1)
        os.kill(pid, signal.SIGTERM)
        readable, _, _ = select.select([pidfd], [], [], DEADLINE)
        self.assertEqual(readable, [pidfd], "the daemon ended")
        with open(rotated) as file:
            before = file.read()
        with open(self.logfile) as file:
            after = file.read()
        self.assertIn("gateway ready", before)
        self.assertNotIn("reopened", before)
        self.assertIn(f"SIGUSR1: log file {self.logfile} reopened", after)
        self.assertIn("Server Shut Down.", after)
