"""
Tests for L{gateway.notify}: real datagram sockets stand in for systemd.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway.notify import STATUS_INTERVAL, Notifier, NotifyService

# systemd's WATCHDOG_USEC for a 2 s WatchdogSec=: pings then go every 1.0 s.
TWO_SECONDS_USEC = "2000000"


class Receiver:
    """
    A datagram socket listening where systemd's notification socket would be.
    """

    def __init__(self, testCase: SynchronousTestCase, abstract: bool = False):
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testCase.addCleanup(self.socket.close)
        if abstract:
            name = "gateway-test-" + uuid.uuid4().hex
            self.socket.bind("\0" + name)
            self.environValue = "@" + name
        else:
            # Not testCase.mktemp(): trial's nested directories can exceed the
            # 108 bytes an AF_UNIX path may have.
            directory = tempfile.mkdtemp()
            testCase.addCleanup(shutil.rmtree, directory)
            self.environValue = os.path.join(directory, "notify")
            self.socket.bind(self.environValue)
        self.socket.setblocking(False)

    def received(self) -> list[bytes]:
        """
        Every datagram that arrived since the last call, in order.
        """
        datagrams = []
        while True:
            try:
                datagrams.append(self.socket.recv(4096))
            except BlockingIOError:
                return datagrams


def notifierFor(
    testCase: SynchronousTestCase, receiver: Receiver, **environ: str
) -> Notifier:
    notifier = Notifier.fromEnvironment(
        {"NOTIFY_SOCKET": receiver.environValue, **environ}
    )
    testCase.addCleanup(notifier.close)
    return notifier


def warnings(events: list[dict]) -> list[dict]:
    return [e for e in events if e["log_level"] == LogLevel.warn]


class NotifierTests(SynchronousTestCase):
    """
    L{Notifier} sends the sd_notify datagrams systemd expects.
    """

    def test_pathSocket(self) -> None:
        """
        A C{NOTIFY_SOCKET} path gets the assignments in one datagram.
        """
        receiver = Receiver(self)
        notifier = notifierFor(self, receiver)
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()
        self.assertEqual(
            receiver.received(), [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]
        )

    def test_abstractSocket(self) -> None:
        """
        C{@name} is the abstract socket C{name}.
        """
        receiver = Receiver(self, abstract=True)
        notifier = notifierFor(self, receiver)
        notifier.ready()
        self.assertEqual(receiver.received(), [b"READY=1"])

    def test_status(self) -> None:
        """
        C{status} sends C{STATUS=}; a newline in the text cannot start another
        assignment.
        """
        receiver = Receiver(self)
        notifier = notifierFor(self, receiver)
        notifier.status("3 active connections")
        notifier.status("draining\nREADY=1")
        self.assertEqual(
            receiver.received(),
            [b"STATUS=3 active connections", b"STATUS=draining READY=1"],
        )

    def test_readyAndStoppingWithStatus(self) -> None:
        """
        C{ready} and C{stopping} can carry a status in the same datagram.
        """
        receiver = Receiver(self)
        notifier = notifierFor(self, receiver)
        notifier.ready("0 active connections")
        notifier.stopping("draining 2 connections")
        self.assertEqual(
            receiver.received(),
            [
                b"READY=1\nSTATUS=0 active connections",
                b"STOPPING=1\nSTATUS=draining 2 connections",
            ],
        )

    def test_reloading(self) -> None:
        """
        C{reloading} sends C{RELOADING=1} with the C{CLOCK_MONOTONIC} time in
        microseconds, as C{Type=notify-reload} requires.
        """
        receiver = Receiver(self)
        notifier = notifierFor(self, receiver)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        [datagram] = receiver.received()
        reloading, monotonic = datagram.split(b"\n")
        self.assertEqual(reloading, b"RELOADING=1")
        key, _, value = monotonic.partition(b"=")
        self.assertEqual(key, b"MONOTONIC_USEC")
        self.assertTrue(before <= int(value) <= after, (before, value, after))

    def test_unset(self) -> None:
        """
        Without C{NOTIFY_SOCKET} nothing is sent, nothing is logged and there
        is no watchdog, even when C{WATCHDOG_USEC} is set.
        """
        with capturedLogs() as events:
            notifier = Notifier.fromEnvironment({"WATCHDOG_USEC": TWO_SECONDS_USEC})
            notifier.ready("up")
            notifier.status("up")
            notifier.watchdog()
            notifier.reloading()
            notifier.stopping()
        self.assertFalse(notifier.enabled)
        self.assertIsNone(notifier.watchdogInterval())
        self.assertEqual(events, [])

    def test_notAUnixSocket(self) -> None:
        """
        A C{NOTIFY_SOCKET} that is neither a path nor C{@name} (such as the
        C{vsock:} addresses of newer systemd, or C{@} without a name) disables
        notifications, with a warning.
        """
        for value in ["vsock:2:1234", "relative/path", "@"]:
            with capturedLogs() as events:
                notifier = Notifier.fromEnvironment({"NOTIFY_SOCKET": value})
            self.assertFalse(notifier.enabled, value)
            self.assertEqual(len(warnings(events)), 1, value)

    def test_sendFailureLoggedOnce(self) -> None:
        """
        Sending to a socket that does not exist raises nothing and logs one
        warning however often it fails; once sending works again, the next
        failure is logged again.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "notify")
        notifier = Notifier.fromEnvironment({"NOTIFY_SOCKET": path})
        self.addCleanup(notifier.close)

        with capturedLogs() as events:
            notifier.ready()
            notifier.watchdog()
            notifier.status("still failing")
        [warning] = warnings(events)
        self.assertEqual(warning["address"], os.fsencode(path))
        self.assertIsInstance(warning["error"], FileNotFoundError)

        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(path)
        with capturedLogs() as events:
            notifier.watchdog()
        self.assertEqual(receiver.recv(4096), b"WATCHDOG=1")
        receiver.close()
        os.unlink(path)
        with capturedLogs() as events:
            notifier.watchdog()
            notifier.watchdog()
        self.assertEqual(len(warnings(events)), 1)

    def test_watchdogInterval(self) -> None:
        """
        The watchdog interval is half of C{WATCHDOG_USEC}, in seconds, when
        C{WATCHDOG_PID} is unset or names this process.
        """
        receiver = Receiver(self)
        self.assertEqual(
            notifierFor(self, receiver, WATCHDOG_USEC="2000000").watchdogInterval(),
            1.0,
        )
        self.assertEqual(
            notifierFor(
                self,
                receiver,
                WATCHDOG_USEC="30000000",
                WATCHDOG_PID=str(os.getpid()),
            ).watchdogInterval(),
            15.0,
        )

    def test_watchdogForAnotherProcess(self) -> None:
        """
        A C{WATCHDOG_PID} of another process turns the watchdog off: systemd
        meant it for the process that set it, not for a child that inherited
        the environment.
        """
        receiver = Receiver(self)
        notifier = notifierFor(
            self,
            receiver,
            WATCHDOG_USEC=TWO_SECONDS_USEC,
            # Any pid but ours will do.
            WATCHDOG_PID=str(os.getpid() + 1),
        )
        self.assertIsNone(notifier.watchdogInterval())

    def test_watchdogOff(self) -> None:
        """
        No C{WATCHDOG_USEC}, or one that is not a positive integer, means no
        watchdog.
        """
        receiver = Receiver(self)
        for environ in [{}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "soon"}]:
            notifier = notifierFor(self, receiver, **environ)
            self.assertIsNone(notifier.watchdogInterval(), environ)


