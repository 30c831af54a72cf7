"""
End to end: the gateway the way systemd runs it.

A real C{twistd gateway} process tells a datagram socket the test owns what
it is doing (sd_notify), takes listening sockets passed the way systemd
passes them (socket activation), and drains its connections on SIGTERM and
SIGINT. Every wait has a deadline; nothing here sleeps.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable

import trustme
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from gateway.endpoints import LISTEN_BACKLOG
from tests.e2e import (
    AS_LISTEN_PID,
    DEADLINE,
    TWISTD,
    BackendFactory,
    GatewayEnded,
    GatewayProcess,
    UpperBackend,
    backendOption,
    freePorts,
    gatewayCommand,
    httpGet,
    listenBackend,
    listenUntilClosed,
    startGateway,
    withMetrics,
)

LISTEN = ["--listen", "tcp:0:interface=127.0.0.1"]

# twistd ends itself with the signal that stopped it (twisted.application.app
# _exitWithSignal), so its exit status is that signal: -15 for SIGTERM, -2
# for SIGINT, both of which systemd counts as a clean exit.
EXIT_SIGTERM = -15
EXIT_SIGINT = -2

# WATCHDOG_USEC of one second: the gateway must ping every 0.5 s.
WATCHDOG_USEC = "1000000"
# Pings counted before the watchdog is believed to run on its own.
WATCHDOG_PINGS = 3

# SPEC §6: once the signal is sent, a new connection is refused within this.
REFUSED_WITHIN = 1.0

# --drain-timeout for tests where the drain ends early: far longer than the
# test, so that only the pair finishing can end it.
LONG_DRAIN = "60"
# --drain-timeout for the test where it expires.
SHORT_DRAIN = 1.0


def gateway(args: list[str]) -> list[str]:
    """
    The twistd command line for a gateway with C{args}, metrics on a free port.
    """
    return gatewayCommand(withMetrics(args))


def temporaryDirectory(testCase: TestCase) -> str:
    """
    A short directory path: an AF_UNIX path may have at most 107 bytes, more
    than trial's own nested temporary directories leave.
    """
    directory = tempfile.mkdtemp(prefix="gw-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    return directory


def listeningSocket(testCase: TestCase) -> socket.socket:
    """
    A TCP socket listening on a free loopback port, as systemd would bind it.
    """
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    testCase.addCleanup(listening.close)
    listening.bind(("127.0.0.1", 0))
    listening.listen(50)
    return listening


def portOf(listening: socket.socket) -> int:
    return listening.getsockname()[1]


class TLSFiles:
    """
    A trustme CA, and a server certificate for C{localhost} with its key in
    one PEM file, as --tls-cert takes it.
    """

    def __init__(self, testCase: TestCase) -> None:
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert("localhost")
        self.certFile = os.path.join(temporaryDirectory(testCase), "gateway.pem")
        leaf.private_key_and_cert_chain_pem.write_to_path(self.certFile)

    def client(self, endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
        """
        C{endpoint} with TLS on top, trusting only this CA, for C{localhost}.
        """
        trustRoot = Certificate.loadPEM(self.ca.cert_pem.bytes())
        return wrapClientTLS(
            optionsForClientTLS("localhost", trustRoot=trustRoot), endpoint
        )


class Conversation(Protocol):
    """
    A client that sends when told, and lets a test wait for the replies and
    for the connection's end.

    @ivar lost: fires with the exception that says why the connection
        ended (L{ConnectionDone}, L{ConnectionLost}, ...).
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[BaseException] = Deferred()
        self._expected: list[tuple[bytes, Deferred[None]]] = []

    def send(self, data: bytes, reply: bytes) -> Deferred[None]:
        """
        Send C{data}; fire once everything received so far includes C{reply}.
        """
        waiter: Deferred[None] = Deferred()
        self._expected.append((reply, waiter))
        self.transport.write(data)
        return waiter.addTimeout(DEADLINE, reactor)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for entry in list(self._expected):
            if entry[0] in self.received:
                self._expected.remove(entry)
                entry[1].callback(None)

    def connectionLost(self, reason: Failure) -> None:
        expected, self._expected = self._expected, []
        for _, waiter in expected:
            waiter.errback(reason)
        self.lost.callback(reason.value)

    def close(self) -> Deferred[BaseException]:
        if not self.lost.called:
            self.transport.loseConnection()
        return self.lost.addTimeout(DEADLINE, reactor)


