"""
End-to-end tests of services and the configuration file (SPEC section 7):
real C{twistd gateway --config} processes, real sockets.
"""

from __future__ import annotations

import os
import socket
import struct

import trustme
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import (
    Int32StringReceiver,
    NetstringReceiver,
)
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.e2e import DEADLINE, GatewayProcess, exchange, runGateway, runToEnd
from tests.test_metrics_e2e import Scrape, httpGet
from tests.test_operations import freePorts, temporaryDirectory

# Metrics on a free port; no health checks, whose connections the test
# backends would see (the suite's gateways run without them too).
METRICS = 'metrics = "tcp:0:interface=127.0.0.1"\n[defaults]\nhealth-check = "none"\n'


class Tagging:
    """
    A backend answering each message with its factory's tag before it, and
    closing once the gateway has shut its side (after its replies: a
    protocol that is not half-closeable would lose the replies still
    buffered when the end of the stream arrives).
    """

    factory: TaggedFactory

    def stringReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)
        self.sendString(self.factory.tag + payload)  # type: ignore[attr-defined]

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[attr-defined]

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class TaggedInt32(Tagging, Int32StringReceiver):
    """
    A tagging backend speaking int32.
    """


@implementer(IHalfCloseableProtocol)
class TaggedNetstring(Tagging, NetstringReceiver):
    """
    A tagging backend speaking netstrings.
    """


class TaggedFactory(Factory):
    noisy = False

    def __init__(self, protocol: type[Protocol], tag: bytes) -> None:
        self.protocol = protocol
        self.tag = tag
        self.received: list[bytes] = []


def backend(
    testCase: TestCase, protocol: type[Protocol], tag: bytes
) -> tuple[TaggedFactory, int]:
    """
    A tagging backend on a free loopback port, stopped when the test ends
    (after the gateway, whose cleanup was registered later).
    """
    factory = TaggedFactory(protocol, tag)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    return factory, port.getHost().port


def tcpBackend(port: int) -> str:
    return f"tcp:host=127.0.0.1:port={port}"


def write(path: str, text: str) -> None:
    with open(path + ".new", "w") as f:
        f.write(text)
    # Replaced whole, as an editor or a configuration manager does.
    os.replace(path + ".new", path)


async def scrape(gateway: GatewayProcess) -> Scrape:
    code, body = await httpGet(gateway.port("metrics"), b"/metrics")
    assert code == 200, (code, body)
    return Scrape(body.decode("utf-8"))


