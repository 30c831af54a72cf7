"""
Admission: which client addresses may connect, how many at once, how fast.

Pure rules on an injected clock, no I/O: the accept path asks
L{Admission.admit} about a client address once the real address is known
(after the PROXY header behind C{haproxy:}) and before anything else happens
on the connection, and gets either a L{Refusal} (close at once, count it in
C{gateway_connections_rejected_total{reason}}, tell
L{gateway.refusals.RefusalLog}) or a
L{Ticket} to release when the connection closes.

What a "source" is (SPEC §3, §9):

  - an IPv4-mapped IPv6 address (C{::ffff:a.b.c.d}) is the IPv4 client
    C{a.b.c.d}, for the address lists and the per-source limits alike;
  - an IPv6 client is counted by its /64, the smallest network an ISP hands
    a subscriber (RFC 6177), so that one host walking its own /64 is still
    one source; the address lists match the full address;
  - a UNIX-socket client has no address: no rule applies to it.

The order of the checks: the address lists first, because a denied address
must cost nothing (it creates no entry in any table, so a denied flood
cannot grow memory); then the rate, so that every attempt an allowed source
makes spends a token, those refused for concurrency included (a source
retrying in a tight loop at its concurrency cap is throttled too, as
HAProxy's C{src_conn_rate} counts every tracked attempt); then the
concurrency count, last because it is the only check that takes something
that must be given back.

The service-wide C{--max-connections} (reason C{limit}) is the caller's.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twisted.internet.address import IPv4Address as TwistedIPv4Address
from twisted.internet.address import IPv6Address as TwistedIPv6Address
from twisted.internet.interfaces import IAddress, IReactorTime

from gateway.addresses import normalize, parseHost

# The rejection reasons admission decides (SPEC §5, §9).
DENIED = "denied"
PER_SOURCE_LIMIT = "per_source_limit"
RATE_LIMIT = "rate_limit"
REASONS = (DENIED, PER_SOURCE_LIMIT, RATE_LIMIT)

# The prefix length an IPv6 client is counted by in the per-source limits.
IPV6_SOURCE_PREFIX = 64

# The most rate-limit buckets kept at once. Beyond it the bucket updated
# longest ago is dropped early (see RateLimiter); about 13 MB at this size
# (200 bytes a bucket, measured with tracemalloc over 100,000 sources).
DEFAULT_RATE_TABLE_SIZE = 65536

# IPv4-mapped IPv6 addresses, ::ffff:0:0/96 (RFC 4291 §2.5.5.2).
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
# Keys of IPv6 sources are offset past every IPv4 key so the two never meet
# in one table: an IPv4 key is the address (< 2**32), an IPv6 key this plus
# the address's /64 prefix.
_IPV6_KEY_BASE = 1 << 64

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidRule(ValueError):
    """
    An admission setting an operator gave cannot be used; the message is one
    line naming the option and what is wrong.
    """


def clientIP(address: IAddress | str | None) -> IP | None:
    """
    The client's IP address as admission sees it.

    @param address: a Twisted C{IPv4Address}/C{IPv6Address} (the peer, or the
        source a PROXY header named), any other L{IAddress} (a UNIX socket),
        an IP address string, or C{None}.
    @return: the address, an IPv4-mapped IPv6 address turned into its IPv4
        address and an IPv6 zone id (C{%eth0}) dropped, as everywhere else
        (L{gateway.addresses}); C{None} when the client has no IP address
        (UNIX sockets, C{None}).
    @raise ValueError: for a string that is not an IP address.
    """
    if isinstance(address, TwistedIPv4Address | TwistedIPv6Address):
        host: object = normalize(address).host
    elif isinstance(address, str):
        host = address
    else:
        return None
    ip = parseHost(host)
    if ip is None:
        raise ValueError(f"not an IP address: {host!r}")
    return ip


def sourceKey(ip: IP) -> int:
    """
    The key the per-source limits count C{ip} under: an IPv4 address is its
    own source, an IPv6 address is counted by its /64. Distinct IPv4
    addresses and distinct /64s have distinct keys; ints keep the tables
    small.
    """
    if ip.version == 4:
        return int(ip)
    return _IPV6_KEY_BASE + (int(ip) >> (128 - IPV6_SOURCE_PREFIX))


def parseNetwork(option: str, text: str) -> Network:
    """
    Parse one C{--allow}/C{--deny} value: a CIDR (C{10.0.0.0/8},
    C{2001:db8::/32}) or a bare address (a /32 or /128).

    A CIDR with host bits set (C{10.0.0.1/8}) is refused rather than masked
    as nginx and HAProxy do: in an access list it is ambiguous (the /8 or
    the one address with a mistyped length?), and guessing the wider
    meaning would quietly let a whole network in. The error names both
    readings. An IPv4-mapped IPv6 network (C{::ffff:10.0.0.0/104}) is the
    IPv4 network it maps, since mapped clients are matched as IPv4.

    @raise InvalidRule: with a one-line message starting C{option text:}.
    """
    value = text.strip()
    prefix = f"{option} {text!r}"
    if not value:
        raise InvalidRule(f"{prefix}: empty; give a CIDR such as 10.0.0.0/8")
    if "%" in value:
        raise InvalidRule(f"{prefix}: a zone id (%...) cannot be used in a rule")
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise InvalidRule(
                f"{prefix}: not an IP address or CIDR such as 10.0.0.0/8 "
                "or 2001:db8::/32"
            ) from error
        host = value.partition("/")[0]
        single = 32 if loose.version == 4 else 128
        raise InvalidRule(
            f"{prefix}: host bits set; write {loose} for the network "
            f"or {host}/{single} for the one address"
        ) from error
    if (
        network.version == 6
        and network.prefixlen >= _MAPPED.prefixlen
        and network.subnet_of(_MAPPED)
    ):
        mapped = network.network_address.ipv4_mapped
        return ipaddress.IPv4Network((mapped, network.prefixlen - _MAPPED.prefixlen))
    return network


def parseNetworks(option: str, texts: Iterable[str]) -> tuple[Network, ...]:
    """
    L{parseNetwork} over every value of a repeatable option, in order.

    @raise InvalidRule: for the first bad value.
    """
    return tuple(parseNetwork(option, text) for text in texts)


class NetworkSet:
    """
    A set of networks, asked whether it holds an address in O(log N).

    The networks of each family are merged into disjoint ranges of integers
    (overlapping and adjacent ones collapse), sorted by their first address;
    a lookup is one bisection on the starts and one comparison with the end.
    """

    def __init__(self, networks: Iterable[Network]) -> None:
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        byFamily: dict[int, list[Network]] = {4: [], 6: []}
        for network in networks:
            byFamily[network.version].append(network)
        for version, members in byFamily.items():
            for merged in ipaddress.collapse_addresses(members):  # type: ignore[type-var]
                self._starts[version].append(int(merged.network_address))
                self._ends[version].append(int(merged.broadcast_address))
        self._empty = not (self._starts[4] or self._starts[6])

    def __bool__(self) -> bool:
        return not self._empty

    def __contains__(self, ip: IP) -> bool:
        starts = self._starts[ip.version]
        value = int(ip)
        index = bisect.bisect_right(starts, value) - 1
        return index >= 0 and value <= self._ends[ip.version][index]


@dataclass(frozen=True)
class AdmissionSettings:
    """
    One service's admission rules (SPEC §9).

    @ivar allow: when not empty, only addresses inside one of these networks
        may connect (C{--allow}).
    @ivar deny: addresses inside one of these may not (C{--deny}); deny wins.
    @ivar maxConnectionsPerSource: concurrent connections of one source;
        C{0} is off (C{--max-connections-per-source}).
    @ivar maxConnectionRatePerSource: new connections per second from one
        source, a token bucket holding this many; C{0} is off
        (C{--max-connection-rate-per-source}).
    @ivar rateTableSize: the most sources whose buckets are remembered at
        once (see L{RateLimiter}).
    """

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    maxConnectionsPerSource: int = 0
    maxConnectionRatePerSource: float = 0.0
    rateTableSize: int = DEFAULT_RATE_TABLE_SIZE

    def __post_init__(self) -> None:
        if self.maxConnectionsPerSource < 0:
            raise InvalidRule(
                "--max-connections-per-source: must be 0 (off) or more, "
                f"not {self.maxConnectionsPerSource}"
            )
        rate = self.maxConnectionRatePerSource
        if not rate >= 0 or rate == float("inf"):
            raise InvalidRule(
                "--max-connection-rate-per-source: must be 0 (off) or a "
                f"positive number of connections per second, not {rate}"
            )
        if self.rateTableSize < 1:
            raise InvalidRule(
                f"rate table size must be at least 1, not {self.rateTableSize}"
            )


@dataclass(frozen=True)
class Refusal:
    """
    A connection admission refused: close it at once.

    @ivar reason: one of L{REASONS}, the C{reason} label of
        C{gateway_connections_rejected_total}.
    @ivar source: the client address for the log line (IPv4 for a mapped
        address, without a port).
    """

    reason: str
    source: str


class Ticket:
    """
    An admitted connection's hold on its source's concurrency count.

    Call L{release} when the connection closes, from every way it can close;
    only the first call gives the count back.
    """

    __slots__ = ("_counts", "_key", "source")

    def __init__(
        self, counts: ConcurrencyCounter | None, key: int, source: str
    ) -> None:
        self._counts = counts
        self._key = key
        self.source = source

    @property
    def released(self) -> bool:
        """Whether the count has been given back (or there was none)."""
        return self._counts is None

    def release(self) -> None:
        """Give the source's count back; later calls do nothing."""
        counts, self._counts = self._counts, None
        if counts is not None:
            counts.release(self._key)