async def converse(testCase: TestCase, endpoint: IStreamClientEndpoint) -> Conversation:
    """
    Connect a L{Conversation}; it is closed, and its end awaited, when the
    test ends.
    """
    client = await connectProtocol(endpoint, Conversation()).addTimeout(
        DEADLINE, reactor
    )
    testCase.addCleanup(client.close)
    return client


def tcp(port: int) -> IStreamClientEndpoint:
    return TCP4ClientEndpoint(reactor, "127.0.0.1", port)


class NotifySocket(DatagramProtocol):
    """
    Stands in for systemd's notification socket: keeps every sd_notify
    message, each as a dict of its assignments.

    @ivar onMessage: called with each message as it arrives, before anything
        else can happen in this process.
    """

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        self.onMessage: Callable[[dict[str, str]], None] = lambda message: None
        self._waiting: list[tuple[Callable[[dict[str, str]], bool], int, Deferred]] = []

    def datagramReceived(self, datagram: bytes, address: object) -> None:
        message = dict(
            line.split("=", 1) for line in datagram.decode("utf-8").split("\n")
        )
        self.messages.append(message)
        self.onMessage(message)
        for entry in list(self._waiting):
            matches, count, waiter = entry
            found = [m for m in self.messages if matches(m)]
            if len(found) >= count:
                self._waiting.remove(entry)
                waiter.callback(found)

    def waitFor(
        self, matches: Callable[[dict[str, str]], bool], count: int = 1
    ) -> Deferred[list[dict[str, str]]]:
        """
        Fire with every message C{matches} accepts, once there are C{count}.
        """
        waiter: Deferred[list[dict[str, str]]] = Deferred()
        found = [m for m in self.messages if matches(m)]
        if len(found) >= count:
            waiter.callback(found)
        else:
            self._waiting.append((matches, count, waiter))
        return waiter.addTimeout(DEADLINE, reactor)


def has(key: str, value: str = "1") -> Callable[[dict[str, str]], bool]:
    return lambda message: message.get(key) == value


def listenNotify(testCase: TestCase) -> tuple[NotifySocket, str]:
    """
    A real AF_UNIX datagram socket in a temporary directory: the receiver,
    and the path to give the gateway as C{NOTIFY_SOCKET}.
    """
    path = os.path.join(temporaryDirectory(testCase), "notify")
    receiver = NotifySocket()
    port = reactor.listenUNIXDatagram(path, receiver)
    testCase.addCleanup(port.stopListening)
    return receiver, path


