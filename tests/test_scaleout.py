"""
Scale-out: a real HAProxy in TCP mode balancing over two gateway processes
that read its PROXY v2 headers, and two gateways sharing one listening
socket as systemd passes it to several instances; all on loopback.
"""

import os
import shutil
import socket

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.trial.unittest import TestCase

from tests.e2e import (
    AS_LISTEN_PID,
    DEADLINE,
    ChildProcess,
    GatewayProcess,
    backendOption,
    exchange,
    freePort,
    gatewayCommand,
    listenBackend,
    metrics,
    poll,
    runGateway,
    spawn,
    startGateway,
    value,
    withMetrics,
)
from tests.reliability import Client, connect

HAPROXY = shutil.which("haproxy")
LISTENER = "proxy+tcp:0"
# Clients held open across the graceful stop of one gateway; HAProxy's
# round robin gives each gateway half of them.
HELD_CLIENTS = 20
# Messages each held client sends after the stop has begun.
LATE_MESSAGES = 50
# Clients that arrive while one gateway drains.
NEW_CLIENTS = 6
# How often the readiness probe tries HAProxy's port before it is bound.
PROBE_INTERVAL = 0.05

CONFIG = """\
global
    maxconn 1000

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # A gateway that stopped listening refuses; try the other one.
    retries 3
    option redispatch

frontend ready
    bind 127.0.0.1:{readyPort}
    tcp-request connection reject

frontend gateway
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    server gw1 127.0.0.1:{first} send-proxy-v2
    server gw2 127.0.0.1:{second} send-proxy-v2
"""


async def runHAProxy(testCase: TestCase, first: int, second: int) -> int:
    """
    Start HAProxy in the foreground in front of two gateway ports; return
    its port once it accepts connections.
    """
    port, process = await startHAProxy(testCase, first, second)
    return port


async def startHAProxy(
    testCase: TestCase,
    first: int,
    second: int,
    config: str = CONFIG,
    **more: int,
) -> tuple[int, ChildProcess]:
    """
    L{runHAProxy} with a configuration of its own: C{config} has the fields
    of L{CONFIG} and C{more}. Returns the port and the process (its output).
    """
    directory = testCase.mktemp()
    os.makedirs(directory)
    port, readyPort = freePort(), freePort()
    path = os.path.join(directory, "haproxy.cfg")
    with open(path, "w") as file:
        file.write(
            config.format(
                port=port, readyPort=readyPort, first=first, second=second, **more
            )
        )
    process = spawn(
        testCase, ChildProcess(mergeErrors=True), [HAPROXY, "-db", "-f", path]
    )

    # Its frontends are bound together: once "ready" accepts, so does "gateway".
    async def accepting() -> bool | None:
        if not process.running:
            raise RuntimeError("haproxy ended: " + process.log())
        try:
            probe = await connect(readyPort)
        except ConnectionRefusedError:
            return None
        except ConnectError:
            # Reset by the reject rule while connecting: it is listening.
            return True
        await probe.untilClosed()
        return True

    await poll(accepting, "haproxy accepts connections", interval=PROBE_INTERVAL)
    return port, process


async def roundTrip(client: Client, lines: list[bytes]) -> None:
    """
    Send C{lines} and wait until as many replies have arrived.
    """
    expected = client.received.count(b"\n") + len(lines)
    client.send(b"".join(line + b"\n" for line in lines))
    await client.untilLines(expected)