class NotifyServiceTests(SynchronousTestCase):
    """
    L{NotifyService} sends READY=1 when told, pings the watchdog, refreshes
    the status and announces stopping.
    """

    def setUp(self) -> None:
        self.receiver = Receiver(self)
        self.clock = Clock()
        self.connections = 3

    def service(self, **environ: str) -> NotifyService:
        notifier = notifierFor(self, self.receiver, **environ)
        return NotifyService(
            notifier, lambda: f"{self.connections} active connections", self.clock
        )

    def test_startSendsNothing(self) -> None:
        """
        Starting the service sends nothing: READY=1 waits for L{markReady}.
        """
        service = self.service(WATCHDOG_USEC=TWO_SECONDS_USEC)
        service.startService()
        self.assertEqual(self.receiver.received(), [])

    def test_markReady(self) -> None:
        """
        L{NotifyService.markReady} sends READY=1 with the current status, once.
        """
        service = self.service()
        service.startService()
        service.markReady()
        service.markReady()
        self.assertEqual(
            self.receiver.received(), [b"READY=1\nSTATUS=3 active connections"]
        )

    def test_watchdogCadence(self) -> None:
        """
        With C{WATCHDOG_USEC} at 2 s, C{WATCHDOG=1} goes every 1.0 s.
        """
        service = self.service(WATCHDOG_USEC=TWO_SECONDS_USEC)
        service.startService()
        self.clock.advance(0.9)
        self.assertEqual(self.receiver.received(), [])
        self.clock.advance(0.1)
        self.assertEqual(self.receiver.received(), [b"WATCHDOG=1"])
        self.clock.advance(1.0)
        self.assertEqual(self.receiver.received(), [b"WATCHDOG=1"])
        self.clock.pump([1.0] * 2)
        self.assertEqual(self.receiver.received(), [b"WATCHDOG=1"] * 2)

    def test_noWatchdogForAnotherProcess(self) -> None:
        """
        With C{WATCHDOG_PID} naming another process, no C{WATCHDOG=1} is sent,
        and the status is still refreshed.
        """
        service = self.service(
            WATCHDOG_USEC=TWO_SECONDS_USEC, WATCHDOG_PID=str(os.getpid() + 1)
        )
        service.startService()
        self.clock.pump([1.0] * int(STATUS_INTERVAL))
        self.assertEqual(self.receiver.received(), [b"STATUS=3 active connections"])

    def test_statusRefresh(self) -> None:
        """
        Every L{STATUS_INTERVAL} seconds the status is sent again, freshly
        computed.
        """
        service = self.service()
        service.startService()
        self.clock.advance(STATUS_INTERVAL)
        self.connections = 7
        self.clock.advance(STATUS_INTERVAL)
        self.assertEqual(
            self.receiver.received(),
            [b"STATUS=3 active connections", b"STATUS=7 active connections"],
        )

    def test_stopService(self) -> None:
        """
        Stopping sends STOPPING=1 with the status and ends the periodic
        messages; a late L{markReady} sends nothing.
        """
        service = self.service(WATCHDOG_USEC=TWO_SECONDS_USEC)
        service.startService()
        service.markReady()
        self.receiver.received()
        self.connections = 2
        service.stopService()
        self.assertEqual(
            self.receiver.received(), [b"STOPPING=1\nSTATUS=2 active connections"]
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
        service.markReady()
        self.assertEqual(self.receiver.received(), [])

    def test_statusFailure(self) -> None:
        """
        A status callable that raises is logged; READY=1 and the watchdog go
        on without a status.
        """
        notifier = notifierFor(self, self.receiver, WATCHDOG_USEC=TWO_SECONDS_USEC)
        service = NotifyService(notifier, lambda: str(1 // 0), self.clock)
        service.startService()
        service.markReady()
        self.clock.pump([1.0] * int(STATUS_INTERVAL))
        self.assertEqual(self.receiver.received(), [b"READY=1"] + [b"WATCHDOG=1"] * 5)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)

    def test_disabled(self) -> None:
        """
        Without C{NOTIFY_SOCKET} the service schedules nothing.
        """
        service = NotifyService(
            Notifier.fromEnvironment({"WATCHDOG_USEC": TWO_SECONDS_USEC}),
            lambda: "idle",
            self.clock,
        )
        service.startService()
        service.markReady()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        service.stopService()