class SystemdNotifyTests(TestCase):
    """
    The gateway speaks sd_notify to C{NOTIFY_SOCKET}: READY=1 once it
    serves, STATUS= with its connections, the watchdog, RELOADING=1 around
    SIGHUP and STOPPING=1 on SIGTERM.
    """

    async def test_lifecycle(self) -> None:
        """
        READY=1 first, once the listeners accept connections; watchdog pings
        with C{WATCHDOG_USEC} set (every 0.5 s for 1 s: the exact cadence is
        tested with a fake clock in test_notify); RELOADING=1 then READY=1
        with the connection count on SIGHUP; STOPPING=1 on SIGTERM, after
        which no ping comes.
        """
        receiver, notifyPath = listenNotify(self)
        unixPath = os.path.join(temporaryDirectory(self), "gateway.sock")
        # Connected synchronously the moment READY=1 arrives: if the gateway
        # said READY=1 before binding, this connection is refused.
        atReady: list[socket.socket | OSError] = []

        def connectAtReady(message: dict[str, str]) -> None:
            if message.get("READY") == "1" and not atReady:
                early = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    early.connect(unixPath)
                except OSError as error:
                    early.close()
                    atReady.append(error)
                else:
                    atReady.append(early)

        receiver.onMessage = connectAtReady
        process = startGateway(
            self,
            gateway([*LISTEN, "--listen", f"unix:{unixPath}"]),
            env={"NOTIFY_SOCKET": notifyPath, "WATCHDOG_USEC": WATCHDOG_USEC},
        )
        [ready] = await receiver.waitFor(has("READY"))
        self.assertEqual(ready, {"READY": "1", "STATUS": "0 active connections"})
        self.assertEqual(receiver.messages[0], ready, "READY=1 comes first")
        [early] = atReady
        self.assertIsInstance(early, socket.socket)

        # That early connection is served, like one made over TCP.
        earlyClient = Conversation()
        reactor.adoptStreamConnection(
            early.fileno(), socket.AF_UNIX, _OneProtocol(earlyClient)
        )
        early.close()
        self.addCleanup(earlyClient.close)
        await earlyClient.send(b"early\n", b"early\n")
        await process.whenReady()
        tcpClient = await converse(self, tcp(process.port("tcp:0")))
        await tcpClient.send(b"tcp\n", b"tcp\n")

        pings = await receiver.waitFor(has("WATCHDOG"), WATCHDOG_PINGS)
        self.assertEqual(pings, [{"WATCHDOG": "1"}] * WATCHDOG_PINGS)

        process.signal("HUP")
        [reloading] = await receiver.waitFor(has("RELOADING"))
        readyAgain = await receiver.waitFor(has("READY"), 2)
        self.assertEqual(
            readyAgain[-1], {"READY": "1", "STATUS": "2 active connections"}
        )
        self.assertGreater(int(reloading["MONOTONIC_USEC"]), 0)
        order = [m for m in receiver.messages if "READY" in m or "RELOADING" in m]
        self.assertEqual(order, [ready, reloading, readyAgain[-1]])

        process.signal("TERM")
        [stopping] = await receiver.waitFor(has("STOPPING"))
        self.assertEqual(
            stopping, {"STOPPING": "1", "STATUS": "draining, 2 active connections"}
        )
        await earlyClient.close()
        await tcpClient.close()
        self.assertEqual(await process.whenEnded(), EXIT_SIGTERM)
        afterStopping = receiver.messages[receiver.messages.index(stopping) + 1 :]
        self.assertNotIn({"WATCHDOG": "1"}, afterStopping)
        self.assertNotIn("Traceback", process.log())

    async def test_noWatchdogUnlessAsked(self) -> None:
        """
        Without C{WATCHDOG_USEC} the gateway sends READY=1 and no pings. A
        SIGTERM sent the moment it is ready is handled (STOPPING=1, a
        drain), not fatal: ready means the reactor runs, and with it
        twistd's signal handlers.
        """
        receiver, notifyPath = listenNotify(self)
        process = startGateway(self, gateway(LISTEN), env={"NOTIFY_SOCKET": notifyPath})
        await receiver.waitFor(has("READY"))
        await process.whenReady()
        process.signal("TERM")
        await receiver.waitFor(has("STOPPING"))
        self.assertEqual(await process.whenEnded(), EXIT_SIGTERM)
        self.assertEqual(
            [m for m in receiver.messages if "WATCHDOG" in m], [], receiver.messages
        )


class _OneProtocol(Factory):
    """
    Builds one given protocol, for adopting a connected socket.
    """

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, address: object) -> Protocol:
        return self._protocol


