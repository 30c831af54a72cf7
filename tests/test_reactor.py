"""
Tests for L{gateway.reactor}.

Twisted's own reactor test suites run against L{GatewayReactor}: it is the
stock epoll reactor with a different dispatch loop, so everything Twisted
checks of a reactor (descriptors, TCP and UNIX transports, half-close,
aborts, TLS, timers, threads, shutdown) must still hold for it.
"""

import inspect
import select
import sys
from collections.abc import Callable

from twisted.internet import posixbase
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionFdescWentAway
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.test import (
    test_core,
    test_fdset,
    test_tcp,
    test_threads,
    test_time,
    test_tls,
    test_unix,
)
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway import reactor as gatewayReactor

GATEWAY_REACTOR = "gateway.reactor.GatewayReactor"

_BUILDERS = [
    test_core.SystemEventTestsBuilder,
    test_fdset.ReactorFDSetTestsBuilder,
    test_time.TimeTestsBuilder,
    test_threads.ThreadTestsBuilder,
    test_tcp.TCP4ClientTestsBuilder,
    test_tcp.TCPPortTestsBuilder,
    test_tcp.TCPConnectionTestsBuilder,
    test_tcp.TCPTransportTestsBuilder,
    test_tcp.AbortConnectionTests,
    test_unix.UNIXTestsBuilder,
    test_unix.UNIXPortTestsBuilder,
    test_tls.SSLClientTestsMixin,
    test_tls.TLSPortTestsBuilder,
    test_tls.AbortSSLConnectionTests,
]


# Twisted's tests that check what GatewayReactor changes on purpose, or that
# Twisted skips for the epoll reactor by its class name.
_NOT_FOR_GATEWAY_REACTOR = {
    "test_logPrefix": (
        "GatewayReactor dispatches events without the legacy log context, "
        "so old-style log.msg calls no longer carry the connection's "
        "logPrefix as their system; that is the point of it"
    ),
    "test_lostFileDescriptor": (
        "epoll cannot detect lost file descriptors; Twisted skips this for "
        "EPollReactor, which GatewayReactor is"
    ),
}


def _skipped(reason: str) -> Callable[[object], None]:
    def test(self: object) -> None:
        pass

    test.skip = reason  # type: ignore[attr-defined]
    return test


def _onGatewayReactor(builder: type) -> dict[str, type]:
    """
    The test case classes of Twisted's C{builder}, for L{GatewayReactor} only.
    """
    namespace: dict[str, object] = {"_reactors": [GATEWAY_REACTOR]}
    for name, reason in _NOT_FOR_GATEWAY_REACTOR.items():
        if hasattr(builder, name):
            namespace[name] = _skipped(reason)
    only = type(builder.__name__, (builder,), namespace)
    return only.makeTestCaseClasses()


for _builder in _BUILDERS:
    globals().update(_onGatewayReactor(_builder))


class DispatchTests(SynchronousTestCase):
    def test_isTheEpollReactor(self):
        """
        It is an epoll reactor: only the dispatch loop is its own.
        """
        self.assertTrue(issubclass(gatewayReactor.GatewayReactor, EPollReactor))
        self.assertIs(
            gatewayReactor.GatewayReactor.doIteration,
            gatewayReactor.GatewayReactor.doPoll,
        )

    def test_stockPrivateState(self):
        """
        The epoll reactor state the dispatch loop reads is still there, under
        the names it uses.
        """
        reactor = gatewayReactor.GatewayReactor()
        self.addCleanup(reactor._poller.close)
        self.assertIsInstance(reactor._selectables, dict)
        self.assertTrue(callable(reactor._poller.poll))
        self.assertTrue(callable(reactor._doReadOrWrite))

    def test_dispatchFailureLogged(self):
        """
        A failure escaping the stock dispatch is logged, and the loop goes on
        to the next event.
        """
        reactor = gatewayReactor.GatewayReactor()
        self.addCleanup(reactor._poller.close)
        seen = []

        def dispatch(selectable, fd, event):
            seen.append(fd)
            if fd == 1:
                raise RuntimeError("dispatch broke")

        reactor._doReadOrWrite = dispatch
        reactor._selectables = {1: object(), 2: object()}

        class Poller:
            def poll(self, timeout, maxEvents):
                return [(1, 4), (3, 4), (2, 4)]

            def close(self):
                pass

        reactor._poller.close()
        reactor._poller = Poller()
        reactor.doPoll(0)
        self.assertEqual(seen, [1, 2])
        [failure] = self.flushLoggedErrors(RuntimeError)
        self.assertIsInstance(failure, Failure)