class Collect(Protocol):
    """
    A client that sends what it is told and collects every byte.
    """

    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()
        self.waiters: list[tuple[bytes, Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for entry in list(self.waiters):
            if self.received.endswith(entry[0]) or entry[0] in self.received:
                self.waiters.remove(entry)
                entry[1].callback(None)

    def until(self, data: bytes) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self.waiters.append((data, waiter))
        self.dataReceived(b"")
        return waiter.addTimeout(DEADLINE, reactor)

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.received)


class ThreeServicesTests(TestCase):
    """
    Three services in one process, each with its framings and its backend.
    """

    async def test_threeServices(self) -> None:
        """
        lf to int32 over TCP, crlf to netstring over TLS, int16 to int32 over
        a UNIX socket: each client reaches its own backend, by content, and
        each service's counts are exact in C{/metrics}.
        """
        directory = temporaryDirectory(self)
        ca = trustme.CA()
        certFile = os.path.join(directory, "gateway.pem")
        ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(
            certFile
        )
        unixPath = os.path.join(directory, "gw.sock")
        alpha, alphaPort = backend(self, TaggedInt32, b"alpha:")
        beta, betaPort = backend(self, TaggedNetstring, b"beta:")
        gamma, gammaPort = backend(self, TaggedInt32, b"gamma:")
        plain, tls = freePorts(2)
        path = os.path.join(directory, "gateway.toml")
        write(
            path,
            METRICS
            + f"""
[services.alpha]
listen = "tcp:{plain}:interface=127.0.0.1"
client-framing = "lf"
backend-framing = "int32"
backend = "{tcpBackend(alphaPort)}"

[services.beta]
listen-tls = "tcp:{tls}:interface=127.0.0.1"
tls-cert = "{certFile}"
client-framing = "crlf"
backend-framing = "netstring"
backend = "{tcpBackend(betaPort)}"

[services.gamma]
listen = "unix:{unixPath}"
client-framing = "int16"
backend-framing = "int32"
max-message-size = 1000
backend = "{tcpBackend(gammaPort)}"
""",
        )
        gateway = await runGateway(self, ["--config", path])

        # alpha: two lines.
        self.assertEqual(
            await exchange(plain, b"one\ntwo\n"), b"alpha:one\nalpha:two\n"
        )
        # beta: three CRLF lines over TLS.
        trustRoot = Certificate.loadPEM(ca.cert_pem.bytes())
        endpoint = wrapClientTLS(
            optionsForClientTLS("localhost", trustRoot=trustRoot),
            TCP4ClientEndpoint(reactor, "127.0.0.1", tls),
        )
        client = await connectProtocol(endpoint, Collect())
        client.transport.write(b"a\r\nb\r\nc\r\n")
        await client.until(b"beta:c\r\n")
        client.transport.loseConnection()
        await client.done
        self.assertEqual(client.received, b"beta:a\r\nbeta:b\r\nbeta:c\r\n")
        # gamma: one int16 frame over the UNIX socket.
        unixClient = await connectProtocol(
            UNIXClientEndpoint(reactor, unixPath), Collect()
        )
        unixClient.transport.write(struct.pack(">H", 5) + b"hello")
        reply = b"gamma:hello"
        await unixClient.until(struct.pack(">H", len(reply)) + reply)
        unixClient.transport.loseConnection()
        await unixClient.done
        self.assertEqual(
            (alpha.received, beta.received, gamma.received),
            ([b"one", b"two"], [b"a", b"b", b"c"], [b"hello"]),
        )
        for name in ("alpha", "beta", "gamma"):
            await gateway.logged(f"[gateway.proxy.{name}#info] closed ")

        metrics = await scrape(gateway)
        expected = {
            ("alpha", f"tcp:{plain}", tcpBackend(alphaPort), 2),
            ("beta", f"tls:{tls}", tcpBackend(betaPort), 3),
            ("gamma", "unix:gw.sock", tcpBackend(gammaPort), 1),
        }
        for service, listener, backendEndpoint, messages in expected:
            self.assertEqual(
                [
                    metrics.value(
                        "gateway_connections_accepted_total",
                        service=service,
                        listener=listener,
                    ),
                    metrics.value(
                        "gateway_messages_total",
                        service=service,
                        listener=listener,
                        direction="upstream",
                    ),
                    metrics.value(
                        "gateway_messages_total",
                        service=service,
                        listener=listener,
                        direction="downstream",
                    ),
                    metrics.value(
                        "gateway_connections_closed_total",
                        service=service,
                        listener=listener,
                        reason="client_closed",
                    ),
                    metrics.value(
                        "gateway_backend_connect_seconds_count",
                        service=service,
                        backend=f"tcp:127.0.0.1:{backendEndpoint.rsplit('=', 1)[1]}",
                    ),
                    metrics.value(
                        "gateway_backend_connect_failures_total",
                        service=service,
                        backend=f"tcp:127.0.0.1:{backendEndpoint.rsplit('=', 1)[1]}",
                    ),
                ],
                [1, messages, messages, 1, 1, 0],
                service,
            )
        # A listener's series are its service's only.
        self.assertIsNone(
            metrics.value(
                "gateway_connections_accepted_total",
                service="beta",
                listener=f"tcp:{plain}",
            )
        )
        self.assertEqual(metrics.value("gateway_config_last_reload_successful"), 1)


class Stream(Protocol):
    """
    A client sending a numbered line every few milliseconds and keeping
    every reply.
    """

    def __init__(self) -> None:
        self.sent = 0
        self.received = b""
        self.done: Deferred[bytes] = Deferred()
        self.replied: Deferred[None] = Deferred()
        self._loop = LoopingCall(self._send)

    def connectionMade(self) -> None:
        self._loop.start(0.003)

    def _send(self) -> None:
        self.transport.write(b"s%d\n" % (self.sent,))
        self.sent += 1

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.replied.called:
            self.replied.callback(None)

    def finish(self) -> Deferred[bytes]:
        self._loop.stop()
        self.transport.loseWriteConnection()
        return self.done.addTimeout(DEADLINE, reactor)

    def connectionLost(self, reason: object = None) -> None:
        if self._loop.running:
            self._loop.stop()
        self.done.callback(self.received)


class Churn:
    """
    A new connection every few milliseconds, each sending one line and
    keeping the reply; a refused one is kept as a failure.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.replies: list[bytes] = []
        self.failures: list[BaseException] = []
        self.pending: list[Deferred[None]] = []
        self._loop = LoopingCall(self._open)

    def start(self) -> None:
        self._loop.start(0.005)

    def _open(self) -> None:
        async def one() -> None:
            try:
                self.replies.append(await exchange(self.port, b"c\n"))
            except BaseException as error:
                self.failures.append(error)

        self.pending.append(Deferred.fromCoroutine(one()))

    async def stop(self) -> None:
        self._loop.stop()
        await DeferredList(self.pending)


class ReloadTests(TestCase):
    """
    SIGHUP reloads the file as one step, under load, and a bad reload
    changes nothing.
    """

    async def test_reloadUnderLoad(self) -> None:
        """
        Across 20 reloads that each add a service, remove one, and change a
        kept service's backend and framing: a pair open from the start keeps
        its backend and framing and loses or reorders no message; a client
        opening a connection every few milliseconds on the kept listener is
        never refused; a connection opened after a reload gets the new
        settings, an added service serves, a removed one's port refuses.
        """
        directory = temporaryDirectory(self)
        first, firstPort = backend(self, TaggedInt32, b"A1:")
        second, secondPort = backend(self, TaggedNetstring, b"A2:")
        kept, *extra = freePorts(22)
        path = os.path.join(directory, "gateway.toml")

        def configuration(index: int) -> str:
            # Odd reloads: the second backend, speaking netstrings.
            if index % 2:
                framing, port = "netstring", secondPort
            else:
                framing, port = "int32", firstPort
            main = f'backend-framing = "{framing}"\nbackend = "{tcpBackend(port)}"'
            return (
                METRICS
                + f"""
[services.main]
listen = "tcp:{kept}:interface=127.0.0.1"
{main}

[services.extra{index}]
listen = "tcp:{extra[index]}:interface=127.0.0.1"
backend = "{tcpBackend(firstPort)}"
"""
            )

        write(path, configuration(0))
        gateway = await runGateway(self, ["--config", path])
        stream = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", kept), Stream()
        )
        # The pair exists (its first reply came back) before any reload.
        await stream.replied.addTimeout(DEADLINE, reactor)
        churn = Churn(kept)
        churn.start()
        for index in range(1, 21):
            write(path, configuration(index))
            gateway.transport.signalProcess("HUP")
            await gateway.logged("reloaded ", count=index)
            tag = b"A2:" if index % 2 else b"A1:"
            self.assertEqual(await exchange(kept, b"probe\n"), tag + b"probe\n")
            self.assertEqual(await exchange(extra[index], b"x\n"), b"A1:x\n", index)
            with self.assertRaises(ConnectionRefusedError):
                await exchange(extra[index - 1], b"x\n")
        await churn.stop()
        received = await stream.finish()
        self.assertEqual(churn.failures, [])
        self.assertGreater(len(churn.replies), 20)
        self.assertEqual(set(churn.replies) - {b"A1:c\n", b"A2:c\n"}, set())
        # The open pair kept the first backend and its framing throughout.
        self.assertGreater(stream.sent, 20)
        self.assertEqual(
            received, b"".join(b"A1:s%d\n" % (n,) for n in range(stream.sent))
        )
        self.assertIn(
            f"services added: extra20; services removed: extra19;"
            f" services changed: main; listeners added:"
            f" tcp:{extra[20]}:interface=127.0.0.1; listeners removed:"
            f" tcp:{extra[19]}:interface=127.0.0.1",
            gateway.log(),
        )
        metrics = await scrape(gateway)
        self.assertEqual(
            metrics.value("gateway_config_reloads_total", result="success"), 20
        )
        # The removed services' series went with their last pair.
        self.assertNotIn('service="extra0"', metrics.text)
        self.assertIn('service="extra20"', metrics.text)

    async def test_failedReloads(self) -> None:
        """
        A syntax error, an unknown key, an unreadable certificate, and a new
        listener on a port in use: each leaves the gateway serving as
        before, logs one error line, and sets the metric to 0 (what the
        failed reload bound is closed again); the next good reload sets it
        to 1.
        """
        directory = temporaryDirectory(self)
        ca = trustme.CA()
        certFile = os.path.join(directory, "gateway.pem")
        ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(
            certFile
        )
        goodCert = open(certFile, "rb").read()
        first, firstPort = backend(self, TaggedInt32, b"A1:")
        plain, tls, spare = freePorts(3)
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(5)
        busyPort = busy.getsockname()[1]
        path = os.path.join(directory, "gateway.toml")
        good = (
            METRICS
            + f"""
[services.main]
listen = "tcp:{plain}:interface=127.0.0.1"
backend = "{tcpBackend(firstPort)}"

[services.secure]
listen-tls = "tcp:{tls}:interface=127.0.0.1"
tls-cert = "{certFile}"
backend = "{tcpBackend(firstPort)}"
"""
        )
        write(path, good)
        gateway = await runGateway(self, ["--config", path])
        trustRoot = Certificate.loadPEM(ca.cert_pem.bytes())

        async def serving() -> None:
            self.assertEqual(await exchange(plain, b"p\n"), b"A1:p\n")
            client = await connectProtocol(
                wrapClientTLS(
                    optionsForClientTLS("localhost", trustRoot=trustRoot),
                    TCP4ClientEndpoint(reactor, "127.0.0.1", tls),
                ),
                Collect(),
            )
            client.transport.write(b"t\n")
            await client.until(b"A1:t\n")
            client.transport.loseConnection()
            await client.done

        await serving()
        badFiles = [
            (good + "[services.x\n", None, "TOML syntax error"),
            (good + "colour = 1\n", None, "services.secure: colour: unknown key"),
            (
                good,
                b"-----BEGIN CERTIFICATE-----\nMIIB\n",
                f"services.secure: tls-cert: {certFile}: not a PEM file",
            ),
            (
                good
                + f"""
[services.spare]
listen = "tcp:{spare}:interface=127.0.0.1"

[services.taken]
listen = "tcp:{busyPort}:interface=127.0.0.1"
""",
                None,
                f"services.taken: listen tcp:{busyPort}:interface=127.0.0.1:"
                f" cannot listen on 127.0.0.1:{busyPort}: address already in use",
            ),
        ]
        for count, (text, cert, error) in enumerate(badFiles, 1):
            write(path, text)
            if cert is not None:
                write(certFile, cert.decode())
            gateway.transport.signalProcess("HUP")
            await gateway.logged("reload failed, nothing changed: ", count=count)
            line = gateway.log().split("reload failed, nothing changed: ")[count]
            self.assertIn(error, line.splitlines()[0])
            metrics = await scrape(gateway)
            self.assertEqual(
                [
                    metrics.value("gateway_config_last_reload_successful"),
                    metrics.value("gateway_config_reloads_total", result="failure"),
                ],
                [0, count],
            )
            # The series of services the failed reload would have added
            # went with it.
            self.assertNotIn('service="spare"', metrics.text)
            await serving()
            if cert is not None:
                write(certFile, goodCert.decode())
        # What the failed reload bound is closed again.
        with self.assertRaises(ConnectionRefusedError):
            await exchange(spare, b"x\n")
        before = (await scrape(gateway)).value(
            "gateway_config_last_reload_success_timestamp_seconds"
        )
        write(path, good)
        gateway.transport.signalProcess("HUP")
        await gateway.logged("reloaded ")
        metrics = await scrape(gateway)
        self.assertEqual(metrics.value("gateway_config_last_reload_successful"), 1)
        self.assertEqual(
            metrics.value("gateway_config_reloads_total", result="success"), 1
        )
        self.assertGreaterEqual(
            metrics.value("gateway_config_last_reload_success_timestamp_seconds"),
            before,
        )
        self.assertIn("no service changed (TLS files re-read)", gateway.log())
        await serving()


class CheckTests(TestCase):
    """
    C{twistd gateway --check}, as C{ExecReload=} runs it.
    """

    async def test_check(self) -> None:
        """
        A good file: C{FILE: ok}, status 0, nothing listens. A bad one: one
        line on stderr naming the file, the service and the key, status 1.
        """
        directory = temporaryDirectory(self)
        path = os.path.join(directory, "gateway.toml")
        (port,) = freePorts(1)
        write(
            path,
            f'[services.orders]\nlisten = "tcp:{port}:interface=127.0.0.1"\n',
        )
        process = await runToEnd(["--config", path, "--check"])
        self.assertEqual(
            (process.exitCode, process.output, process.errors),
            (0, f"{path}: ok\n".encode(), b""),
        )
        write(
            path,
            f'[services.orders]\nlisten = "tcp:{port}"\nbackend-framing = "int64"\n',
        )
        process = await runToEnd(["--config", path, "--check"])
        self.assertEqual(process.exitCode, 1)
        self.assertEqual(process.output, b"")
        [line] = process.errors.decode().splitlines()
        self.assertTrue(
            line.endswith(
                f"{path}: services.orders: backend-framing: unknown framing 'int64';"
                " choose one of lf, crlf, int8, int16, int32, netstring"
            ),
            line,
        )
        process = await runToEnd(["--config", path, "--listen", "tcp:7000"])
        self.assertEqual(process.exitCode, 1)
        self.assertIn(b"--listen: not with --config", process.errors)