class SocketActivationTests(TestCase):
    """
    systemd binds the ports and passes the listening sockets by name
    (C{LISTEN_FDS}, C{LISTEN_FDNAMES}, C{LISTEN_PID}); the gateway picks
    them with C{systemd:domain=INET:name=...}.
    """

    def setUp(self) -> None:
        self.tls = TLSFiles(self)
        self.backend, backendPort = listenBackend(self)
        self.args = [
            "--listen",
            "systemd:domain=INET:name=gateway",
            "--listen-tls",
            "systemd:domain=INET:name=gateway-tls",
            "--tls-cert",
            self.tls.certFile,
            *backendOption(backendPort),
        ]

    async def test_namedSockets(self) -> None:
        """
        A plain and a TLS socket passed as descriptors 3 and 4, named
        C{gateway} and C{gateway-tls}, both serve in one process. A client
        that connected before the gateway started waits in the socket's
        queue and is served once it runs.
        """
        plain = listeningSocket(self)
        tls = listeningSocket(self)
        early = await converse(self, tcp(portOf(plain)))
        earlyReply = early.send(b"queued\n", b"QUEUED\n")
        process = startGateway(
            self,
            AS_LISTEN_PID + gateway(self.args),
            env={"LISTEN_FDS": "2", "LISTEN_FDNAMES": "gateway:gateway-tls"},
            childFDs={3: plain.fileno(), 4: tls.fileno()},
        )
        # The gateway has its own copies; the test must not keep them open.
        plain.close()
        tls.close()
        await process.whenReady()
        await earlyReply
        log = process.log()
        plainPort = process.ports["systemd:gateway"]
        self.assertIn(f"listening on systemd:gateway at 127.0.0.1:{plainPort}", log)
        self.assertIn("listening on tls+systemd:gateway-tls at 127.0.0.1:", log)
        secure = await converse(
            self, self.tls.client(tcp(process.ports["tls+systemd:gateway-tls"]))
        )
        await secure.send(b"secure\n", b"SECURE\n")
        await secure.close()
        await early.close()
        self.assertEqual(await process.stop(), EXIT_SIGTERM)
        self.assertEqual(self.backend.received, [b"queued", b"secure"])

    async def test_restartKeepsQueuedConnections(self) -> None:
        """
        systemd keeps its socket while the gateway restarts: a client that
        connects between two gateway processes is served by the second.
        """
        plain = listeningSocket(self)  # The test plays systemd: it keeps this.
        tls = listeningSocket(self)
        env = {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "gateway:gateway-tls"}
        childFDs = {3: plain.fileno(), 4: tls.fileno()}
        first = startGateway(self, AS_LISTEN_PID + gateway(self.args), env, childFDs)
        await first.whenReady()
        self.assertEqual(await first.stop(), EXIT_SIGTERM)
        between = await converse(self, tcp(portOf(plain)))
        reply = between.send(b"between\n", b"BETWEEN\n")
        second = startGateway(self, AS_LISTEN_PID + gateway(self.args), env, childFDs)
        await second.whenReady()
        await reply
        await between.close()
        self.assertEqual(await second.stop(), EXIT_SIGTERM)

    async def test_systemdSocketActivate(self) -> None:
        """
        The real thing: C{systemd-socket-activate} binds both ports, starts
        the gateway at the first connection and passes the sockets by name.

        It cannot bind port 0, so the ports are found free first; should
        another process take one in between, the test tries once more.
        """
        tool = shutil.which("systemd-socket-activate")
        if tool is None:
            raise SkipTest("systemd-socket-activate is not installed (package systemd)")
        for attempt in range(2):
            plainPort, tlsPort = freePorts(2)
            process = startGateway(
                self,
                [
                    tool,
                    f"--listen=127.0.0.1:{plainPort}",
                    f"--listen=127.0.0.1:{tlsPort}",
                    "--fdname=gateway:gateway-tls",
                    *gateway(self.args),
                ],
            )
            try:
                await process.logged("Listening on", stderr=True, count=2)
            except GatewayEnded:
                process.ready.addErrback(lambda failure: None)
                if attempt == 0 and b"Address already in use" in process.errors:
                    continue
                raise
            break
        # Nothing runs yet but systemd-socket-activate; this connection
        # starts the gateway and waits for it in the socket's queue.
        first = await converse(self, tcp(plainPort))
        await first.send(b"first\n", b"FIRST\n")
        await process.whenReady()
        self.assertEqual(process.ports["systemd:gateway"], plainPort)
        self.assertEqual(process.ports["tls+systemd:gateway-tls"], tlsPort)
        secure = await converse(self, self.tls.client(tcp(tlsPort)))
        await secure.send(b"secure\n", b"SECURE\n")
        await secure.close()
        await first.close()
        self.assertEqual(await process.stop(), EXIT_SIGTERM)

    async def test_missingName(self) -> None:
        """
        Asking for a socket systemd did not pass (gateway-tls.socket not
        enabled, say) ends startup with one line naming the option and the
        socket, and no traceback.
        """
        plain = listeningSocket(self)
        process = startGateway(
            self,
            AS_LISTEN_PID + gateway(self.args),
            env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "gateway"},
            childFDs={3: plain.fileno()},
        )
        process.ready.addErrback(lambda failure: None)
        self.assertEqual(await process.whenEnded(), 1)
        everything = process.log() + process.errors.decode("utf-8", "replace")
        self.assertNotIn("Traceback", everything)
        lastLine = [line for line in everything.splitlines() if line.strip()][-1]
        self.assertEqual(
            lastLine,
            # twistd prefixes its first two arguments.
            f"{TWISTD} -n: --listen-tls"
            " 'systemd:domain=INET:name=gateway-tls': no socket named"
            " 'gateway-tls' was passed by systemd (LISTEN_FDNAMES)",
        )


