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

It subclasses L{EPollReactor} and uses what Twisted keeps private there:
C{_poller} (the C{select.epoll} object, whose C{poll(timeout, maxevents)}
it calls), C{_selectables} (the file descriptor -> descriptor map) and
C{_doReadOrWrite(selectable, fd, event)}, which it calls for each event
but the commonest, C{EPOLLIN} alone. That one it handles as
C{_doReadOrWrite} does, inlined (a call less per event), with
C{_disconnectSelectable(selectable, why, isRead, faildict)} and
C{posixbase._NO_FILEDESC}. The tests pin those names and signatures, check
the inlined handling against C{_doReadOrWrite}'s, and run Twisted's own
reactor tests against it, so that a Twisted release which changes them
fails there.
Should one be missing at run time all the same, L{install} logs one warning
and installs Twisted's stock epoll reactor instead: slower, never broken.
C{twistd --reactor=epoll gateway} runs the gateway on the stock reactor.
"""

from __future__ import annotations

import inspect
import select
import sys

from twisted.internet import posixbase
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor
from twisted.logger import Logger
from twisted.python import log as legacyLog

log = Logger(namespace="gateway.reactor")

# The epoll reactor's private state that doPoll uses: instance attributes,
# and the methods it calls with the parameters it passes.
PRIVATE_ATTRIBUTES = ("_poller", "_selectables")
PRIVATE_METHODS = {
    "_doReadOrWrite": ("selectable", "fd", "event"),
    "_disconnectSelectable": ("selectable", "why", "isRead", "faildict"),
}

# What _doReadOrWrite disconnects a descriptor whose fileno() is -1 with.
_NO_FILEDESC = getattr(posixbase, "_NO_FILEDESC", None)

EPOLLIN = select.EPOLLIN


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
                if event == EPOLLIN:
                    # _doReadOrWrite for a read event alone (nearly every
                    # event a proxy gets), inlined: the same checks and
                    # outcomes without a call per event. inRead is true only
                    # once doRead has returned, as there.
                    inRead = False
                    try:
                        if selectable.fileno() == -1:
                            why = _NO_FILEDESC
                        else:
                            why = selectable.doRead()
                            inRead = True
                    except BaseException:
                        why = sys.exc_info()[1]
                        legacyLog.err()
                    if why:
                        self._disconnectSelectable(selectable, why, inRead)
                else:
                    dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                # What a descriptor raises is logged and the descriptor
                # disconnected above (or by _doReadOrWrite); this is a
                # failure while doing that.
                log.failure(
                    "Unhandled error dispatching to {selectable!r}",
                    selectable=selectable,
                )

    doIteration = doPoll


def missingPrivateState(reactor: EPollReactor) -> list[str]:
    """
    The private names of the epoll reactor L{GatewayReactor.doPoll} uses
    that C{reactor} lacks, or has with other parameters: empty when it can
    run.
    """
    missing = [name for name in PRIVATE_ATTRIBUTES if not hasattr(reactor, name)]
    if _NO_FILEDESC is None:
        missing.append("posixbase._NO_FILEDESC")
    poller = getattr(reactor, "_poller", None)
    if poller is not None and not callable(getattr(poller, "poll", None)):
        missing.append("_poller.poll")
    for name, parameters in PRIVATE_METHODS.items():
        method = getattr(reactor, name, None)
        if not callable(method):
            missing.append(name)
            continue
        try:
            actual = tuple(inspect.signature(method).parameters)
        except (TypeError, ValueError):
            actual = ()
        if actual != parameters:
            missing.append(f"{name}{actual}")
    return missing


def canInstall() -> bool:
    """
    Whether no reactor is installed yet and this platform has epoll.
    """
    return "twisted.internet.reactor" not in sys.modules and hasattr(select, "epoll")


def install() -> EPollReactor:
    """
    Install a L{GatewayReactor} as the global reactor; or, when Twisted's
    epoll reactor lacks the private state it uses, Twisted's own
    L{EPollReactor}, with a warning.
    """
    reactor: EPollReactor = GatewayReactor()
    missing = missingPrivateState(reactor)
    if missing:
        log.warn(
            "Twisted's epoll reactor lacks {missing}, which gateway.reactor"
            " uses: running on Twisted's stock epoll reactor",
            missing=", ".join(missing),
        )
        _close(reactor)
        reactor = EPollReactor()
    installReactor(reactor)
    return reactor


def _close(reactor: EPollReactor) -> None:
    # The reactor that is not installed must not keep its epoll descriptor
    # nor its waker's pipe.
    poller = getattr(reactor, "_poller", None)
    if poller is not None:
        poller.close()
    waker = getattr(reactor, "waker", None)
    if waker is not None:
        waker.connectionLost(None)
