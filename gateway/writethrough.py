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

This reads state Twisted keeps private: of
C{twisted.internet.abstract.FileDescriptor}, C{_tempDataLen} (set per
instance), C{dataBuffer}, C{producerPaused}, C{disconnecting},
C{_writeDisconnecting}; of C{twisted.internet.tcp.Connection}, C{_aborting},
C{TLS}, C{connected} and C{socket}. The tests pin them
(C{tests.test_writethrough.PinTests}), so that a Twisted release which
changes them fails there rather than in the gateway; and should one be
missing at run time all the same, L{write} logs one warning and from then on
writes through C{transport.write}, Twisted's own path: slower, never broken.
"""

from twisted.internet.interfaces import ITransport
from twisted.internet.tcp import Connection
from twisted.logger import Logger

log = Logger(namespace="gateway.writethrough")

# The attributes canSendNow reads, for the pin tests and the warning.
PRIVATE_ATTRIBUTES = (
    "_tempDataLen",
    "dataBuffer",
    "connected",
    "disconnecting",
    "_writeDisconnecting",
    "_aborting",
    "producerPaused",
    "TLS",
    "socket",
)


# Whether the direct path is in use; cleared, once, when Twisted's private
# state is not what canSendNow reads.
_enabled = True


def canSendNow(transport: Connection) -> bool:
    """
    Whether C{transport} has nothing queued and may be written to directly:
    connected, not closing, not half-closed, not aborted, no TLS, no paused
    producer.

    @raise AttributeError: Twisted's private state is not what it was.
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


def _disable(transport: Connection, error: AttributeError) -> None:
    global _enabled
    _enabled = False
    missing = [name for name in PRIVATE_ATTRIBUTES if not hasattr(transport, name)]
    log.warn(
        "Twisted's TCP transport lacks {missing} ({error}), which"
        " gateway.writethrough reads: writes go through transport.write",
        missing=", ".join(missing) or "an attribute",
        error=str(error),
    )


def write(transport: ITransport, data: bytes) -> None:
    """
    Write C{data} to C{transport}: what the kernel takes at once is sent
    now, the rest goes through C{transport.write}.
    """
    if _enabled and isinstance(transport, Connection):
        try:
            direct = canSendNow(transport)
            if direct:
                send = transport.socket.send
        except AttributeError as error:
            _disable(transport, error)
            direct = False
        if direct:
            try:
                sent = send(data)
            except OSError:
                # A full socket buffer (EAGAIN, ENOBUFS) or a broken
                # connection: either way the bytes are queued below, where
                # Twisted deals with them as it does with any it could not
                # send.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)