class HoldingBackend(UpperBackend):
    """
    An int32 backend that answers each message in upper case, but only when
    the test releases the answers.
    """

    factory: HoldingFactory

    def stringReceived(self, payload: bytes) -> None:
        self.factory.hold(self, payload)


class HoldingFactory(BackendFactory):
    """
    Keeps every message its backends receive until L{release}.
    """

    def __init__(self) -> None:
        super().__init__(HoldingBackend)
        self.held: list[tuple[HoldingBackend, bytes]] = []
        self._arrivals: list[Deferred[None]] = []

    def hold(self, backend: HoldingBackend, payload: bytes) -> None:
        self.received.append(payload)
        self.held.append((backend, payload))
        arrivals, self._arrivals = self._arrivals, []
        for arrival in arrivals:
            arrival.callback(None)

    def whenHeld(self) -> Deferred[None]:
        """
        Fire once a message is held.
        """
        arrival: Deferred[None] = Deferred()
        if self.held:
            arrival.callback(None)
        else:
            self._arrivals.append(arrival)
        return arrival.addTimeout(DEADLINE, reactor)

    def release(self) -> None:
        held, self.held = self.held, []
        for backend, payload in held:
            backend.sendString(payload.upper())


def listenHolding(testCase: TestCase) -> tuple[HoldingFactory, int]:
    """
    Listen with a L{HoldingFactory} on a free loopback port, until every
    connection to it has closed at the end of the test.
    """
    factory = HoldingFactory()
    return factory, listenUntilClosed(testCase, factory)


_CLOSED = re.compile(
    r"closed tcp:0 127\.0\.0\.1:\d+ via tcp:127\.0\.0\.1:\d+ after [\d.]+s:"
    r" (\d+) messages \((\d+) bytes\) up, (\d+) messages \((\d+) bytes\) down,"
    r" (\w+)"
)


def closedLines(log: str) -> list[tuple[str, ...]]:
    """
    Counts and reason of every C{closed} log event.
    """
    return _CLOSED.findall(log)


