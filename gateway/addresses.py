"""
One view of a peer's address for every part of the gateway.

A dual-stack socket (C{tcp6:} bound to C{::}, or to C{::ffff:127.0.0.1})
reports an IPv4 client as the IPv4-mapped IPv6 address C{::ffff:a.b.c.d}.
That client is an IPv4 client everywhere (SPEC section 3, "Addresses"): in
logs, in the PROXY header sent to a backend (C{TCP4}, C{AF_INET}) and in
per-source limits. L{normalize} turns such an address back into the IPv4
address it stands for; L{describe} is the one printable form, used in log
lines: C{192.0.2.1:4000}, C{[2001:db8::1]:4000}, C{unix}.

Neither function trusts what an address object holds: a host string is
printed only after C{ipaddress} has parsed it, so no text a peer chose (a
zone id such as C{%\\nFORGED} included) reaches a log line.
"""

from __future__ import annotations

import functools
import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

# What describe() prints for an address it cannot show faithfully.
UNKNOWN = "unknown"
UNIX = "unix"

_MAX_PORT = 65535

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def parseHost(host: object) -> IP | None:
    """
    The IP address C{host} names, with any IPv6 zone id (C{%eth0}) dropped
    and an IPv4-mapped IPv6 address turned into its IPv4 address.

    A zone id only means something on the host that chose it, and Python's
    C{ipaddress} keeps whatever text follows the C{%}, newlines included.

    @return: C{None} when C{host} is not a string holding an IP address.
    """
    if not isinstance(host, str):
        return None
    return _parseText(host)


# Peers' host strings parsed lately. Every connection has its address
# parsed several times between its accept and its backend connect
# (admission, the log lines); a parse with ipaddress costs some
# microseconds, a look-up a fraction of one. Bounded, and small (about 150
# bytes an entry): a PROXY header names any source it likes, IPv6 peers can
# use many addresses, and the repeats come close together anyway.
_CACHED_HOSTS = 512


@functools.lru_cache(maxsize=_CACHED_HOSTS)
def _parseText(host: str) -> IP | None:
    # ipaddress's objects are immutable: sharing one between callers is safe.
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=_CACHED_HOSTS)
def _hostText(host: str) -> str | None:
    """
    How L{describe} prints the host part of an address whose host is
    C{host}: C{192.0.2.1}, C{[2001:db8::1]}; C{None} when it does not parse.
    """
    ip = _parseText(host)
    if ip is None:
        return None
    if ip.version == 6:
        return f"[{ip.compressed}]"
    return ip.compressed


def _port(address: IAddress) -> int | None:
    port = getattr(address, "port", None)
    if isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= _MAX_PORT:
        return port
    return None


def normalize(address: IAddress) -> IAddress:
    """
    C{address}, or the L{IPv4Address} it stands for when it is an
    IPv4-mapped IPv6 address (C{::ffff:192.0.2.1}): same transport type
    (C{"TCP"} or C{"UDP"}), same port. Any other address is returned as is.
    """
    if not isinstance(address, IPv6Address):
        return address
    try:
        ip = ipaddress.IPv6Address(address.host.split("%", 1)[0])
    except ValueError:
        return address
    mapped = ip.ipv4_mapped
    if mapped is None:
        return address
    return IPv4Address(address.type, str(mapped), address.port)


def describe(address: IAddress | None) -> str:
    """
    The printable form of a peer's address, for logs: C{HOST:PORT} for IPv4
    (an IPv4-mapped address included), C{[HOST]:PORT} for IPv6 (zone id
    dropped), C{unix} for a UNIX-socket peer, C{unknown} for anything else
    or anything that does not parse.
    """
    if isinstance(address, UNIXAddress):
        return UNIX
    if address is None:
        return UNKNOWN
    host = getattr(address, "host", None)
    text = _hostText(host) if isinstance(host, str) else None
    port = _port(address)
    if text is None or port is None:
        return UNKNOWN
    return f"{text}:{port}"


def describeListening(address: IAddress) -> str:
    """
    The printable form of an address the gateway listens on, for the log
    event naming a bound listener: as L{describe}, except that a UNIX
    socket is shown by its path, which the operator chose.
    """
    if isinstance(address, UNIXAddress):
        raw = address.name
        name = (
            raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
        )
        # An abstract socket's name starts with a NUL byte.
        return repr(name)[1:-1] if name else UNIX
    return describe(address)