class InstallTests(SynchronousTestCase):
    def test_notOverAnInstalledReactor(self):
        """
        Once a reactor is installed (trial's, here, or one chosen with
        C{twistd --reactor}), the gateway does not try to install its own.
        """
        self.assertIn("twisted.internet.reactor", sys.modules)
        self.assertFalse(gatewayReactor.canInstall())

    def test_installWhenNoneIs(self):
        """
        With no reactor installed yet, C{install} installs a
        L{GatewayReactor} as the global reactor.
        """
        installed = sys.modules.pop("twisted.internet.reactor")
        self.addCleanup(sys.modules.__setitem__, "twisted.internet.reactor", installed)
        import twisted.internet

        self.addCleanup(setattr, twisted.internet, "reactor", installed)
        self.assertTrue(gatewayReactor.canInstall())
        reactor = gatewayReactor.install()
        self.addCleanup(reactor._poller.close)
        self.assertIs(sys.modules["twisted.internet.reactor"], reactor)
        self.assertIsInstance(reactor, gatewayReactor.GatewayReactor)


class Descriptor:
    """
    A descriptor whose C{fileno()} and C{doRead()} give what a test says.
    """

    def __init__(self, fileno=7, read=None, raises=None):
        self._fileno = fileno
        self.read = read
        self.raises = raises
        self.reads = 0

    def fileno(self):
        return self._fileno

    def doRead(self):
        self.reads += 1
        if self.raises is not None:
            raise self.raises
        return self.read

    def doWrite(self):
        raise AssertionError("a read event was handled as a write")


class ReadEventTests(SynchronousTestCase):
    """
    A read event alone (C{EPOLLIN}) is handled by L{GatewayReactor.doPoll}
    itself, exactly as Twisted's C{_doReadOrWrite} handles it: the same
    C{_disconnectSelectable} call, the same logged error.
    """

    def outcome(self, reactorType, descriptor):
        """
        The C{_disconnectSelectable} calls and logged errors of one read
        event for C{descriptor}, on a reactor of C{reactorType}.
        """
        reactor = reactorType()
        self.addCleanup(gatewayReactor._close, reactor)
        calls = []
        reactor._disconnectSelectable = lambda selectable, why, isRead: calls.append(
            (selectable, why, isRead)
        )
        if reactorType is gatewayReactor.GatewayReactor:
            reactor._doReadOrWrite = lambda selectable, fd, event: self.fail(
                "dispatched to _doReadOrWrite"
            )

            class Poller:
                def poll(self, timeout, maxEvents):
                    return [(7, select.EPOLLIN)]

                def close(self):
                    pass

            reactor._poller.close()
            reactor._poller = Poller()
            reactor._selectables = {7: descriptor}
            reactor.doPoll(0)
        else:
            reactor._doReadOrWrite(descriptor, 7, select.EPOLLIN)
        errors = [
            failure.type for failure in self.flushLoggedErrors(RuntimeError, KeyError)
        ]
        return calls, errors

    def sameAsStock(self, **kwargs):
        inline = self.outcome(gatewayReactor.GatewayReactor, Descriptor(**kwargs))
        descriptor = Descriptor(**kwargs)
        stock = self.outcome(EPollReactor, descriptor)
        # The same descriptor object is named in both, for comparison.
        inline = ([(descriptor,) + call[1:] for call in inline[0]], inline[1])
        self.assertEqual(inline, stock)
        return inline

    def test_readNothingToDo(self):
        """
        A read that leaves the connection up disconnects nothing.
        """
        self.assertEqual(self.sameAsStock(), ([], []))

    def test_readEndsConnection(self):
        """
        A read that returns a reason disconnects the descriptor for it, as
        a read (a half-closeable one then hears only its read side end).
        """
        [(_, why, isRead)], errors = self.sameAsStock(read=CONNECTION_DONE)
        self.assertIs(why, CONNECTION_DONE)
        self.assertTrue(isRead)
        self.assertEqual(errors, [])

    def test_readRaises(self):
        """
        What C{doRead} raises is logged, and the descriptor disconnected
        with it, not as a read.
        """
        error = RuntimeError("read broke")
        [(_, why, isRead)], errors = self.sameAsStock(raises=error)
        self.assertIs(why, error)
        self.assertFalse(isRead)
        self.assertEqual(errors, [RuntimeError])

    def test_lostFileDescriptor(self):
        """
        A descriptor whose C{fileno()} is -1 is not read but disconnected,
        with Twisted's reason for a lost file descriptor.
        """
        [(_, why, isRead)], errors = self.sameAsStock(fileno=-1)
        self.assertIsInstance(why, ConnectionFdescWentAway)
        self.assertFalse(isRead)

    def test_otherEventsDispatched(self):
        """
        Any other event (a write, a hang-up, a read with either) goes to
        C{_doReadOrWrite}.
        """
        reactor = gatewayReactor.GatewayReactor()
        self.addCleanup(gatewayReactor._close, reactor)
        seen = []
        reactor._doReadOrWrite = lambda selectable, fd, event: seen.append(event)
        events = [
            select.EPOLLOUT,
            select.EPOLLIN | select.EPOLLOUT,
            select.EPOLLIN | select.EPOLLHUP,
            select.EPOLLHUP,
            select.EPOLLERR,
        ]

        class Poller:
            def poll(self, timeout, maxEvents):
                return [(7, event) for event in events]

            def close(self):
                pass

        reactor._poller.close()
        reactor._poller = Poller()
        reactor._selectables = {7: Descriptor()}
        reactor.doPoll(0)
        self.assertEqual(seen, events)