class DrainTests(TestCase):
    """
    SIGTERM and SIGINT stop the listeners at once, let open pairs finish for
    --drain-timeout seconds, close what is left with reason C{shutdown}, and
    end the process cleanly.
    """

    async def startWithHeldMessage(
        self: TestCase, drainTimeout: str
    ) -> tuple[GatewayProcess, HoldingFactory, Conversation, Deferred[None]]:
        """
        A gateway with a client whose message the backend holds: the reply
        waits for L{HoldingFactory.release}.
        """
        backend, backendPort = listenHolding(self)
        process = startGateway(
            self,
            gateway(
                [*LISTEN, *backendOption(backendPort), "--drain-timeout", drainTimeout]
            ),
        )
        await process.whenReady()
        client = await converse(self, tcp(process.port()))
        reply = client.send(b"slow\n", b"SLOW\n")
        await backend.whenHeld()
        return process, backend, client, reply

    async def drainUntilFinished(self, signalName: str, exitCode: int) -> None:
        process, backend, client, reply = await self.startWithHeldMessage(LONG_DRAIN)
        readyz = await httpStatus(self, process.ports["metrics"], b"/readyz")
        self.assertEqual(readyz, b"200")

        signalledAt = reactor.seconds()
        process.signal(signalName)
        # Logged once every proxy listener has closed.
        await process.logged("draining 1 connections for up to 60.0s")
        with self.assertRaises(ConnectionRefusedError):
            await converse(self, tcp(process.port()))
        self.assertLess(reactor.seconds() - signalledAt, REFUSED_WITHIN)
        # Metrics stay up while draining, to say so.
        readyz = await httpStatus(self, process.ports["metrics"], b"/readyz")
        self.assertEqual(readyz, b"503")

        self.assertEqual(client.received, b"")
        backend.release()
        await reply
        self.assertIsNone(process.exitCode, "the gateway waits for its last pair")
        await client.close()
        self.assertEqual(await process.whenEnded(), exitCode)
        log = process.log()
        self.assertEqual(closedLines(log), [("1", "4", "1", "4", "client_closed")])
        self.assertNotIn("drain timeout", log)
        self.assertNotIn("Traceback", log)

    async def test_sigtermDrains(self) -> None:
        """
        After SIGTERM, new connections are refused within a second; the
        reply to a message sent before still arrives; the process ends once
        that pair closes, by re-raising SIGTERM.
        """
        await self.drainUntilFinished("TERM", EXIT_SIGTERM)

    async def test_sigintDrains(self) -> None:
        """
        SIGINT does what SIGTERM does.
        """
        await self.drainUntilFinished("INT", EXIT_SIGINT)

    async def test_drainTimeout(self) -> None:
        """
        A pair still open when --drain-timeout expires is closed, logged and
        counted with reason C{shutdown}, and the process ends.
        """
        process, backend, client, reply = await self.startWithHeldMessage(
            str(SHORT_DRAIN)
        )
        reply.addErrback(lambda failure: None)
        signalledAt = reactor.seconds()
        process.signal("TERM")
        # Aborted: the client sees a reset, not an orderly end.
        reason = await client.lost.addTimeout(DEADLINE, reactor)
        self.assertIsInstance(reason, ConnectionLost)
        self.assertGreaterEqual(reactor.seconds() - signalledAt, SHORT_DRAIN)
        self.assertEqual(client.received, b"")
        self.assertEqual(await process.whenEnded(), EXIT_SIGTERM)
        log = process.log()
        self.assertIn("drain timeout: closing 1 connections", log)
        self.assertEqual(closedLines(log), [("1", "4", "0", "0", "shutdown")])
        self.assertNotIn("Traceback", log)


class SecondSignalTests(TestCase):
    """
    SPEC §6: a second SIGTERM or SIGINT while draining ends the drain at
    once: the pairs left are closed with reason C{shutdown}, one line says
    so, and no traceback (C{ReactorNotRunning}) is logged.
    """

    async def endDrainWith(self, first: str, second: str, exitCode: int) -> None:
        process, backend, client, reply = await DrainTests.startWithHeldMessage(
            self, LONG_DRAIN
        )
        reply.addErrback(lambda failure: None)
        process.signal(first)
        await process.logged("draining 1 connections for up to 60.0s")
        process.signal(second)
        # Far sooner than the 60 s drain, or the deadline fails the test.
        reason = await client.lost.addTimeout(DEADLINE, reactor)
        self.assertIsInstance(reason, ConnectionLost)
        self.assertEqual(await process.whenEnded(), exitCode)
        log = process.log()
        self.assertEqual(
            re.findall(r"\] (.*while draining.*)", log),
            [f"SIG{second} while draining: ending the drain, closing 1 connections"],
        )
        self.assertEqual(closedLines(log), [("1", "4", "0", "0", "shutdown")])
        self.assertNotIn("drain timeout", log)
        self.assertNotIn("Traceback", log)
        self.assertNotIn("ReactorNotRunning", log)
        self.assertNotIn("critical", log)

    async def test_sigtermTwice(self) -> None:
        await self.endDrainWith("TERM", "TERM", EXIT_SIGTERM)

    async def test_sigintTwice(self) -> None:
        await self.endDrainWith("INT", "INT", EXIT_SIGINT)

    async def test_sigintAfterSigterm(self) -> None:
        """
        Either signal ends the drain the other began; the process ends with
        the first.
        """
        await self.endDrainWith("TERM", "INT", EXIT_SIGTERM)


