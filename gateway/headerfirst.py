"""
A PROXY header as the very first bytes of a backend connection, TLS or not.

HAProxy (C{server ... ssl send-proxy}) and nginx (C{listen ... ssl
proxy_protocol}) read the PROXY header in clear on the TCP connection, then
the TLS ClientHello (SPEC section 2, C{--backend-proxy-protocol}). A
protocol that writes the header itself can only write it inside TLS once
Twisted's TLS layer sits under it. L{HeaderFirstEndpoint} puts the header
under that layer instead: it writes it on the raw connection as soon as the
connection is made, before the wrapped protocol (for a C{tls:} backend,
Twisted's L{TLSMemoryBIOProtocol}, which starts its handshake when it is
connected) is told of the connection.

The header is per connection (it names that client): the endpoint takes it
from the factory it is asked to connect, whose C{proxyHeader} attribute
holds the bytes (C{b""} or absent: no header). So one endpoint per backend
serves every client.

Private Twisted state: a C{tls:} endpoint string gives Twisted's
C{_WrapperEndpoint} (from L{wrapClientTLS}); its C{_wrappedEndpoint} (the
TCP endpoint) and C{_wrapperFactory} (which builds the
L{TLSMemoryBIOFactory}) are read to put the header writer between them.
C{tests.test_headerfirst} pins both; when a Twisted release removes them,
L{backendEndpoint} refuses a C{tls:} backend with PROXY headers at start-up
with a clear error, rather than send the header where no server reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IAddress,
    IFileDescriptorReceiver,
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer

# The factory attribute holding a connection's header.
HEADER_ATTRIBUTE = "proxyHeader"

_MIRRORED = (IHalfCloseableProtocol, IFileDescriptorReceiver)

TLSWrapper = Callable[[IProtocolFactory], TLSMemoryBIOFactory]


class HeaderFirstProtocol(Protocol):
    """
    Writes a header on the raw transport, then connects the wrapped protocol
    to that same transport and passes every event on.

    The wrapped protocol gets the raw transport itself, not this object:
    its writes go straight to the socket (L{gateway.writethrough} still
    applies), and only reads pass through one more call. It provides the
    half-close interfaces the wrapped protocol provides, so the transport
    treats the pair as it would treat the wrapped protocol alone.
    """

    def __init__(self, header: bytes, wrappedProtocol: IProtocol) -> None:
        self.header = header
        self.wrappedProtocol = wrappedProtocol
        provided = [iface for iface in _MIRRORED if iface.providedBy(wrappedProtocol)]
        if provided:
            directlyProvides(self, *provided)

    def makeConnection(self, transport: ITransport) -> None:
        self.connected = 1
        self.transport = transport
        transport.write(self.header)
        self.wrappedProtocol.makeConnection(transport)

    def logPrefix(self) -> str:
        prefix = getattr(self.wrappedProtocol, "logPrefix", None)
        if prefix is not None:
            return prefix()
        return self.wrappedProtocol.__class__.__name__

    def dataReceived(self, data: bytes) -> None:
        self.wrappedProtocol.dataReceived(data)

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.wrappedProtocol.fileDescriptorReceived(descriptor)  # type: ignore[attr-defined]

    def readConnectionLost(self) -> None:
        self.wrappedProtocol.readConnectionLost()  # type: ignore[attr-defined]

    def writeConnectionLost(self) -> None:
        self.wrappedProtocol.writeConnectionLost()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = 0
        self.wrappedProtocol.connectionLost(reason)


class HeaderFirstFactory(Factory):
    """
    Builds a L{HeaderFirstProtocol} around each protocol of a factory.
    """

    noisy = False

    def __init__(self, header: bytes, wrappedFactory: IProtocolFactory) -> None:
        self.header = header
        self.wrappedFactory = wrappedFactory

    def doStart(self) -> None:
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()

    def buildProtocol(self, addr: IAddress) -> HeaderFirstProtocol | None:
        protocol = self.wrappedFactory.buildProtocol(addr)
        if protocol is None:
            return None
        return HeaderFirstProtocol(self.header, protocol)


def splitTLS(endpoint: IStreamClientEndpoint) -> tuple[Any, TLSWrapper] | None:
    """
    The TCP endpoint under a L{wrapClientTLS} endpoint and the function that
    builds its TLS factory, or C{None} when C{endpoint} is not one (or a
    Twisted release keeps them elsewhere: see the module docstring).
    """
    inner = getattr(endpoint, "_wrappedEndpoint", None)
    wrapper = getattr(endpoint, "_wrapperFactory", None)
    if inner is None or not callable(wrapper):
        return None
    try:
        probe = wrapper(Factory())
    except Exception:
        return None
    if not isinstance(probe, TLSMemoryBIOFactory):
        return None
    return inner, wrapper


@implementer(IStreamClientEndpoint)
class HeaderFirstEndpoint:
    """
    A client endpoint that writes the connecting factory's C{proxyHeader}
    as the first bytes of each connection, in clear under TLS.

    @param wrapped: the backend's endpoint as Twisted builds it.
    @param tls: for a TLS backend, L{splitTLS} of C{wrapped}.
    """

    def __init__(
        self,
        wrapped: IStreamClientEndpoint,
        tls: tuple[Any, TLSWrapper] | None = None,
    ) -> None:
        self.wrapped = wrapped
        self._tls = tls

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect C{protocolFactory} as the wrapped endpoint would, with its
        C{proxyHeader} first on the wire when it has one.

        @return: a L{Deferred} firing with the factory's own protocol (the
            one under TLS for a TLS backend), as the wrapped endpoint's does.
        """
        header = getattr(protocolFactory, HEADER_ATTRIBUTE, None)
        if not header:
            return self.wrapped.connect(protocolFactory)
        if self._tls is None:
            attempt = self.wrapped.connect(HeaderFirstFactory(header, protocolFactory))
            return attempt.addCallback(lambda protocol: protocol.wrappedProtocol)
        inner, wrapTLS = self._tls
        attempt = inner.connect(HeaderFirstFactory(header, wrapTLS(protocolFactory)))
        # Header writer -> TLSMemoryBIOProtocol -> the factory's protocol.
        return attempt.addCallback(
            lambda protocol: protocol.wrappedProtocol.wrappedProtocol
        )


