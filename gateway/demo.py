"""
The built-in demo backend: an echo server on a free loopback port.

Echoing the bytes back unchanged echoes every message whatever the framing,
so the demo serves C{int32} (the default backend framing) and every other.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from gateway.endpoints import LISTEN_BACKLOG


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """
    Writes back what it reads, and stops reading while its writes back up.
    """

    def connectionMade(self) -> None:
        self.transport.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class DemoBackendService(Service):
    """
    Runs L{Echo} on 127.0.0.1, on a port the kernel chooses.
    """

    log = Logger(namespace="gateway.demo")
    port = None

    def __init__(self, reactor) -> None:
        self._reactor = reactor

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self.port is not None:
            return
        factory = Factory.forProtocol(Echo)
        factory.noisy = False
        self.port = self._reactor.listenTCP(
            0, factory, backlog=LISTEN_BACKLOG, interface="127.0.0.1"
        )
        self.log.warn(
            "no --backend given: serving the built-in demo echo backend"
            " at 127.0.0.1:{port}",
            port=self.port.getHost().port,
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

    def endpoint(self) -> IStreamClientEndpoint:
        """
        A client endpoint that reaches this demo once it listens.
        """
        return _DemoEndpoint(self)


@implementer(IStreamClientEndpoint)
class _DemoEndpoint:
    def __init__(self, demo: DemoBackendService) -> None:
        self._demo = demo

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        port = self._demo.port
        if port is None:
            return fail(ConnectError(string="the demo backend is not running"))
        address: IAddress = port.getHost()
        return TCP4ClientEndpoint(
            self._demo._reactor, "127.0.0.1", address.port
        ).connect(factory)
