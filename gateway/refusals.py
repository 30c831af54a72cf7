"""
Logging refused connections without letting a flood fill the disk.

A connection refused at once (over C{--max-connections} today; per-source
limits, rates and deny lists use the same) is worth a log line, but a flood
of them must not become a flood of lines: at most one line per second per
listener and reason (SPEC section 9), each saying how many refusals it
stands for.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

# Seconds between two lines for the same listener and reason.
INTERVAL = 1.0


class RefusalLog:
    """
    Logs refused connections, one line per L{INTERVAL} per listener and
    reason at most.

    The first refusal after a quiet interval is logged at once; the ones
    that follow within the interval are counted and logged together when
    it ends, in one line with their count, and so on while they go on.
    """

    def __init__(
        self, log: Logger, clock: IReactorTime, interval: float = INTERVAL
    ) -> None:
        self._log = log
        self._clock = clock
        self._interval = interval
        # (listener, reason) -> refusals not logged yet and the last one's
        # client, and the timer that ends the current interval.
        self._waiting: dict[tuple[str, str], tuple[int, str, IDelayedCall]] = {}

    def refused(self, listener: str, reason: str, client: str) -> None:
        """
        A connection from C{client} on C{listener} was refused for
        C{reason} (a C{gateway_connections_rejected_total} reason).
        """
        key = (listener, reason)
        waiting = self._waiting.get(key)
        if waiting is None:
            self._emit(listener, reason, 1, client)
            timer = self._clock.callLater(self._interval, self._intervalOver, key)
            self._waiting[key] = (0, client, timer)
        else:
            count, _, timer = waiting
            self._waiting[key] = (count + 1, client, timer)

    def _intervalOver(self, key: tuple[str, str]) -> None:
        count, client, _ = self._waiting.pop(key)
        if count:
            self._emit(*key, count, client)
            timer = self._clock.callLater(self._interval, self._intervalOver, key)
            self._waiting[key] = (0, client, timer)

    def _emit(self, listener: str, reason: str, count: int, client: str) -> None:
        self._log.warn(
            "refused {count} connection(s) on {listener}: {refusal}"
            " (the last from {client})",
            count=count,
            listener=listener,
            refusal=reason,
            client=client,
        )

    def stop(self) -> None:
        """
        Log what is counted and not logged yet, and cancel the timers.
        """
        waiting, self._waiting = self._waiting, {}
        for (listener, reason), (count, client, timer) in waiting.items():
            timer.cancel()
            if count:
                self._emit(listener, reason, count, client)