class HeaderBeforeTLSUnavailable(ValueError):
    """
    This Twisted's C{tls:} endpoint cannot take a header under its TLS.
    """


def isTLS(description: str) -> bool:
    """
    Whether a client endpoint description is Twisted's C{tls:} endpoint.
    """
    return description.split(":", 1)[0].strip().lower() == "tls"


def backendEndpoint(
    reactor: Any, description: str, proxyHeaders: bool
) -> IStreamClientEndpoint:
    """
    The endpoint of backend C{description}: L{clientFromString}'s, wrapped
    in a L{HeaderFirstEndpoint} when PROXY headers are sent to backends.

    @raise HeaderBeforeTLSUnavailable: for a C{tls:} backend with
        C{proxyHeaders} when Twisted's TLS endpoint cannot be taken apart.
    @raise ValueError: and whatever else L{clientFromString} raises for a
        malformed description.
    """
    endpoint = clientFromString(reactor, description)
    if not proxyHeaders:
        return endpoint
    return wrapEndpoint(endpoint, tls=isTLS(description))


def wrapEndpoint(endpoint: IStreamClientEndpoint, tls: bool) -> HeaderFirstEndpoint:
    """
    C{endpoint} in a L{HeaderFirstEndpoint}; C{tls} says it is a
    L{wrapClientTLS} endpoint, whose header goes under its TLS.

    @raise HeaderBeforeTLSUnavailable: see L{backendEndpoint}.
    """
    if not tls:
        return HeaderFirstEndpoint(endpoint)
    parts = splitTLS(endpoint)
    if parts is None:
        raise HeaderBeforeTLSUnavailable(
            "this Twisted version's tls: endpoint cannot send a PROXY header"
            " before the TLS handshake"
        )
    return HeaderFirstEndpoint(endpoint, parts)
