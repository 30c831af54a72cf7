"""
Tests for L{gateway.daemon}: a failed start-up told once, and the private
parts of twistd it relies on, pinned.
"""

from __future__ import annotations

import inspect
import io
import os
import signal
import sys

from twisted.scripts._twistd_unix import UnixApplicationRunner, UnixAppLogger
from twisted.trial.unittest import SynchronousTestCase

from gateway.daemon import (
    FAILED,
    STARTED,
    StartupReport,
    installParentWait,
    waitForStart,
)
from gateway.service import twistdLogFile

LINE = "gateway: --listen tcp:7000: cannot listen on 127.0.0.1:7000: address in use"


class _Runner:
    def __init__(self, config: dict) -> None:
        self.config = config


class WaitForStartTests(SynchronousTestCase):
    """
    L{waitForStart}, in twistd's first process.
    """

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "__stderr__", self.stderr)
        self.read, self.write = os.pipe()
        self.addCleanup(self._close, self.read)
        self.addCleanup(self._close, self.write)
        self.pidfile = self.mktemp()
        self.runner = _Runner({"pidfile": self.pidfile})

    def _close(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError:
            pass

    def test_started(self) -> None:
        os.write(self.write, STARTED)
        self.assertEqual(waitForStart(self.runner, self.read), 0)
        self.assertEqual(self.stderr.getvalue(), "")

    def test_failedLine(self) -> None:
        """
        The gateway's line is printed alone, whole even past twistd's 100
        bytes.
        """
        line = LINE + " (" + "x" * 200 + ")"
        os.write(self.write, FAILED + line.encode() + b"\n")
        self.assertEqual(waitForStart(self.runner, self.read), 1)
        self.assertEqual(self.stderr.getvalue(), line + "\n")

    def test_twistdsOwnFailure(self) -> None:
        """
        twistd's own report (C{ExceptionClass: message}) is put in words.
        """
        os.write(
            self.write, b"1 PermissionError: [Errno 13] Permission denied: 'x.pid'"
        )
        self.assertEqual(waitForStart(self.runner, self.read), 1)
        self.assertEqual(
            self.stderr.getvalue(),
            "gateway: start-up failed: x.pid: permission denied\n",
        )

    def test_silentDeath(self) -> None:
        """
        A daemon that dies without writing: the wait ends (the parent's own
        copy of the write end is closed, else it would block for ever), with
        a line and status 1, and the dead daemon's pid file is removed.
        """
        with open(self.pidfile, "w") as file:
            file.write("999999")
        self.assertEqual(waitForStart(self.runner, self.read), 1)
        self.assertIn("the daemon ended while starting", self.stderr.getvalue())
        self.assertFalse(os.path.exists(self.pidfile))
        self.assertRaises(OSError, os.fstat, self.write)


class StartupReportTests(SynchronousTestCase):
    """
    L{StartupReport.fail} in the daemon (or in C{-n} mode).
    """

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "__stderr__", self.stderr)
        self.pidfile = self.mktemp()
        with open(self.pidfile, "w") as file:
            file.write(str(os.getpid()))

    def test_withoutTwistd(self) -> None:
        error = self.assertRaises(SystemExit, StartupReport().fail, LINE)
        self.assertEqual(error.code, LINE)

    def test_daemon(self) -> None:
        """
        The line goes down the status pipe, as one write; the pid file is
        removed; status 1.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        config = {"statusPipe": write, "pidfile": self.pidfile, "logfile": None}
        error = self.assertRaises(SystemExit, StartupReport(config).fail, LINE)
        self.assertEqual(error.code, 1)
        self.assertEqual(os.read(read, 4096), FAILED + LINE.encode() + b"\n")
        self.assertEqual(os.read(read, 4096), b"", "closed")
        self.assertIsNone(config["statusPipe"])
        self.assertFalse(os.path.exists(self.pidfile))
        self.assertEqual(self.stderr.getvalue(), "")

    def test_readyWhenReady(self) -> None:
        """
        The gateway takes the status pipe from twistd, which would report
        "started" before its reactor runs (and handles SIGTERM), and writes
        it itself once ready.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        config = {"statusPipe": write, "pidfile": self.pidfile}
        report = StartupReport(config)
        report.claim()
        self.assertIsNone(config["statusPipe"], "twistd writes nothing")
        report.ready()
        self.assertEqual(os.read(read, 4096), STARTED)
        self.assertEqual(os.read(read, 4096), b"", "closed")
        report.ready()

    def test_failLate(self) -> None:
        """
        A listener failing once the reactor runs: the line goes down the
        pipe, and nothing is raised into the reactor.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        report = StartupReport({"statusPipe": write, "pidfile": self.pidfile})
        report.claim()
        report.failLate(LINE)
        self.assertEqual(os.read(read, 4096), FAILED + LINE.encode() + b"\n")
        self.assertFalse(os.path.exists(self.pidfile))

    def test_foreground(self) -> None:
        """
        C{-n}: the line on stderr.
        """
        config = {"statusPipe": None, "pidfile": self.pidfile, "nodaemon": True}
        error = self.assertRaises(SystemExit, StartupReport(config).fail, LINE)
        self.assertEqual(error.code, 1)
        self.assertEqual(self.stderr.getvalue(), LINE + "\n")
        self.assertFalse(os.path.exists(self.pidfile))

    def test_otherPidfile(self) -> None:
        """
        A pid file naming another process is not this one's to remove.
        """
        with open(self.pidfile, "w") as file:
            file.write("1")
        config = {"pidfile": self.pidfile, "nodaemon": True}
        self.assertRaises(SystemExit, StartupReport(config).fail, LINE)
        self.assertTrue(os.path.exists(self.pidfile))


class TwistdPinTests(SynchronousTestCase):
    """
    The private parts of twistd that L{gateway.daemon} and
    L{gateway.service.LogReopenService} rely on are still there: when one
    of these fails, a Twisted release changed them.
    """

    def test_waitForStart(self) -> None:
        """
        The first process waits in C{self._waitForStart(r)}, and the child
        reports through C{config["statusPipe"]}: C{b"0"}, or C{b"1 "} and
        a message.
        """
        self.assertIn(
            "self._waitForStart(r)", inspect.getsource(UnixApplicationRunner.daemonize)
        )
        post = inspect.getsource(UnixApplicationRunner.postApplication)
        self.assertIn('self.config.get("statusPipe", None)', post)
        self.assertIn('b"0"', post)
        self.assertIn(
            'f"1 {', inspect.getsource(UnixApplicationRunner._formatChildException)
        )
        self.assertEqual(
            list(inspect.signature(UnixApplicationRunner._waitForStart).parameters),
            ["self", "readPipe"],
        )

    def test_install(self) -> None:
        original = UnixApplicationRunner._waitForStart
        self.addCleanup(setattr, UnixApplicationRunner, "_waitForStart", original)
        self.assertTrue(installParentWait())
        self.assertIs(UnixApplicationRunner._waitForStart, waitForStart)

    def test_logFileInHandler(self) -> None:
        """
        twistd writing a log file installs a SIGUSR1 handler whose closure
        holds the C{LogFile} as C{logFile}.
        """
        previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        path = os.path.abspath(self.mktemp())
        logger = UnixAppLogger(
            {"logfile": path, "nodaemon": False, "syslog": False, "prefix": "x"}
        )
        logger._getLogObserver()
        logFile = twistdLogFile(signal.getsignal(signal.SIGUSR1))
        self.assertIsNotNone(logFile)
        self.addCleanup(logFile.close)
        self.assertEqual(logFile.path, path)
