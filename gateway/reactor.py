"""
The reactor C{twistd gateway} installs when none was asked for.

Twisted's reactors run every I/O event inside
C{twisted.python.log.callWithLogger}: it calls the descriptor's
C{logPrefix()}, copies the legacy log context into a new dictionary with
that prefix as C{system}, and pops it again afterwards, so that an
old-style C{log.msg} made while handling the event is tagged with the
connection it came from. The gateway logs through L{twisted.logger}, which
never reads that context, and the copy costs about a microsecond on every
event. A request/response exchange through the gateway is two read events,
so that is where most of the gap to an asyncio translator was.

L{GatewayReactor} is the epoll reactor with the event dispatched directly.
Everything else (timers, threads, signals, descriptor bookkeeping) is the
epoll reactor's own. Legacy log lines that Twisted emits while handling an
event (a protocol's uncaught exception, say) are still logged, with C{-}
as their system instead of the connection's prefix.

It subclasses L{EPollReactor} and reads its poller and descriptor map,
which Twisted keeps private; the tests run Twisted's own reactor tests
against it, so that a Twisted release which changes them fails there.
C{twistd --reactor=epoll gateway} runs the gateway on the stock reactor.
"""

from __future__ import annotations

import select
import sys

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor
from twisted.logger import Logger

log = Logger(namespace="gateway.reactor")


class GatewayReactor(EPollReactor):
    """
    The epoll reactor, dispatching I/O events without a legacy log context.
    """

    def doPoll(self, timeout: float | None) -> None:
        """
        Wait up to C{timeout} seconds (forever for L{None}) for I/O, and
        handle every event that arrived.
        """
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except InterruptedError:
            return
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                # Removed by an earlier event of this same poll.
                continue
            try:
                dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                # _doReadOrWrite already logs what a descriptor raises and
                # disconnects it; this is a failure while doing that.
                log.failure(
                    "Unhandled error dispatching to {selectable!r}",
                    selectable=selectable,
                )

    doIteration = doPoll


def canInstall() -> bool:
    """
    Whether no reactor is installed yet and this platform has epoll.
    """
    return "twisted.internet.reactor" not in sys.modules and hasattr(select, "epoll")


def install() -> GatewayReactor:
    """
    Install a L{GatewayReactor} as the global reactor.
    """
    reactor = GatewayReactor()
    installReactor(reactor)
    return reactor
