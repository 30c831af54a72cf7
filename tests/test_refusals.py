"""
Tests for L{gateway.refusals}: refused connections logged at most once per
second per listener and reason, each line with its count.
"""

from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway.refusals import INTERVAL, RefusalLog


class RefusalLogTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.refusals = RefusalLog(Logger(namespace="test"), self.clock)

    def lines(self, events):
        return [(e["listener"], e["refusal"], e["count"], e["client"]) for e in events]

    def test_firstAtOnce(self):
        """
        The first refusal is logged at once.
        """
        with capturedLogs() as events:
            self.refusals.refused("tcp:7000", "limit", "192.0.2.1:5000")
        self.assertEqual(
            self.lines(events), [("tcp:7000", "limit", 1, "192.0.2.1:5000")]
        )

    def test_flood(self):
        """
        A flood of refusals: one line per interval, counting the refusals
        since the line before; a quiet interval after them ends the timer.
        """
        with capturedLogs() as events:
            for _second in range(3):
                for n in range(100):
                    self.refusals.refused("tcp:7000", "limit", f"192.0.2.1:{n}")
                self.clock.advance(INTERVAL)
            self.clock.advance(INTERVAL)
        self.assertEqual(
            [count for _, _, count, _ in self.lines(events)], [1, 99, 100, 100]
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_perListenerAndReason(self):
        """
        Each listener and reason has its own interval.
        """
        with capturedLogs() as events:
            self.refusals.refused("tcp:7000", "limit", "a")
            self.refusals.refused("tcp:7001", "limit", "b")
            self.refusals.refused("tcp:7000", "denied", "c")
            self.refusals.refused("tcp:7000", "limit", "d")
        self.assertEqual(
            self.lines(events),
            [
                ("tcp:7000", "limit", 1, "a"),
                ("tcp:7001", "limit", 1, "b"),
                ("tcp:7000", "denied", 1, "c"),
            ],
        )

    def test_atMostOncePerInterval(self):
        """
        A refusal just before the interval ends waits for it; one after a
        quiet interval is logged at once again.
        """
        with capturedLogs() as events:
            self.refusals.refused("tcp:7000", "limit", "a")
            self.clock.advance(INTERVAL * 0.99)
            self.refusals.refused("tcp:7000", "limit", "b")
            self.assertEqual(len(events), 1)
            self.clock.advance(INTERVAL * 0.01)
            self.assertEqual(len(events), 2)
            self.clock.advance(INTERVAL)
            self.refusals.refused("tcp:7000", "limit", "c")
        self.assertEqual([count for _, _, count, _ in self.lines(events)], [1, 1, 1])

    def test_stop(self):
        """
        Stopping logs what was counted and leaves no timer.
        """
        self.refusals.refused("tcp:7000", "limit", "a")
        self.refusals.refused("tcp:7000", "limit", "b")
        with capturedLogs() as events:
            self.refusals.stop()
        self.assertEqual(self.lines(events), [("tcp:7000", "limit", 1, "b")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_linesPerSecondBounded(self):
        """
        A steady flood of 1,000 refusals a second for ten seconds is eleven
        lines (the first at once, then one per second), and every refusal is
        counted in exactly one of them.
        """
        with capturedLogs() as events:
            for _ in range(10_000):
                self.refusals.refused("tcp:7000", "rate_limit", "192.0.2.1")
                self.clock.advance(0.001)
            self.clock.advance(INTERVAL)
        counts = [count for _, _, count, _ in self.lines(events)]
        self.assertEqual(len(counts), 11)
        self.assertEqual(sum(counts), 10_000)