class ConcurrencyCounter:
    """
    Live connections per source key, at most C{limit} each.

    O(1) per acquire and release. A key whose count falls to 0 is removed,
    so the table holds only sources with a live connection: its size is
    bounded by the live connections, hence by C{--max-connections}.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, key: int) -> int:
        """The live connections of C{key}."""
        return self._counts.get(key, 0)

    def acquire(self, key: int) -> bool:
        """Count one more connection of C{key}, unless it is at its limit."""
        count = self._counts.get(key, 0)
        if self.limit and count >= self.limit:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, key: int) -> None:
        """Count one connection of C{key} fewer."""
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)


class RateLimiter:
    """
    A token bucket per source key, holding C{burst} tokens and refilled at
    C{rate} tokens a second; a connection takes one token.

    Each bucket is kept as one float, the time its tokens would all be back
    (the generic cell rate algorithm's "theoretical arrival time"): a bucket
    with C{t} tokens at time C{now} is stored as
    C{now + (burst - t) / rate}. A bucket that is full again is the same as
    no bucket, so it need not be kept.

    Memory, whatever the number of sources. The table is ordered by last
    update. A bucket updated at time C{u} holds at most C{burst} tokens'
    worth of debt, so it is full again by C{u + burst/rate}; every
    L{allow} first drops, from the oldest end, the buckets that are full.
    So the table holds only sources that connected in the last C{burst/rate}
    seconds (one second when C{burst} is C{rate}), and never more than
    C{capacity} of them: past that, the bucket updated longest ago is
    dropped although not yet full. O(1) amortised per connection: each
    update appends once and is dropped at most once.

    Why dropping a bucket early is safe: it only happens while more than
    C{capacity} other sources connected more recently than that one, in
    under C{burst/rate} seconds. The dropped source then starts again from a
    full bucket, C{burst} connections at most sooner than it would have.
    An attacker who can rotate through more than C{capacity} sources that
    fast already gets C{burst} connections from each of them by design; the
    per-source rate is not what stops a distributed flood, the per-source
    concurrency limit (exact, bounded by the live connections), the
    handshake timeout and C{--max-connections} are.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float],
        capacity: int = DEFAULT_RATE_TABLE_SIZE,
        burst: float | None = None,
    ) -> None:
        """
        @param rate: tokens added per second, more than 0.
        @param clock: the time now, in seconds.
        @param capacity: the most buckets kept at once, at least 1.
        @param burst: the bucket's size; C{rate} by default, and never less
            than one token (a bucket smaller than one connection would
            refuse everything).
        """
        self._interval = 1.0 / rate
        self._burst = max(1.0, rate if burst is None else burst)
        # A connection is allowed while the debt after it stays within the
        # bucket: debt + interval <= burst * interval.
        self._tolerance = (self._burst - 1.0) * self._interval
        self._clock = clock
        self.capacity = capacity
        self._full: OrderedDict[int, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._full)

    def tokens(self, key: int) -> float:
        """The tokens C{key} has now (for tests and the status page)."""
        now = self._clock()
        full = self._full.get(key, now)
        return max(0.0, self._burst - max(0.0, full - now) / self._interval)

    def allow(self, key: int) -> bool:
        """Take one token from C{key}'s bucket, if it has one."""
        now = self._clock()
        table = self._full
        # Drop the buckets that are full again, oldest update first; the
        # first one not yet full stops the sweep (see the class docstring
        # for why that still bounds the table's age).
        while table:
            oldest, full = next(iter(table.items()))
            if full > now:
                break
            del table[oldest]
        full = max(table.get(key, now), now)
        # The slack absorbs float rounding in the sums of intervals, so that
        # a connection exactly when a token is back is allowed.
        if full - now > self._tolerance + self._interval * 1e-9:
            return False
        table[key] = full + self._interval
        table.move_to_end(key)
        if len(table) > self.capacity:
            table.popitem(last=False)
        return True