class ScaleOutTests(TestCase):
    if HAPROXY is None:
        skip = "haproxy is not installed (Debian package haproxy)"

    async def test_twoGatewaysBehindHAProxy(self):
        """
        Every message arrives, each gateway logs the real client addresses,
        and a gateway stopped gracefully in the middle loses nothing that
        HAProxy had routed to it: its clients keep talking until they are
        done, and new clients go to the other gateway.
        """
        backend, backendPort = listenBackend(self)
        args = [
            "--listen",
            "haproxy:tcp:0:interface=127.0.0.1",
            *backendOption(backendPort),
            "--drain-timeout",
            str(DEADLINE),
        ]
        first, second = await gatherResults(
            [runGateway(self, args), runGateway(self, args)]
        )
        port = await runHAProxy(self, first.port(LISTENER), second.port(LISTENER))

        held = [await connect(port) for _ in range(HELD_CLIENTS)]
        await gatherResults(
            [
                Deferred.fromCoroutine(roundTrip(client, [b"c%d-0" % i]))
                for i, client in enumerate(held)
            ]
        )
        active = [
            value(
                await metrics(gateway.ports["metrics"]),
                "gateway_connections_active",
                listener=LISTENER,
            )
            for gateway in (first, second)
        ]
        self.assertEqual(active, [HELD_CLIENTS / 2, HELD_CLIENTS / 2])

        first.transport.signalProcess("TERM")
        await first.logged("draining 10 connections")

        newcomers = [await connect(port) for _ in range(NEW_CLIENTS)]
        for i, client in enumerate(newcomers):
            client.send(b"new%d\n" % i)
            client.halfClose()
        for client in newcomers:
            await client.untilClosed()

        for i, client in enumerate(held):
            lines = [b"c%d-%d" % (i, j) for j in range(1, LATE_MESSAGES + 1)]
            client.send(b"".join(line + b"\n" for line in lines))
            client.halfClose()
        for client in held:
            await client.untilClosed()
        code = await first.whenEnded()

        for i, client in enumerate(held):
            expected = [b"C%d-%d" % (i, j) for j in range(LATE_MESSAGES + 1)]
            self.assertEqual(client.received.splitlines(), expected)
        for i, client in enumerate(newcomers):
            self.assertEqual(client.received, b"NEW%d\n" % i)
        self.assertIn(code, (0, -15))
        self.assertNotIn("drain timeout", first.log())
        self.assertIn("closed proxy+tcp:0", first.log())

        await backend.allClosed()
        self.assertEqual(
            len(backend.received), HELD_CLIENTS * (LATE_MESSAGES + 1) + NEW_CLIENTS
        )
        for client in held + newcomers:
            text = f"closed {LISTENER} 127.0.0.1:{client.localPort} via"
            if text not in first.log():
                await second.logged(text)


async def runSocketActivated(
    testCase: TestCase, listening: socket.socket, args: list[str]
) -> GatewayProcess:
    """
    Start a gateway that takes C{listening} as systemd would pass it to
    one of several instances sharing a socket unit (C{Sockets=}): as
    descriptor 3, named C{gateway}.
    """
    command = gatewayCommand(
        withMetrics(["--listen", "systemd:domain=INET:name=gateway", *args])
    )
    process = startGateway(
        testCase,
        AS_LISTEN_PID + command,
        env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "gateway"},
        childFDs={3: listening.fileno()},
    )
    return await process.whenReady()


class SharedSocketTests(TestCase):
    async def test_instancesShareOneSocket(self):
        """
        Two gateways serve one listening socket, as systemd passes it to
        several instances of a template unit. When one stops, the socket
        stays open in the other (and in systemd, played here by the test):
        no client is refused, every message arrives.
        """
        backend, backendPort = listenBackend(self)
        listening = socket.socket()
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(128)
        port = listening.getsockname()[1]
        args = backendOption(backendPort)
        first = await runSocketActivated(self, listening, args)
        second = await runSocketActivated(self, listening, args)
        for gateway in (first, second):
            self.assertIn("systemd:gateway", gateway.ports)

        held = [await connect(port) for _ in range(HELD_CLIENTS)]
        for i, client in enumerate(held):
            await roundTrip(client, [b"h%d" % i])
        first.transport.signalProcess("TERM")
        await first.logged("Received SIGTERM")
        for i in range(NEW_CLIENTS):
            self.assertEqual(await exchange(port, b"after %d\n" % i), b"AFTER %d\n" % i)
        for i, client in enumerate(held):
            client.send(b"bye %d\n" % i)
            client.halfClose()
        for i, client in enumerate(held):
            await client.untilClosed()
            self.assertEqual(client.received, b"H%d\nBYE %d\n" % (i, i))
        self.assertIn(await first.whenEnded(), (0, -15))
        self.assertNotIn("drain timeout", first.log())
        await backend.allClosed()
        self.assertEqual(len(backend.received), 2 * HELD_CLIENTS + NEW_CLIENTS)