class SIGUSR1Tests(TestCase):
    """
    SIGUSR1 never ends the gateway (its default action would): without a
    log file it is logged and ignored. (With a log file it reopens it:
    tests.test_startup.DaemonTests.test_sigusr1ReopensLogFile.)
    """

    async def test_ignored(self) -> None:
        backend, backendPort = listenBackend(self)
        process = startGateway(self, gateway([*LISTEN, *backendOption(backendPort)]))
        await process.whenReady()
        process.signal(signal.SIGUSR1)
        await process.logged("SIGUSR1: twistd writes no log file to reopen; ignored")
        process.signal(signal.SIGUSR1)
        await process.logged(
            "SIGUSR1: twistd writes no log file to reopen; ignored", count=2
        )
        client = await converse(self, tcp(process.port()))
        await client.send(b"still here\n", b"STILL HERE\n")
        await client.close()
        self.assertEqual(await process.stop(), EXIT_SIGTERM)


class BacklogTests(TestCase):
    """
    SPEC §2: every listener the gateway binds listens with a backlog of at
    least 1024 unless its string sets C{backlog=}, as the kernel reports it
    (C{ss}: a listening socket's Send-Q is its backlog).
    """

    async def test_everyKind(self) -> None:
        ss = shutil.which("ss")
        if ss is None:
            raise SkipTest("ss is not installed (package iproute2)")
        tls = TLSFiles(self)
        unixPath = os.path.join(temporaryDirectory(self), "gateway.sock")
        process = startGateway(
            self,
            gateway(
                [
                    *LISTEN,
                    "--listen",
                    "tcp6:0:interface=\\:\\:1",
                    "--listen",
                    f"unix:{unixPath}",
                    "--listen",
                    "haproxy:tcp:0:interface=127.0.0.1",
                    "--listen",
                    "tcp:0:interface=127.0.0.1:backlog=100",
                    "--listen-tls",
                    "tcp:0:interface=127.0.0.1",
                    "--tls-cert",
                    tls.certFile,
                ]
            ),
        )
        await process.whenReady()
        bound = re.findall(r"listening on (\S+) at (\S+)", process.log())
        names = [name for name, address in bound]
        self.assertEqual(
            names,
            ["tcp:0", "tcp6:0", "unix:gateway.sock", "proxy+tcp:0", "tcp:0", "tls:0"]
            + ["metrics"],
        )
        tcpBacklogs = dict(
            (local, int(sendQ))
            for state, recvQ, sendQ, local, *rest in (
                line.split() for line in _run([ss, "-ltnH"]).splitlines()
            )
        )
        unixBacklogs = dict(
            (local, int(sendQ))
            for netid, state, recvQ, sendQ, local, *rest in (
                line.split() for line in _run([ss, "-lxnH"]).splitlines()
            )
        )
        with open("/proc/sys/net/core/somaxconn") as file:
            # The kernel caps every backlog at net.core.somaxconn.
            expected = min(LISTEN_BACKLOG, int(file.read()))
        seen = [
            unixBacklogs[address] if address.startswith("/") else tcpBacklogs[address]
            for name, address in bound
        ]
        self.assertEqual(
            seen, [expected, expected, expected, expected, 100, expected, expected]
        )
        self.assertGreaterEqual(expected, 1024)


def _run(command: list[str]) -> str:
    import subprocess

    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


async def httpStatus(testCase: TestCase, port: int, path: bytes) -> bytes:
    """
    The status code of a GET for C{path}, as the bytes of the status line.
    """
    code, body = await httpGet(port, path)
    return b"%d" % code
