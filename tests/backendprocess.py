"""
An int32 upper-case echo backend in a process of its own, for tests that
kill it: C{python -m tests.backendprocess PORT} (0 for a free one) prints
C{listening PORT} once it accepts connections. It ends when its standard
input does, so that it never outlives a test run that was interrupted.
"""

import sys

from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO

from tests.e2e import BackendFactory, UpperBackend


class StopWithParent(Protocol):
    def connectionLost(self, reason: object = None) -> None:
        if reactor.running:
            reactor.stop()


def main(port: int) -> None:
    listening = reactor.listenTCP(
        port, BackendFactory(UpperBackend), interface="127.0.0.1"
    )
    print(f"listening {listening.getHost().port}", flush=True)
    StandardIO(StopWithParent())
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
