"""
An int32 upper-case echo backend in a process of its own, for tests that
kill it: C{python -m tests.backendprocess PORT} (0 for a free one) prints
C{listening PORT} once it accepts connections.
"""

import sys

from twisted.internet import reactor

from tests.e2e import BackendFactory
from tests.reliability import EchoUpper


def main(port: int) -> None:
    listening = reactor.listenTCP(
        port, BackendFactory(EchoUpper), interface="127.0.0.1"
    )
    print(f"listening {listening.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
