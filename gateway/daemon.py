"""
A failed start-up, told to the operator once, in daemon mode too.

twistd without C{-n} daemonizes (C{twisted.scripts._twistd_unix}
C{UnixApplicationRunner.daemonize}): it forks, the child forks again, and
the first process waits in C{_waitForStart} for the grandchild to write to
a status pipe (C{config["statusPipe"]}): C{b"0"} once the application
started, or C{b"1 "} and an exception's text if C{startApplication} raised
an L{Exception}. Two faults follow:

 - The waiting parent keeps its own copy of the pipe's write end, so a
   grandchild that ends without writing (a C{SystemExit}, which twistd does
   not catch there, or a signal) leaves the parent blocked for ever beside
   its defunct child, and the pid file behind.
 - What the parent prints is Python's: C{An error has occurred:
   b'ExceptionClass: ...'}, cut at 100 bytes.

So the gateway reports its own start-up (L{StartupReport}), failures too:
the line goes down the status pipe (or, in C{-n} mode, to stderr), the pid
file is removed, and the process exits with status 1; and the parent's
wait (L{installParentWait}) closes its copy of the write end, reads the
whole line, prints it alone, and removes a pid file the dead daemon left.

Private Twisted names used here: C{UnixApplicationRunner._waitForStart}
(replaced), its C{config} with the keys C{statusPipe}, C{pidfile},
C{nodaemon}, C{logfile} and C{syslog}, and the status pipe's protocol.
C{tests.test_daemon} pins them, and runs real daemonized twistd processes;
should the method disappear, twistd's own wait is left in place.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from typing import Any, NoReturn

from twisted.logger import Logger
from twisted.python.util import untilConcludes

log = Logger(namespace="gateway.daemon")

STARTED = b"0"
FAILED = b"1 "
# One write of at most PIPE_BUF bytes reaches a pipe's reader whole.
PIPE_BUF = 4096


class StartupReport:
    """
    Tells twistd's waiting first process how start-up went, and ends a
    gateway that cannot start: one line for the operator, status 1, no pid
    file left behind.

    twistd writes "started" down the status pipe as soon as the services
    have started, before its reactor runs and so before the reactor handles
    SIGTERM: a SIGTERM sent the moment C{twistd} returned would kill the
    daemon outright, pid file left. So the gateway takes the pipe
    (L{claim}) and writes "started" itself once it is ready (L{ready}):
    every listener bound, the reactor running.

    @param config: twistd's parsed options (the parent of the gateway's
        own), or L{None} when the gateway runs without twistd (tests).
    """

    def __init__(self, config: Any = None) -> None:
        self.config = config
        self._pipe: int | None = None

    def claim(self) -> None:
        """
        Take the status pipe from twistd (in the daemon, after the fork).
        """
        if self.config is not None and self._pipe is None:
            self._pipe = self.config.get("statusPipe")
            self.config["statusPipe"] = None

    def ready(self) -> None:
        """
        Tell the waiting process that the daemon started.
        """
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            untilConcludes(os.write, pipe, STARTED)
            untilConcludes(os.close, pipe)

    def failLate(self, line: str) -> None:
        """
        A listener failed after the reactor started: tell it as L{fail}
        does, without raising (the caller stops the reactor).
        """
        try:
            self.fail(line)
        except SystemExit:
            pass

    def fail(self, line: str) -> NoReturn:
        """
        Tell C{line} and end the process with status 1.

        @param line: one line naming what failed, e.g. C{gateway: --listen
            tcp:7000: cannot listen on 127.0.0.1:7000: address already in
            use}.
        """
        config = self.config
        if config is None:
            raise SystemExit(line)
        self.claim()
        pipe, self._pipe = self._pipe, None
        # All before the parent hears of the failure: it exits once it has.
        if pipe is not None or _logsToFile(config):
            # The log file keeps the reason beside the earlier lines.
            log.critical("{line}", line=line)
        _removePidfile(config.get("pidfile"))
        if pipe is not None:
            # Daemon mode: the waiting parent prints it (installParentWait).
            message = FAILED + line.encode("utf-8", "backslashreplace") + b"\n"
            untilConcludes(os.write, pipe, message[:PIPE_BUF])
            untilConcludes(os.close, pipe)
        if pipe is None:
            # Not through sys.stderr: twistd has made that a log observer.
            stderr = sys.__stderr__
            if stderr is not None:
                stderr.write(line + "\n")
                stderr.flush()
        raise SystemExit(1)


def _logsToFile(config: Any) -> bool:
    logfile = config.get("logfile")
    return bool(config.get("syslog")) or (logfile is not None and logfile != "-")


def _removePidfile(pidfile: str | None) -> None:
    """
    Remove the pid file twistd wrote for this process.
    """
    if not pidfile:
        return
    try:
        with open(pidfile, "rb") as file:
            pid = int(file.read().strip() or b"0")
    except (OSError, ValueError):
        return
    if pid == os.getpid():
        try:
            os.unlink(pidfile)
        except OSError:
            pass


def installParentWait() -> bool:
    """
    Replace twistd's wait for the daemon's start with L{waitForStart}.

    @return: whether it was replaced (twistd on this platform has the
        method this relies on).
    """
    try:
        from twisted.scripts._twistd_unix import UnixApplicationRunner
    except ImportError:
        return False
    if not callable(getattr(UnixApplicationRunner, "_waitForStart", None)):
        return False
    UnixApplicationRunner._waitForStart = waitForStart  # type: ignore[method-assign]
    return True


def waitForStart(runner: Any, readPipe: int) -> int:
    """
    In twistd's first process: wait for the daemon's status, print its
    failure line alone on stderr, and return the exit status (0 started,
    1 failed).

    @param runner: twistd's C{UnixApplicationRunner}.
    @param readPipe: the read end of the status pipe.
    """
    _closeOtherEnds(readPipe)
    data = untilConcludes(os.read, readPipe, PIPE_BUF)
    if data == STARTED:
        return 0
    if data.startswith(FAILED):
        text = data[len(FAILED) :].decode("utf-8", "replace").strip()
        if not text.startswith("gateway"):
            # Written by twistd itself: "ExceptionClass: message".
            text = "gateway: start-up failed: " + _plain(text)
    else:
        text = (
            "gateway: the daemon ended while starting, without a word;"
            " its log file may say why"
        )
        # twistd's check of the pid file before forking ended this run had
        # another gateway been running, so the file is the dead daemon's.
        pidfile = runner.config.get("pidfile")
        if pidfile:
            try:
                os.unlink(pidfile)
            except OSError:
                pass
    stderr = sys.__stderr__
    if stderr is not None:
        untilConcludes(stderr.write, text + "\n")
        stderr.flush()
    return 1


def _plain(text: str) -> str:
    """
    twistd's C{ExceptionClass: message} in words: C{[Errno 13] Permission
    denied: 'twistd.pid'} becomes C{twistd.pid: permission denied}.
    """
    text = text.split(": ", 1)[-1]
    match = re.fullmatch(r"\[Errno \d+\] (.+?): '(.*)'", text)
    if match:
        return f"{match.group(2)}: {match.group(1).lower()}"
    return re.sub(r"\[Errno \d+\] ", "", text)


def _closeOtherEnds(readPipe: int) -> None:
    """
    Close every descriptor of this process that is the same pipe as
    C{readPipe} (twistd's parent keeps the write end open), so that the
    read ends when the daemon dies without writing.
    """
    try:
        pipe = os.fstat(readPipe)
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in descriptors:
        if fd == readPipe:
            continue
        try:
            info = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISFIFO(info.st_mode) and (info.st_ino, info.st_dev) == (
            pipe.st_ino,
            pipe.st_dev,
        ):
            os.close(fd)