class PinTests(SynchronousTestCase):
    """
    The private state of Twisted's epoll reactor that L{GatewayReactor}
    uses is still there, under the names and with the parameters it uses: a
    Twisted release that changes it fails here.
    """

    def test_nothingMissing(self):
        reactor = gatewayReactor.GatewayReactor()
        self.addCleanup(gatewayReactor._close, reactor)
        self.assertEqual(gatewayReactor.missingPrivateState(reactor), [])

    def test_doReadOrWriteSignature(self):
        reactor = EPollReactor()
        self.addCleanup(gatewayReactor._close, reactor)
        self.assertEqual(
            tuple(inspect.signature(reactor._doReadOrWrite).parameters),
            ("selectable", "fd", "event"),
        )
        self.assertIsInstance(reactor._poller, select.epoll)
        self.assertIsInstance(reactor._selectables, dict)

    def test_disconnectSelectableSignature(self):
        reactor = EPollReactor()
        self.addCleanup(gatewayReactor._close, reactor)
        self.assertEqual(
            tuple(inspect.signature(reactor._disconnectSelectable).parameters),
            ("selectable", "why", "isRead", "faildict"),
        )
        self.assertIsInstance(posixbase._NO_FILEDESC, ConnectionFdescWentAway)
        self.assertEqual(EPollReactor._POLL_IN, select.EPOLLIN)

    def test_missingNoFileDescriptorReason(self):
        """
        Without Twisted's reason for a lost file descriptor, the reactor
        cannot run.
        """
        reactor = gatewayReactor.GatewayReactor()
        self.addCleanup(gatewayReactor._close, reactor)
        self.patch(gatewayReactor, "_NO_FILEDESC", None)
        self.assertEqual(
            gatewayReactor.missingPrivateState(reactor), ["posixbase._NO_FILEDESC"]
        )

    def test_missingDetected(self):
        """
        A reactor lacking an attribute, or whose dispatch method takes other
        parameters, is reported.
        """
        reactor = gatewayReactor.GatewayReactor()
        self.addCleanup(gatewayReactor._close, reactor)
        del reactor._selectables
        reactor._doReadOrWrite = lambda selectable, fd: None
        self.assertEqual(
            gatewayReactor.missingPrivateState(reactor),
            ["_selectables", "_doReadOrWrite('selectable', 'fd')"],
        )


class FallbackTests(SynchronousTestCase):
    """
    When Twisted's epoll reactor no longer has what L{GatewayReactor} uses,
    C{install} installs Twisted's stock one, with one warning.
    """

    def setUp(self):
        installed = sys.modules.pop("twisted.internet.reactor")
        self.addCleanup(sys.modules.__setitem__, "twisted.internet.reactor", installed)
        import twisted.internet

        self.addCleanup(setattr, twisted.internet, "reactor", installed)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_stockReactorWhenStateMissing(self):
        original = EPollReactor.__init__

        def withoutSelectables(reactor):
            original(reactor)
            # What a Twisted release renaming the map would look like.
            reactor._descriptors = reactor.__dict__.pop("_selectables")

        self.patch(EPollReactor, "__init__", withoutSelectables)
        reactor = gatewayReactor.install()
        self.addCleanup(gatewayReactor._close, reactor)
        self.assertIs(type(reactor), EPollReactor)
        self.assertIs(sys.modules["twisted.internet.reactor"], reactor)
        [warning] = [e for e in self.events if e.get("log_level") == LogLevel.warn]
        self.assertIn("_selectables", formatEvent(warning))
        self.assertIn("stock epoll reactor", formatEvent(warning))

    def test_gatewayReactorWhenStateThere(self):
        reactor = gatewayReactor.install()
        self.addCleanup(gatewayReactor._close, reactor)
        self.assertIs(type(reactor), gatewayReactor.GatewayReactor)
        self.assertEqual(
            [e for e in self.events if e.get("log_level") == LogLevel.warn], []
        )
