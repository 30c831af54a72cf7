"""
The end-to-end helpers' own waits (tests.e2e), fed by hand: what a process
writes arrives in pieces, and a test must not read a line before its end.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.e2e import (
    BackendFactory,
    ChildProcess,
    GatewayEnded,
    GatewayProcess,
    Scrape,
    UpperBackend,
    backendOption,
    value,
    withMetrics,
)


class LoggedTests(TestCase):
    def test_wholeLinesOnly(self) -> None:
        """
        C{logged} fires once the line holding the text has ended: a pipe
        may hand over half a line, whose rest a test then reads.
        """
        process = ChildProcess()
        waiter = process.logged("closed tcp:0")
        process.outReceived(b"... closed tcp:0 127.0.0.1:4000 via demo, client")
        self.assertNoResult(waiter)
        process.outReceived(b"_closed TLSv1.3 sni=gw.example\n")
        self.successResultOf(waiter)
        self.assertIn("sni=gw.example", process.log())

    def test_count(self) -> None:
        process = ChildProcess()
        waiter = process.logged("closed", 2)
        process.outReceived(b"closed 1\n")
        self.assertNoResult(waiter)
        process.outReceived(b"closed 2\n")
        self.successResultOf(waiter)

    def test_alreadyWritten(self) -> None:
        process = ChildProcess()
        process.outReceived(b"gateway ready: 1 listener\n")
        self.successResultOf(process.logged("gateway ready"))

    def test_stderr(self) -> None:
        process = ChildProcess()
        waiter = process.logged("Listening on", stderr=True)
        process.outReceived(b"Listening on stdout\n")
        self.assertNoResult(waiter)
        process.errReceived(b"Listening on 127.0.0.1:7000\n")
        self.successResultOf(waiter)

    def test_endedFirst(self) -> None:
        """
        A process that ends without writing the text fails the wait at
        once, with what it wrote, instead of at the deadline.
        """
        process = ChildProcess()
        waiter = process.logged("never")
        process.outReceived(b"something else\n")
        process.processEnded(Failure(ProcessTerminated(exitCode=1)))
        failure = self.failureResultOf(waiter, GatewayEnded)
        self.assertIn("status 1", str(failure.value))
        self.assertIn("something else", str(failure.value))
        self.failureResultOf(process.logged("never"), GatewayEnded)

    def test_lastLineAtTheEnd(self) -> None:
        """
        A last line without its newline counts once the process has ended.
        """
        process = ChildProcess()
        waiter = process.logged("bye")
        process.outReceived(b"bye")
        self.assertNoResult(waiter)
        process.processEnded(Failure(ProcessDone(0)))
        self.successResultOf(waiter)
        self.assertEqual(process.exitCode, 0)

    def test_loggedMatch(self) -> None:
        process = ChildProcess()
        waiter = process.loggedMatch(rb"listening (\d+)\n")
        process.outReceived(b"listening 40")
        self.assertNoResult(waiter)
        process.outReceived(b"123\n")
        self.assertEqual(self.successResultOf(waiter).group(1), b"40123")

    def test_followLines(self) -> None:
        process = ChildProcess()
        process.outReceived(b"one\ntw")
        lines: list[bytes] = []
        process.followLines(lines.append)
        self.assertEqual(lines, [b"one\n"])
        process.outReceived(b"o\nthree\n")
        self.assertEqual(lines, [b"one\n", b"two\n", b"three\n"])

    def test_loggedClosed(self) -> None:
        gateway = GatewayProcess()
        anyReason = gateway.loggedClosed()
        timedOut = gateway.loggedClosed("idle_timeout")
        gateway.outReceived(
            b"2026-01-01T00:00:00+0000 [gateway.proxy#info] closed tcp:0"
            b" 127.0.0.1:4000 via demo after 0.001s: 1 messages (2 bytes) up,"
            b" 1 messages (2 bytes) down, client_closed\n"
        )
        self.successResultOf(anyReason)
        self.assertNoResult(timedOut)
        timedOut.cancel()
        self.failureResultOf(timedOut, CancelledError)

    def test_ports(self) -> None:
        """
        The ports come from the C{listening on} lines, once the gateway
        says it is ready.
        """
        gateway = GatewayProcess()
        gateway.outReceived(b"x listening on tcp:0 at 127.0.0.1:4000\n")
        self.assertNoResult(gateway.ready)
        gateway.outReceived(
            b"x listening on metrics at 127.0.0.1:4001\nx gateway ready: 2\n"
        )
        self.assertIs(self.successResultOf(gateway.whenReady()), gateway)
        self.assertEqual(gateway.port(), 4000)
        self.assertEqual(gateway.port("metrics"), 4001)


class MetricsTests(TestCase):
    TEXT = (
        "# TYPE gateway_draining gauge\n"
        "gateway_draining 0.0\n"
        "# TYPE gateway_connections_active gauge\n"
        'gateway_connections_active{service="default",listener="tcp:0"} 2.0\n'
    )

    def test_scrape(self) -> None:
        """
        L{Scrape.value} is L{None} for a series not served; L{value} on the
        samples is 0 for it. A listener's series is the C{default} service's
        unless the labels name another.
        """
        page = Scrape(self.TEXT)
        self.assertEqual(page.value("gateway_connections_active", listener="tcp:0"), 2)
        self.assertIsNone(page.value("gateway_connections_active", listener="x"))
        self.assertIsNone(
            page.value("gateway_connections_active", service="a", listener="tcp:0")
        )
        self.assertEqual(value(page.samples, "gateway_draining"), 0)
        self.assertEqual(value(page.samples, "gateway_missing"), 0)


class OptionTests(TestCase):
    def test_backendOption(self) -> None:
        self.assertEqual(
            backendOption(9000), ["--backend", "tcp:host=127.0.0.1:port=9000"]
        )

    def test_withMetrics(self) -> None:
        self.assertEqual(
            withMetrics(["--listen", "tcp:0"]),
            ["--listen", "tcp:0", "--metrics", "tcp:0:interface=127.0.0.1"],
        )
        self.assertEqual(withMetrics(["--metrics", "none"]), ["--metrics", "none"])

    def test_whenAccepted(self) -> None:
        factory = BackendFactory(UpperBackend)
        second = factory.whenAccepted(2)
        factory.opened(UpperBackend())
        self.assertNoResult(second)
        factory.opened(UpperBackend())
        self.successResultOf(second)
