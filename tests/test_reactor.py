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

from twisted.internet.epollreactor import EPollReactor
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
                return [(1, 1), (3, 1), (2, 1)]

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
