"""
Writing to a TCP transport at once when nothing is queued on it.

A Twisted transport buffers every C{write()}: the bytes go on a list, the
descriptor is registered for writability (an C{epoll_ctl}), the reactor
sends them in its next iteration, and the descriptor is unregistered (a
second C{epoll_ctl}). A proxy that forwards each read chunk at once pays for
that on every chunk, and a request/response exchange waits one more reactor
iteration on each hop.

L{write} sends the bytes with one C{send()} when the transport has nothing
queued and is in its ordinary state, and hands whatever the kernel did not
take to the transport's own C{write()}, which queues it as always. So the
bytes leave in order, a full socket buffer still ends in Twisted's queue and
pauses the producer feeding it, and an error is left for the transport to
meet again on its next send and handle its usual way. Every other transport
(TLS, a protocol wrapper, a test's string transport) gets its own
C{write()}.

This reads state Twisted keeps private (C{_tempDataLen} and the half-close
and abort flags of C{twisted.internet.tcp.Connection}); the tests pin it, so
that a Twisted release which changes it fails them rather than the gateway.
"""

from twisted.internet.interfaces import ITransport
from twisted.internet.tcp import Connection


def canSendNow(transport: Connection) -> bool:
    """
    Whether C{transport} has nothing queued and may be written to directly:
    connected, not closing, not half-closed, not aborted, no TLS, no paused
    producer.
    """
    return (
        not transport._tempDataLen
        and not transport.dataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._aborting
        and not transport.producerPaused
        and not transport.TLS
    )


def write(transport: ITransport, data: bytes) -> None:
    """
    Write C{data} to C{transport}: what the kernel takes at once is sent
    now, the rest goes through C{transport.write}.
    """
    if isinstance(transport, Connection) and canSendNow(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # A full socket buffer (EAGAIN, ENOBUFS) or a broken connection:
            # either way the bytes are queued below, where Twisted deals
            # with them as it does with any it could not send.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
