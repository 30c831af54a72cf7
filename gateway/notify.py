"""
Tell systemd how the gateway is doing: the sd_notify protocol, without libsystemd.

systemd hands a service the address of a datagram socket in C{NOTIFY_SOCKET};
the service sends newline-separated C{KEY=value} assignments to it: C{READY=1}
once it serves, C{STATUS=} for C{systemctl status}, C{WATCHDOG=1} as a
liveness ping, C{STOPPING=1} when it begins shutting down. Outside systemd the
variable is unset and every call here does nothing, so the gateway needs no
special mode for running in a terminal or in tests.

The protocol is a few lines of socket code; a dependency for it (the
C{sdnotify} package is unmaintained, C{systemd-python} needs libsystemd
headers to build) would cost more than it saves.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

# How often STATUS= is refreshed while running, in seconds: often enough for
# someone watching `systemctl status`, rare enough to cost nothing.
STATUS_INTERVAL = 5.0

_MICROSECONDS = 1_000_000


class Notifier:
    """
    Sends sd_notify messages to one notification socket, or nowhere.

    Sending never raises: systemd being unreachable must not take the gateway
    down with it. A failure is logged once; after the next successful send a
    new failure is logged again.

    @ivar address: The socket address (bytes, a leading NUL for an abstract
        socket), or L{None} when notifications are disabled.
    """

    log = Logger()

    def __init__(
        self,
        address: bytes | None,
        watchdogUsec: int | None = None,
        watchdogPid: int | None = None,
    ) -> None:
        """
        @param address: Where to send, as L{socket.socket.sendto} takes it for
            C{AF_UNIX}; L{None} disables every message.
        @param watchdogUsec: systemd's watchdog timeout in microseconds
            (C{WATCHDOG_USEC}), or L{None} when the watchdog is off.
        @param watchdogPid: The process the watchdog is meant for
            (C{WATCHDOG_PID}), or L{None} for whichever process this is.
        """
        self.address = address
        self._watchdogUsec = watchdogUsec
        self._watchdogPid = watchdogPid
        self._socket: socket.socket | None = None
        self._failing = False

    @classmethod
    def fromEnvironment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """
        Build a notifier from the variables systemd sets for the service.

        C{NOTIFY_SOCKET} may be a filesystem path or C{@name} for an abstract
        socket; anything else (unset, empty, another address family) gives a
        notifier that sends nothing. A C{WATCHDOG_USEC} that is not a positive
        integer leaves the watchdog off.
        """
        address = _parseAddress(environ.get("NOTIFY_SOCKET", ""))
        return cls(
            address,
            _positiveInt(environ.get("WATCHDOG_USEC")),
            _positiveInt(environ.get("WATCHDOG_PID")),
        )

    @property
    def enabled(self) -> bool:
        """
        Whether messages go anywhere at all.
        """
        return self.address is not None

    def watchdogInterval(self) -> float | None:
        """
        How often to send C{WATCHDOG=1}, in seconds, or L{None} for never.

        Half the timeout, as sd_watchdog_enabled(3) recommends, so that one
        late ping does not get the service killed. The watchdog is off when
        notifications are, and when systemd meant it for another process (a
        C{WATCHDOG_PID} that is not ours).
        """
        if self.address is None or self._watchdogUsec is None:
            return None
        if self._watchdogPid is not None and self._watchdogPid != os.getpid():
            return None
        return self._watchdogUsec / _MICROSECONDS / 2

    def send(self, *assignments: str) -> None:
        """
        Send C{KEY=value} assignments in one datagram.

        The assignments must not contain newlines (see L{status} for text that
        may). Errors are logged, never raised.
        """
        if self.address is None:
            return
        message = "\n".join(assignments).encode("utf-8")
        try:
            if self._socket is None:
                # Opened once and kept: a gateway at its file descriptor limit
                # must still be able to send its watchdog pings.
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # systemd reads its notification socket promptly; should it
                # ever fall behind, dropping a message beats stalling the
                # reactor.
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as e:
            if not self._failing:
                self._failing = True
                self.log.warn(
                    "Cannot notify systemd at {address!r}: {error}",
                    address=self.address,
                    error=e,
                )
        else:
            self._failing = False

    def ready(self, status: str | None = None) -> None:
        """
        The service is up and serving (C{READY=1}), optionally with a status.
        """
        self.send("READY=1", *_statusAssignment(status))

    def status(self, text: str) -> None:
        """
        Set the one-line status text that C{systemctl status} shows.

        Newlines would end the assignment, so they become spaces.
        """
        self.send(*_statusAssignment(text))

    def watchdog(self) -> None:
        """
        Tell the watchdog the service is alive (C{WATCHDOG=1}).
        """
        self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> None:
        """
        The service has begun shutting down (C{STOPPING=1}).
        """
        self.send("STOPPING=1", *_statusAssignment(status))

    def reloading(self) -> None:
        """
        The service has begun reloading its configuration (C{RELOADING=1}).

        C{MONOTONIC_USEC} is the time the reload began on C{CLOCK_MONOTONIC}:
        with C{Type=notify-reload} (systemd 253 and later) systemd needs it to
        tell this reload from an earlier one; older versions ignore it. Send
        L{ready} once the reload is done.
        """
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={now}")

    def close(self) -> None:
        """
        Release the socket; a later send opens a new one.
        """
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class NotifyService(Service):
    """
    Keeps systemd informed while the gateway runs.

    Starting it sends nothing: C{READY=1} must wait until every listener is
    bound, which only the service that owns the listeners knows; it calls
    L{markReady} then. While running, this service pings the watchdog when
    systemd asked for one and refreshes C{STATUS=} every L{STATUS_INTERVAL}
    seconds. Stopping it sends C{STOPPING=1}, which is when draining begins.

    @ivar notifier: The L{Notifier} messages go through, for anything this
        service does not send itself (C{RELOADING=1} on SIGHUP, then
        C{READY=1} again through L{Notifier.ready}).
    """

    log = Logger()

    def __init__(
        self,
        notifier: Notifier,
        statusText: Callable[[], str],
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param notifier: Where the messages go.
        @param statusText: Returns the current status line, such as
            C{"3 active connections"}; called at every refresh.
        @param clock: Schedules the periodic messages; the global reactor when
            L{None}.
        """
        self.notifier = notifier
        self._statusText = statusText
        self._clock = clock
        self._loops: list[LoopingCall] = []
        self._ready = False
        self._stopping = False

    def startService(self) -> None:
        """
        Begin the watchdog pings and status refreshes (without sending yet).
        """
        super().startService()
        self._ready = False
        self._stopping = False
        clock = self._clock
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        interval = self.notifier.watchdogInterval()
        if interval is not None:
            self._loop(clock, interval, self.notifier.watchdog)
        if self.notifier.enabled:
            self._loop(clock, STATUS_INTERVAL, self._refreshStatus)

    def _loop(
        self, clock: IReactorTime, interval: float, function: Callable[[], None]
    ) -> None:
        loop = LoopingCall(function)
        loop.clock = clock
        loop.start(interval, now=False)
        self._loops.append(loop)

    def markReady(self) -> None:
        """
        Tell systemd the gateway serves (C{READY=1}), with the current status.

        Only the first call sends anything, and none once stopping has begun:
        a late READY=1 would tell systemd a stopping service is up again.
        """
        if self._ready or self._stopping:
            return
        self._ready = True
        self.notifier.ready(self._currentStatus())

    def stopService(self) -> None:
        """
        Stop the periodic messages and tell systemd draining has begun.

        systemd stops expecting watchdog pings once the unit is stopping, so
        ending them here cannot get a draining gateway killed.
        """
        super().stopService()
        self._stopping = True
        while self._loops:
            self._loops.pop().stop()
        self.notifier.stopping(self._currentStatus())

    def _refreshStatus(self) -> None:
        status = self._currentStatus()
        if status is not None:
            self.notifier.status(status)

    def _currentStatus(self) -> str | None:
        # A broken status callable must not stop the watchdog or READY=1.
        try:
            return self._statusText()
        except Exception:
            self.log.failure("Cannot compute the status for systemd")
            return None


def _parseAddress(value: str) -> bytes | None:
    """
    Turn a C{NOTIFY_SOCKET} value into an C{AF_UNIX} address, or L{None}.
    """
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value:
        # Such as systemd 254's vsock: addresses, which need AF_VSOCK.
        Notifier.log.warn(
            "Ignoring NOTIFY_SOCKET={value!r}: not a Unix socket address", value=value
        )
    return None


def _positiveInt(value: str | None) -> int | None:
    try:
        number = int(value) if value is not None else 0
    except ValueError:
        return None
    return number if number > 0 else None


def _statusAssignment(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.splitlines()),)
