"""
Soak: steady traffic plus a trickle of misbehaving clients against one
gateway for a while, reporting message counts, errors and memory over time.

C{make test} runs it for a few seconds so the harness stays honest;
C{make soak} runs it for C{SOAK_SECONDS} (600 by default) and prints a
report line every C{SOAK_REPORT} seconds (also in C{_trial_temp/test.log}).
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from tests.e2e import DEADLINE, backendOption, runGateway, untilMetric, value
from tests.reliability import connect, rss, runBackendProcess

log = Logger(namespace="tests.soak")

DURATION = float(os.environ.get("GATEWAY_SOAK_SECONDS", "3"))
REPORT_EVERY = float(os.environ.get("GATEWAY_SOAK_REPORT", str(max(1, DURATION / 10))))
# Well-behaved clients talking at once; each session makes ROUNDS round
# trips of BATCH pipelined messages, then half-closes and starts again.
SESSIONS = 20
ROUNDS = 10
BATCH = 10
# A misbehaving client every this many seconds: oversized message, reset,
# or connect-and-leave, in turn.
TROUBLE_EVERY = 0.1
MAX_MESSAGE = 4096
# How much the gateway's memory may grow between the first report and the
# last: the mark of a leak, given steady traffic.
GROWTH_LIMIT = 20 * 2**20
LISTENER = "tcp:0"


class Tally:
    def __init__(self) -> None:
        self.sessions = 0
        self.sent = 0
        self.answered = 0
        self.wrong = 0
        self.oversized = 0
        self.resets = 0
        self.leavers = 0
        self.rss: list[tuple[float, int]] = []


class SoakTests(TestCase):
    # Trial's default of 120 s is shorter than a real soak.
    timeout = DURATION + 4 * DEADLINE

    async def test_soak(self):
        """
        For DURATION seconds: every message of every session is answered
        correctly, the gateway survives the misbehaving clients, counts each
        connection's end exactly once, and its memory does not keep growing.
        """
        backend = await runBackendProcess(self)
        gateway = await runGateway(
            self,
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                *backendOption(backend.port),
                "--max-message-size",
                str(MAX_MESSAGE),
            ],
        )
        port = gateway.port()
        pid = gateway.transport.pid
        tally = Tally()
        started = reactor.seconds()
        end = started + DURATION

        def report() -> None:
            now = reactor.seconds() - started
            tally.rss.append((now, rss(pid)))
            line = (
                f"soak t={now:.0f}s sessions={tally.sessions} sent={tally.sent}"
                f" answered={tally.answered} wrong={tally.wrong}"
                f" oversized={tally.oversized} resets={tally.resets}"
                f" leavers={tally.leavers} rss={tally.rss[-1][1] / 2**20:.1f}MB"
            )
            print(line)
            log.info("{line}", line=line)

        async def session(worker: int) -> None:
            while reactor.seconds() < end:
                client = await connect(port)
                expected = []
                for round in range(ROUNDS):
                    lines = [
                        b"w%d s%d r%d m%d" % (worker, tally.sessions, round, m)
                        for m in range(BATCH)
                    ]
                    expected += [line.upper() for line in lines]
                    client.send(b"".join(line + b"\n" for line in lines))
                    tally.sent += len(lines)
                    await client.untilLines(len(expected))
                client.halfClose()
                await client.untilClosed()
                replies = client.received.splitlines()
                tally.answered += len(replies)
                tally.wrong += replies != expected
                tally.sessions += 1

        async def trouble() -> None:
            kind = 0
            while reactor.seconds() < end:
                client = await connect(port)
                if kind == 0:
                    client.send(b"ok\n" + b"x" * (MAX_MESSAGE + 1) + b"\n")
                    tally.oversized += 1
                elif kind == 1:
                    client.send(b"a\nb\nc")
                    await client.untilLines(2)
                    client.reset()
                    tally.resets += 1
                else:
                    client.halfClose()
                    tally.leavers += 1
                await client.untilClosed()
                kind = (kind + 1) % 3
                await deferLater(reactor, TROUBLE_EVERY)

        reporter = LoopingCall(report)
        reporter.start(REPORT_EVERY, now=False)
        try:
            await gatherResults(
                [Deferred.fromCoroutine(session(w)) for w in range(SESSIONS)]
                + [Deferred.fromCoroutine(trouble())]
            )
        finally:
            reporter.stop()
        report()

        self.assertIsNone(gateway.exitCode)
        self.assertEqual(tally.wrong, 0)
        self.assertEqual(tally.answered, tally.sent)
        samples = await untilMetric(
            gateway.ports["metrics"],
            lambda samples: (
                value(samples, "gateway_connections_active", listener=LISTENER) == 0
            ),
        )
        accepted = value(
            samples, "gateway_connections_accepted_total", listener=LISTENER
        )
        closed = sum(
            value(
                samples,
                "gateway_connections_closed_total",
                listener=LISTENER,
                reason=reason,
            )
            for reason in (
                "client_closed",
                "backend_closed",
                "idle_timeout",
                "protocol_error",
                "backend_unavailable",
                "shutdown",
            )
        )
        errors = value(
            samples,
            "gateway_protocol_errors_total",
            listener=LISTENER,
            peer="client",
            reason="too_long",
        )
        connections = tally.sessions + tally.oversized + tally.resets + tally.leavers
        self.assertEqual(accepted, connections)
        # Every connection ended, each with exactly one reason.
        self.assertEqual(closed, accepted)
        self.assertEqual(errors, tally.oversized)
        if len(tally.rss) > 2:
            self.assertLess(tally.rss[-1][1] - tally.rss[0][1], GROWTH_LIMIT)
        self.assertLess(reactor.seconds() - end, DEADLINE)