def _seconds(clock: Callable[[], float] | IReactorTime) -> Callable[[], float]:
    if IReactorTime.providedBy(clock):
        return clock.seconds
    return clock


class Admission:
    """
    A service's admission decisions: L{admit} for each new connection.
    """

    def __init__(
        self,
        settings: AdmissionSettings,
        clock: Callable[[], float] | IReactorTime,
    ) -> None:
        """
        @param clock: a callable giving the time in seconds, or anything
            providing L{IReactorTime} (the reactor, a C{Clock}).
        """
        self._clock = _seconds(clock)
        self._concurrency = ConcurrencyCounter(0)
        self._rate: RateLimiter | None = None
        self._rateSettings: tuple[float, int] | None = None
        self.configure(settings)

    def configure(self, settings: AdmissionSettings) -> None:
        """
        Apply new rules (a reload). The concurrency counts of live
        connections are kept, so their tickets still release correctly; a
        changed rate starts every source from a full bucket.
        """
        self.settings = settings
        self._allow = NetworkSet(settings.allow)
        self._deny = NetworkSet(settings.deny)
        self._concurrency.limit = settings.maxConnectionsPerSource
        rateSettings = (settings.maxConnectionRatePerSource, settings.rateTableSize)
        if rateSettings != self._rateSettings:
            self._rateSettings = rateSettings
            self._rate = (
                RateLimiter(
                    settings.maxConnectionRatePerSource,
                    self._clock,
                    settings.rateTableSize,
                )
                if settings.maxConnectionRatePerSource
                else None
            )

    @property
    def concurrency(self) -> ConcurrencyCounter:
        """The live per-source counts."""
        return self._concurrency

    @property
    def rate(self) -> RateLimiter | None:
        """The rate buckets, C{None} when the rate is not limited."""
        return self._rate

    def permitted(self, ip: IP) -> bool:
        """Whether the address lists let C{ip} in (deny wins over allow)."""
        if ip in self._deny:
            return False
        return not self._allow or ip in self._allow

    def admit(self, address: IAddress | str | None) -> Refusal | Ticket:
        """
        Decide on a new connection from C{address} (see L{clientIP} for what
        it may be). A L{Ticket} must be released when the connection closes.
        """
        ip = clientIP(address)
        if ip is None:
            return Ticket(None, 0, "unix")
        source = str(ip)
        if not self.permitted(ip):
            return Refusal(DENIED, source)
        key = sourceKey(ip)
        if self._rate is not None and not self._rate.allow(key):
            return Refusal(RATE_LIMIT, source)
        if not self._concurrency.acquire(key):
            return Refusal(PER_SOURCE_LIMIT, source)
        return Ticket(self._concurrency, key, source)
