"""
A naive Twisted translator, as a reference point for the gateway.

The textbook version: a C{LineReceiver} for the client and an
C{Int32StringReceiver} for the backend, one method call and one write per
message each way, and the two transports registered as each other's
streaming producers (the C{portforward} recipe) for flow control. No half-close
handling, no metrics, no limits beyond the receivers' C{MAX_LENGTH}.

    python -m benchmarks.naive_translator --backend-port PORT

prints ``naive translator listening on 127.0.0.1:PORT`` once bound.
"""

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IReactorTCP, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int32StringReceiver, LineReceiver
from twisted.python.failure import Failure

from benchmarks.util import MAX_MESSAGE_SIZE, serve_twisted


class BackendSide(Int32StringReceiver):
    """
    The connection to the backend: each frame becomes one client line.
    """

    MAX_LENGTH = MAX_MESSAGE_SIZE

    def __init__(self, client: "ClientSide") -> None:
        self.client = client

    def connectionMade(self) -> None:
        self.client.backendReady(self)

    def stringReceived(self, string: bytes) -> None:
        self.client.sendLine(string)

    def lengthLimitExceeded(self, length: int) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        self.client.transport.loseConnection()


class ClientSide(LineReceiver):
    """
    The client connection: each line becomes one backend frame.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_MESSAGE_SIZE
    backend: BackendSide | None = None

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self.endpoint = endpoint

    def connectionMade(self) -> None:
        # Nowhere to send anything yet.
        self.transport.pauseProducing()
        connecting: Deferred = connectProtocol(self.endpoint, BackendSide(self))
        connecting.addErrback(lambda _: self.transport.loseConnection())

    def backendReady(self, backend: BackendSide) -> None:
        self.backend = backend
        backend.transport.registerProducer(self.transport, True)
        self.transport.registerProducer(backend.transport, True)
        self.transport.resumeProducing()

    def lineReceived(self, line: bytes) -> None:
        self.backend.sendString(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        if self.backend is not None:
            self.backend.transport.loseConnection()


class TranslatorFactory(Factory):
    """
    Builds a L{ClientSide} per client, each with its own backend connection.
    """

    noisy = False

    def __init__(self, reactor: IReactorTCP, host: str, port: int) -> None:
        self.endpoint = TCP4ClientEndpoint(reactor, host, port)

    def buildProtocol(self, addr: object) -> ClientSide:
        return ClientSide(self.endpoint)


def main() -> None:
    serve_twisted("naive translator", TranslatorFactory)


if __name__ == "__main__":
    main()
