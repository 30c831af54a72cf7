"""
End to end: a real C{twistd -n gateway} process between real sockets.
"""

from twisted.trial.unittest import TestCase

from tests.e2e import (
    backendOption,
    exchange,
    freePort,
    listenBackend,
    runGateway,
    runToEnd,
)

LISTEN = ["--listen", "tcp:0:interface=127.0.0.1"]


class TranslationTests(TestCase):
    async def test_pipelined(self):
        """
        A thousand pipelined lines arrive as a thousand frames, and the
        replies come back as lines, in order.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(self, LISTEN + backendOption(backendPort))
        lines = [b"message %d" % i for i in range(1000)]
        reply = await exchange(gateway.port(), b"".join(line + b"\n" for line in lines))
        await backend.allClosed()
        self.assertEqual(backend.received, lines)
        self.assertEqual(reply, b"".join(line.upper() + b"\n" for line in lines))

    async def test_halfClose(self):
        """
        printf 'a\\nb' | nc -N: an unterminated last line is a message, and
        the replies to both still arrive after the client shut its side.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(self, LISTEN + backendOption(backendPort))
        self.assertEqual(await exchange(gateway.port(), b"a\nb"), b"A\nB\n")
        self.assertEqual(await exchange(gateway.port(), b"a\nb\n"), b"A\nB\n")

    async def test_emptyMessages(self):
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(self, LISTEN + backendOption(backendPort))
        self.assertEqual(await exchange(gateway.port(), b"\n\nx\n"), b"\n\nX\n")
        await backend.allClosed()
        self.assertEqual(backend.received, [b"", b"", b"x"])

    async def test_largeMessage(self):
        """
        A 60 KB message, under the default 64 KiB limit, goes through whole.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(self, LISTEN + backendOption(backendPort))
        payload = b"x" * 60_000
        self.assertEqual(
            await exchange(gateway.port(), payload + b"\n"), payload.upper() + b"\n"
        )

    async def test_oversizedMessage(self):
        """
        A message over --max-message-size closes its own connection only;
        the messages before it are delivered and answered.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self, LISTEN + backendOption(backendPort) + ["--max-message-size", "1000"]
        )
        reply = await exchange(gateway.port(), b"ok\n" + b"x" * 1001 + b"\nlost\n")
        await backend.allClosed()
        self.assertEqual(backend.received, [b"ok"])
        self.assertIn(reply, (b"", b"OK\n"))
        self.assertEqual(await exchange(gateway.port(), b"next\n"), b"NEXT\n")
        await gateway.logged("protocol error from client")
        self.assertIn("protocol error from client", gateway.log())

    async def test_demoBackend(self):
        """
        With no --backend, the built-in echo backend answers, and the log
        says it is in use.
        """
        gateway = await runGateway(self, LISTEN)
        self.assertEqual(await exchange(gateway.port(), b"hello\n"), b"hello\n")
        self.assertIn("built-in demo echo backend", gateway.log())

    async def test_otherFramings(self):
        """
        crlf on the client side and netstring on the backend side.
        """
        gateway = await runGateway(
            self,
            LISTEN + ["--client-framing", "crlf", "--backend-framing", "netstring"],
        )
        self.assertEqual(await exchange(gateway.port(), b"a\r\nb\r\n"), b"a\r\nb\r\n")


class BackendFailureTests(TestCase):
    async def test_backendDown(self):
        """
        When the backend is unreachable the client is closed at once, the
        failure is logged, and the gateway keeps running.
        """
        gateway = await runGateway(self, LISTEN + backendOption(freePort()))
        self.assertEqual(await exchange(gateway.port(), b"x\n", halfClose=False), b"")
        self.assertEqual(await exchange(gateway.port(), b"y\n", halfClose=False), b"")
        # The client sees its end before the gateway logs the pair closed.
        await gateway.logged("backend_unavailable", 2)
        self.assertIn("connect failed", gateway.log())
        self.assertIn("backend_unavailable", gateway.log())
        self.assertIsNone(gateway.exitCode)

    async def test_roundRobinSkipsDownBackend(self):
        """
        With one of two backends down, every client is still served.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self, LISTEN + backendOption(freePort()) + backendOption(backendPort)
        )
        for i in range(6):
            self.assertEqual(await exchange(gateway.port(), b"m%d\n" % i), b"M%d\n" % i)
        self.assertEqual(backend.accepted, 6)


class LifecycleTests(TestCase):
    async def test_sigtermEndsCleanly(self):
        """
        SIGTERM ends the gateway with a clean exit.
        """
        gateway = await runGateway(self, LISTEN)
        code = await gateway.stop("TERM")
        self.assertIn(code, (0, -15))
        self.assertIn("gateway ready", gateway.log())
        self.assertNotIn("Traceback", gateway.log())

    async def test_gatewayReactor(self):
        """
        Asked for no reactor, twistd runs the gateway on L{GatewayReactor},
        and translates through it.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(self, LISTEN + backendOption(backendPort))
        self.assertIn("reactor class: gateway.reactor.GatewayReactor.", gateway.log())
        reply = await exchange(gateway.port(), b"one\ntwo\n")
        self.assertEqual(reply, b"ONE\nTWO\n")

    async def test_reactorChosenOnTheCommandLine(self):
        """
        A reactor chosen with C{twistd --reactor} is the one the gateway
        runs on.
        """
        backend, backendPort = listenBackend(self)
        gateway = await runGateway(
            self, LISTEN + backendOption(backendPort), twistdArgs=["--reactor=poll"]
        )
        log = gateway.log()
        self.assertIn("reactor class: twisted.internet.pollreactor.PollReactor.", log)
        reply = await exchange(gateway.port(), b"one\n")
        self.assertEqual(reply, b"ONE\n")

    async def test_severalListeners(self):
        gateway = await runGateway(
            self,
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--listen",
                "tcp6:0:interface=\\:\\:1",
            ],
        )
        self.assertEqual(set(gateway.ports), {"tcp:0", "tcp6:0", "metrics"})


class BadOptionTests(TestCase):
    """
    A bad option ends startup with one line naming it, and no traceback.
    """

    async def check(self, args, option):
        process = await runToEnd(args)
        self.assertNotEqual(process.exitCode, 0)
        everything = process.log() + process.errors.decode()
        self.assertNotIn("Traceback", everything)
        lastLine = [line for line in everything.splitlines() if line.strip()][-1]
        self.assertIn(option, lastLine)
        self.assertNotIn("listening on", everything)

    async def test_framing(self):
        await self.check(["--client-framing", "json"], "--client-framing")

    async def test_negativeNumber(self):
        await self.check(["--idle-timeout", "-1"], "--idle-timeout")

    async def test_notANumber(self):
        await self.check(["--max-message-size", "lots"], "--max-message-size")

    async def test_malformedListen(self):
        await self.check(["--listen", "tcp:notaport"], "--listen")

    async def test_malformedBackend(self):
        await self.check(["--backend", "carrier-pigeon:coop"], "--backend")

    async def test_portInUse(self):
        """
        A listener that cannot bind ends startup with one line.
        """
        backend, port = listenBackend(self)
        await self.check(["--listen", f"tcp:{port}:interface=127.0.0.1"], "--listen")
