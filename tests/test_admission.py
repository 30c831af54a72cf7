"""
Tests for L{gateway.admission}: address lists, per-source limits, the rate
buckets, on fake addresses and a L{Clock}. (Refusals are logged by
L{gateway.refusals}, tested in L{tests.test_refusals}.)
"""

import ipaddress
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.admission import (
    DEFAULT_RATE_TABLE_SIZE,
    DENIED,
    PER_SOURCE_LIMIT,
    RATE_LIMIT,
    Admission,
    AdmissionSettings,
    ConcurrencyCounter,
    InvalidRule,
    NetworkSet,
    RateLimiter,
    Refusal,
    Ticket,
    clientIP,
    parseNetwork,
    parseNetworks,
    sourceKey,
)

# Sources for the properties: two IPv4 addresses, one of them also in its
# mapped form, and two addresses of one IPv6 /64.
ADDRESSES = [
    "192.0.2.7",
    "::ffff:192.0.2.7",
    "192.0.2.8",
    "2001:db8:0:1::1",
    "2001:db8:0:1::2",
]


def ip(text):
    return ipaddress.ip_address(text)


def net(text):
    return ipaddress.ip_network(text)


def admission(clock=None, **settings):
    return Admission(AdmissionSettings(**settings), clock or Clock())


class ClientIPTests(SynchronousTestCase):
    """
    L{clientIP} turns what the accept path has into the address rules see.
    """

    def test_ipv4(self):
        self.assertEqual(clientIP("192.0.2.7"), ip("192.0.2.7"))
        self.assertEqual(clientIP(IPv4Address("TCP", "192.0.2.7", 1)), ip("192.0.2.7"))

    def test_mapped(self):
        """
        An IPv4 client seen on an IPv6 socket is the IPv4 client (SPEC §3).
        """
        self.assertEqual(clientIP("::ffff:192.0.2.7"), ip("192.0.2.7"))
        self.assertEqual(
            clientIP(IPv6Address("TCP", "::ffff:192.0.2.7", 1)), ip("192.0.2.7")
        )

    def test_ipv6(self):
        self.assertEqual(
            clientIP(IPv6Address("TCP", "2001:db8::7", 1)), ip("2001:db8::7")
        )

    def test_zone(self):
        """
        A link-local address's zone id is not part of the address.
        """
        self.assertEqual(clientIP("fe80::1%eth0"), ip("fe80::1"))

    def test_unix(self):
        """
        A UNIX-socket client has no address (SPEC §9: no rule applies).
        """
        self.assertIsNone(clientIP(UNIXAddress(b"/run/gateway.sock")))
        self.assertIsNone(clientIP(UNIXAddress(None)))
        self.assertIsNone(clientIP(None))

    def test_notAnAddress(self):
        self.assertRaises(ValueError, clientIP, "example.com")


class SourceKeyTests(SynchronousTestCase):
    """
    L{sourceKey}: IPv4 addresses are their own source, IPv6 by /64.
    """

    def test_ipv6Slash64(self):
        """
        Every address of one /64 is one source; the next /64 is another.
        """
        first = sourceKey(ip("2001:db8:1:2::1"))
        self.assertEqual(first, sourceKey(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")))
        self.assertEqual(first, sourceKey(ip("2001:db8:1:2::")))
        self.assertNotEqual(first, sourceKey(ip("2001:db8:1:3::")))
        self.assertNotEqual(first, sourceKey(ip("2001:db8:1:1:ffff:ffff:ffff:ffff")))

    def test_ipv4PerAddress(self):
        self.assertNotEqual(sourceKey(ip("10.0.0.1")), sourceKey(ip("10.0.0.2")))

    def test_familiesApart(self):
        """
        No IPv4 key equals an IPv6 key: C{0.0.0.1} and the /64 numbered 1
        (C{0:0:0:1::}) are different sources.
        """
        self.assertNotEqual(sourceKey(ip("0.0.0.1")), sourceKey(ip("0:0:0:1::")))
        self.assertNotEqual(sourceKey(ip("0.0.0.0")), sourceKey(ip("::")))

    @given(st.ip_addresses(v=4), st.ip_addresses(v=6))
    def test_familiesNeverMeet(self, v4, v6):
        self.assertNotEqual(sourceKey(v4), sourceKey(v6))

    @given(st.ip_addresses(v=6), st.ip_addresses(v=6))
    def test_sameKeyIffSame64(self, a, b):
        same64 = int(a) >> 64 == int(b) >> 64
        self.assertEqual(sourceKey(a) == sourceKey(b), same64)


class ParseNetworkTests(SynchronousTestCase):
    """
    L{parseNetwork} reads C{--allow}/C{--deny} values, refusing in one line.
    """

    def test_cidrs(self):
        self.assertEqual(parseNetwork("--allow", "10.0.0.0/8"), net("10.0.0.0/8"))
        self.assertEqual(parseNetwork("--allow", "2001:db8::/32"), net("2001:db8::/32"))
        self.assertEqual(parseNetwork("--allow", "0.0.0.0/0"), net("0.0.0.0/0"))
        self.assertEqual(parseNetwork("--allow", "::/0"), net("::/0"))

    def test_bareAddress(self):
        """
        An address alone is that one address.
        """
        self.assertEqual(parseNetwork("--deny", "192.0.2.7"), net("192.0.2.7/32"))
        self.assertEqual(parseNetwork("--deny", "2001:db8::7"), net("2001:db8::7/128"))

    def test_blanksAround(self):
        self.assertEqual(parseNetwork("--deny", " 10.0.0.0/8 "), net("10.0.0.0/8"))

    def test_hostBits(self):
        """
        C{10.0.0.1/8} is refused, naming both things it might have meant.
        """
        error = self.assertRaises(InvalidRule, parseNetwork, "--allow", "10.0.0.1/8")
        self.assertEqual(
            str(error),
            "--allow '10.0.0.1/8': host bits set; write 10.0.0.0/8 for the "
            "network or 10.0.0.1/32 for the one address",
        )
        error = self.assertRaises(InvalidRule, parseNetwork, "--deny", "2001:db8::1/32")
        self.assertIn("write 2001:db8::/32", str(error))
        self.assertIn("2001:db8::1/128", str(error))

    def test_garbage(self):
        for text in ("example.com", "10.0.0.0/33", "10.0.0.0/-1", "1.2.3", "::/129"):
            error = self.assertRaises(InvalidRule, parseNetwork, "--allow", text)
            self.assertEqual(
                str(error),
                f"--allow {text!r}: not an IP address or CIDR such as "
                "10.0.0.0/8 or 2001:db8::/32",
            )
            self.assertNotIn("\n", str(error))

    def test_empty(self):
        error = self.assertRaises(InvalidRule, parseNetwork, "--allow", "")
        self.assertIn("empty", str(error))

    def test_zone(self):
        error = self.assertRaises(InvalidRule, parseNetwork, "--allow", "fe80::%eth0")
        self.assertIn("zone id", str(error))

    def test_mappedNetwork(self):
        """
        A rule written in IPv4-mapped form is the IPv4 rule it maps, since
        mapped clients are matched as IPv4.
        """
        self.assertEqual(
            parseNetwork("--deny", "::ffff:10.0.0.0/104"), net("10.0.0.0/8")
        )
        self.assertEqual(
            parseNetwork("--deny", "::ffff:192.0.2.7"), net("192.0.2.7/32")
        )
        self.assertEqual(parseNetwork("--deny", "::ffff:0:0/96"), net("0.0.0.0/0"))
        # Wider than the mapped range: an IPv6 rule.
        self.assertEqual(parseNetwork("--deny", "::/95"), net("::/95"))

    def test_several(self):
        self.assertEqual(
            parseNetworks("--allow", ["10.0.0.0/8", "192.0.2.7"]),
            (net("10.0.0.0/8"), net("192.0.2.7/32")),
        )
        self.assertRaises(InvalidRule, parseNetworks, "--allow", ["10.0.0.0/8", "x"])


class NetworkSetTests(SynchronousTestCase):
    """
    L{NetworkSet} membership, at the edges of each network.
    """

    def test_edges(self):
        """
        A network's own address and its broadcast address are in it; the
        addresses either side of it are not.
        """
        networks = NetworkSet([net("192.0.2.0/24"), net("2001:db8::/64")])
        self.assertIn(ip("192.0.2.0"), networks)
        self.assertIn(ip("192.0.2.255"), networks)
        self.assertNotIn(ip("192.0.1.255"), networks)
        self.assertNotIn(ip("192.0.3.0"), networks)
        self.assertIn(ip("2001:db8::"), networks)
        self.assertIn(ip("2001:db8::ffff:ffff:ffff:ffff"), networks)
        self.assertNotIn(ip("2001:db8:0:1::"), networks)
        self.assertNotIn(ip("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"), networks)

    def test_everything(self):
        """
        C{/0} holds every address of its family and none of the other.
        """
        networks = NetworkSet([net("0.0.0.0/0")])
        self.assertIn(ip("0.0.0.0"), networks)
        self.assertIn(ip("255.255.255.255"), networks)
        self.assertNotIn(ip("::"), networks)
        self.assertNotIn(ip("::ffff:ffff"), networks)
        networks = NetworkSet([net("::/0")])
        self.assertIn(ip("::"), networks)
        self.assertIn(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), networks)
        self.assertNotIn(ip("10.0.0.1"), networks)

    def test_single(self):
        """
        A /32 and a /128 hold one address.
        """
        networks = NetworkSet([net("192.0.2.7/32"), net("2001:db8::7/128")])
        self.assertIn(ip("192.0.2.7"), networks)
        self.assertNotIn(ip("192.0.2.6"), networks)
        self.assertNotIn(ip("192.0.2.8"), networks)
        self.assertIn(ip("2001:db8::7"), networks)
        self.assertNotIn(ip("2001:db8::6"), networks)
        self.assertNotIn(ip("2001:db8::8"), networks)

    def test_empty(self):
        self.assertFalse(NetworkSet([]))
        self.assertNotIn(ip("10.0.0.1"), NetworkSet([]))
        self.assertTrue(NetworkSet([net("::/0")]))

    def test_overlapping(self):
        """
        Overlapping and adjacent networks merge without losing an edge.
        """
        networks = NetworkSet(
            [net("10.0.0.0/8"), net("10.1.0.0/16"), net("11.0.0.0/8")]
        )
        self.assertIn(ip("11.255.255.255"), networks)
        self.assertIn(ip("10.1.2.3"), networks)
        self.assertNotIn(ip("12.0.0.0"), networks)
        self.assertNotIn(ip("9.255.255.255"), networks)

    @given(
        st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=40),
        st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=40),
    )
    def test_sameAsEveryNetwork(self, specs, probes):
        """
        Membership is the same as asking each network in turn.
        """
        networks = [
            ipaddress.IPv4Network((base, length), strict=False)
            for base, length in specs
        ]
        merged = NetworkSet(networks)
        for value in probes:
            address = ipaddress.IPv4Address(value)
            self.assertEqual(
                address in merged, any(address in n for n in networks), address
            )
            # Each network's own edges too.
        for network in networks:
            self.assertIn(network.network_address, merged)
            self.assertIn(network.broadcast_address, merged)

    def test_thousand(self):
        """
        1,000 networks (the size the lookup was measured at) agree with
        asking each of them, on their edges and just outside.
        """
        networks = [
            ipaddress.IPv4Network(((index * 7919 * 256) % 2**32, 24))
            for index in range(1, 1001)
        ]
        merged = NetworkSet(networks)
        for network in networks[::10]:
            for address in (
                network.network_address,
                network.broadcast_address,
                network.network_address - 1,
                network.broadcast_address + 1,
            ):
                self.assertEqual(address in merged, any(address in n for n in networks))


class AddressListTests(SynchronousTestCase):
    """
    C{--allow} and C{--deny} in L{Admission.admit}.
    """

    def test_noLists(self):
        self.assertIsInstance(admission().admit("203.0.113.9"), Ticket)

    def test_denyWinsOverAllow(self):
        """
        An address in both lists is refused.
        """
        rules = admission(allow=(net("10.0.0.0/8"),), deny=(net("10.1.0.0/16"),))
        self.assertEqual(rules.admit("10.1.2.3"), Refusal(DENIED, "10.1.2.3"))
        self.assertIsInstance(rules.admit("10.2.0.1"), Ticket)

    def test_allowOnly(self):
        """
        With an allow list, an address outside every allowed network is
        refused as C{denied}.
        """
        rules = admission(allow=(net("192.0.2.0/24"), net("2001:db8::/32")))
        self.assertIsInstance(rules.admit("192.0.2.255"), Ticket)
        self.assertIsInstance(rules.admit("2001:db8:ffff::1"), Ticket)
        self.assertEqual(rules.admit("192.0.3.0").reason, DENIED)
        self.assertEqual(rules.admit("2001:db9::").reason, DENIED)

    def test_mappedMatchesIPv4Rules(self):
        """
        An IPv4-mapped client is matched by IPv4 rules, and logged as IPv4.
        """
        rules = admission(deny=(net("192.0.2.0/24"),))
        self.assertEqual(
            rules.admit(IPv6Address("TCP", "::ffff:192.0.2.7", 5)),
            Refusal(DENIED, "192.0.2.7"),
        )
        rules = admission(allow=(net("192.0.2.0/24"),))
        self.assertIsInstance(rules.admit("::ffff:192.0.2.7"), Ticket)

    def test_unixExempt(self):
        """
        UNIX-socket clients are not subject to address rules, nor to the
        per-source limits.
        """
        rules = admission(
            allow=(net("192.0.2.0/24"),),
            deny=(net("0.0.0.0/0"), net("::/0")),
            maxConnectionsPerSource=1,
            maxConnectionRatePerSource=1,
        )
        for _ in range(5):
            self.assertIsInstance(rules.admit(UNIXAddress(b"/run/g.sock")), Ticket)

    def test_deniedLeavesNoState(self):
        """
        A refused address costs no table entry, so a denied flood cannot
        grow memory.
        """
        rules = admission(
            deny=(net("10.0.0.0/8"),),
            maxConnectionsPerSource=5,
            maxConnectionRatePerSource=5,
        )
        for value in range(1000):
            rules.admit(str(ipaddress.IPv4Address(0x0A000000 + value)))
        self.assertEqual(len(rules.concurrency), 0)
        self.assertEqual(len(rules.rate), 0)


class ConcurrencyTests(SynchronousTestCase):
    """
    C{--max-connections-per-source} and the tickets that give counts back.
    """

    def test_limit(self):
        rules = admission(maxConnectionsPerSource=2)
        first, second = rules.admit("192.0.2.7"), rules.admit("192.0.2.7")
        self.assertIsInstance(second, Ticket)
        self.assertEqual(
            rules.admit("192.0.2.7"), Refusal(PER_SOURCE_LIMIT, "192.0.2.7")
        )
        # Another source is not affected.
        self.assertIsInstance(rules.admit("192.0.2.8"), Ticket)
        first.release()
        self.assertIsInstance(rules.admit("192.0.2.7"), Ticket)

    def test_releaseOnce(self):
        """
        Releasing a ticket twice gives back one count only: the second call
        cannot free a slot another live connection holds.
        """
        rules = admission(maxConnectionsPerSource=2)
        first, second = rules.admit("192.0.2.7"), rules.admit("192.0.2.7")
        self.assertFalse(first.released)
        first.release()
        first.release()
        self.assertTrue(first.released)
        self.assertEqual(rules.concurrency.count(sourceKey(ip("192.0.2.7"))), 1)
        self.assertIsInstance(rules.admit("192.0.2.7"), Ticket)
        self.assertEqual(rules.admit("192.0.2.7").reason, PER_SOURCE_LIMIT)
        self.assertFalse(second.released)

    def test_ipv6By64(self):
        """
        Two addresses of one /64 share a count; another /64 has its own.
        """
        rules = admission(maxConnectionsPerSource=1)
        self.assertIsInstance(rules.admit("2001:db8:0:1::1"), Ticket)
        self.assertEqual(rules.admit("2001:db8:0:1::2").reason, PER_SOURCE_LIMIT)
        self.assertIsInstance(rules.admit("2001:db8:0:2::1"), Ticket)

    def test_mappedSharesIPv4Count(self):
        rules = admission(maxConnectionsPerSource=1)
        self.assertIsInstance(rules.admit("192.0.2.7"), Ticket)
        self.assertEqual(rules.admit("::ffff:192.0.2.7").reason, PER_SOURCE_LIMIT)

    def test_entriesRemoved(self):
        """
        A source whose last connection closed has no entry left.
        """
        rules = admission(maxConnectionsPerSource=3)
        tickets = [rules.admit(f"10.0.{n // 256}.{n % 256}") for n in range(1000)]
        self.assertEqual(len(rules.concurrency), 1000)
        for ticket in tickets:
            ticket.release()
        self.assertEqual(len(rules.concurrency), 0)

    def test_countedWhenOff(self):
        """
        With the limit off, connections are still counted, so that turning
        it on at a reload sees the live ones.
        """
        rules = admission()
        tickets = [rules.admit("192.0.2.7") for _ in range(3)]
        rules.configure(AdmissionSettings(maxConnectionsPerSource=3))
        self.assertEqual(rules.admit("192.0.2.7").reason, PER_SOURCE_LIMIT)
        tickets[0].release()
        self.assertIsInstance(rules.admit("192.0.2.7"), Ticket)

    @given(
        st.integers(1, 3),
        st.lists(
            st.tuples(st.booleans(), st.sampled_from(ADDRESSES), st.integers(0, 9)),
            max_size=80,
        ),
    )
    def test_countsMatchLiveTickets(self, limit, steps):
        """
        Whatever the order of connections and closes (each close possibly
        repeated), each source's count is its live tickets, never above the
        limit, and nothing is left once every ticket is released.
        """

        def key(address):
            return sourceKey(clientIP(address))

        def held(source):
            return sum(1 for address, _ in live if key(address) == source)

        rules = admission(maxConnectionsPerSource=limit)
        live = []
        for connect, address, pick in steps:
            if connect or not live:
                decision = rules.admit(address)
                if held(key(address)) < limit:
                    self.assertIsInstance(decision, Ticket)
                    live.append((address, decision))
                else:
                    self.assertEqual(decision.reason, PER_SOURCE_LIMIT)
            else:
                _, ticket = live.pop(pick % len(live))
                ticket.release()
                ticket.release()
            for address in ADDRESSES:
                self.assertEqual(
                    rules.concurrency.count(key(address)), held(key(address))
                )
        for _, ticket in live:
            ticket.release()
        self.assertEqual(len(rules.concurrency), 0)

    def test_counterAlone(self):
        counter = ConcurrencyCounter(1)
        self.assertTrue(counter.acquire(1))
        self.assertFalse(counter.acquire(1))
        counter.release(1)
        self.assertEqual(len(counter), 0)
        # A release with nothing held does not go negative.
        counter.release(1)
        self.assertEqual(counter.count(1), 0)


class RateTests(SynchronousTestCase):
    """
    C{--max-connection-rate-per-source}: a token bucket holding R tokens,
    refilled at R a second.
    """

    def test_burst(self):
        """
        A fresh source may open R connections at once, not R + 1.
        """
        clock = Clock()
        rules = admission(clock, maxConnectionRatePerSource=5)
        for _ in range(5):
            self.assertIsInstance(rules.admit("192.0.2.7"), Ticket)
        self.assertEqual(rules.admit("192.0.2.7"), Refusal(RATE_LIMIT, "192.0.2.7"))
        # Others have their own bucket.
        self.assertIsInstance(rules.admit("192.0.2.8"), Ticket)

    def test_fractionalRefill(self):
        """
        Half a token is not a connection; the whole one is, exactly when it
        is back (R=4: one token each 0.25 s).
        """
        clock = Clock()
        limiter = RateLimiter(4, clock.seconds)
        for _ in range(4):
            self.assertTrue(limiter.allow(1))
        self.assertFalse(limiter.allow(1))
        clock.advance(0.125)
        self.assertEqual(limiter.tokens(1), 0.5)
        self.assertFalse(limiter.allow(1))
        clock.advance(0.125)
        self.assertTrue(limiter.allow(1))
        self.assertFalse(limiter.allow(1))

    def test_boundaryRounding(self):
        """
        With a rate whose interval has no exact binary form (R=10, 0.1 s),
        a token is back exactly one interval later, not a rounding error
        after.
        """
        clock = Clock()
        limiter = RateLimiter(10, clock.seconds)
        for _ in range(10):
            self.assertTrue(limiter.allow(1))
        for _ in range(30):
            self.assertFalse(limiter.allow(1))
            clock.advance(0.1)
            self.assertTrue(limiter.allow(1))

    def test_refillCapped(self):
        """
        A long quiet spell refills the bucket to R, no further.
        """
        clock = Clock()
        limiter = RateLimiter(3, clock.seconds)
        self.assertTrue(limiter.allow(1))
        clock.advance(3600)
        self.assertEqual(limiter.tokens(1), 3)
        for _ in range(3):
            self.assertTrue(limiter.allow(1))
        self.assertFalse(limiter.allow(1))

    def test_slowRate(self):
        """
        A rate under one a second still admits one connection, then one per
        1/R seconds (R=0.5: one each 2 s).
        """
        clock = Clock()
        limiter = RateLimiter(0.5, clock.seconds)
        self.assertTrue(limiter.allow(1))
        clock.advance(1.5)
        self.assertFalse(limiter.allow(1))
        clock.advance(0.5)
        self.assertTrue(limiter.allow(1))

    def test_rateBeforeConcurrency(self):
        """
        A source at its concurrency limit still spends a token on each
        attempt, so one retrying in a loop is rate limited too.
        """
        clock = Clock()
        rules = admission(
            clock, maxConnectionsPerSource=1, maxConnectionRatePerSource=3
        )
        self.assertIsInstance(rules.admit("192.0.2.7"), Ticket)
        self.assertEqual(rules.admit("192.0.2.7").reason, PER_SOURCE_LIMIT)
        self.assertEqual(rules.admit("192.0.2.7").reason, PER_SOURCE_LIMIT)
        self.assertEqual(rules.admit("192.0.2.7").reason, RATE_LIMIT)

    def test_ipv6By64(self):
        clock = Clock()
        rules = admission(clock, maxConnectionRatePerSource=1)
        self.assertIsInstance(rules.admit("2001:db8:0:1::1"), Ticket)
        self.assertEqual(rules.admit("2001:db8:0:1::ffff").reason, RATE_LIMIT)
        self.assertIsInstance(rules.admit("2001:db8:0:2::1"), Ticket)

    def test_fullBucketsForgotten(self):
        """
        Buckets that are full again are dropped, oldest update first: the
        table only holds sources that connected in the last R/R = 1 second.
        """
        clock = Clock()
        limiter = RateLimiter(2, clock.seconds)
        limiter.allow(1)
        limiter.allow(1)
        limiter.allow(2)
        self.assertEqual(len(limiter), 2)
        clock.advance(0.5)
        limiter.allow(3)
        # Source 2 is full again but waits behind source 1, updated before
        # it and full again only at 1.0 s.
        self.assertEqual(len(limiter), 3)
        clock.advance(0.5)
        limiter.allow(4)
        self.assertEqual(len(limiter), 1)
        self.assertEqual(limiter.tokens(1), 2)

    def test_capacityEvictsOldest(self):
        """
        Past its capacity the table drops the bucket updated longest ago,
        which then starts again full.
        """
        clock = Clock()
        limiter = RateLimiter(1, clock.seconds, capacity=2)
        self.assertTrue(limiter.allow(1))
        self.assertTrue(limiter.allow(2))
        self.assertFalse(limiter.allow(1))
        self.assertTrue(limiter.allow(3))
        self.assertEqual(len(limiter), 2)
        self.assertEqual(limiter.tokens(1), 1)
        self.assertEqual(limiter.tokens(2), 0)

    @given(
        st.sampled_from([1, 2, 4, 8]),
        st.lists(st.tuples(st.integers(0, 16), st.integers(0, 3)), max_size=60),
    )
    def test_sameAsTokenBucket(self, rate, steps):
        """
        The stored-deadline buckets decide exactly as a textbook token
        bucket does (times in eighths of a second and rates that are
        powers of two keep both sides' arithmetic exact).
        """
        clock = Clock()
        limiter = RateLimiter(rate, clock.seconds)
        tokens, last = {}, {}
        for eighths, key in steps:
            clock.advance(eighths / 8)
            now = clock.seconds()
            held = min(rate, tokens.get(key, rate) + (now - last.get(key, now)) * rate)
            expected = held >= 1
            tokens[key], last[key] = held - 1 if expected else held, now
            self.assertEqual(limiter.allow(key), expected)

    def test_hundredThousandSources(self):
        """
        100,000 distinct sources connecting once each, all in the same
        instant (the worst case: no bucket is full again yet), leave the
        table at its capacity; its memory, measured, stays under 200 bytes
        per bucket (about 170 measured).
        """
        clock = Clock()
        capacity = 10_000
        rules = admission(
            clock,
            maxConnectionsPerSource=10,
            maxConnectionRatePerSource=10,
            rateTableSize=capacity,
        )
        addresses = [str(ipaddress.IPv4Address(0x0A000000 + n)) for n in range(100_000)]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for address in addresses:
                rules.admit(address).release()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertEqual(len(rules.rate), capacity)
        self.assertEqual(len(rules.concurrency), 0)
        self.assertLess(grown, 200 * capacity)

    def test_hundredThousandSourcesOverTime(self):
        """
        The same flood spread over time (one new source each millisecond)
        keeps only the buckets not yet full again: R=10 refills one token
        in 0.1 s, so about 100 of them.
        """
        clock = Clock()
        rules = admission(clock, maxConnectionRatePerSource=10)
        peak = 0
        for n in range(100_000):
            rules.admit(str(ipaddress.IPv4Address(0x0A000000 + n))).release()
            peak = max(peak, len(rules.rate))
            clock.advance(0.001)
        # 0.1 s / 1 ms, plus one for the source just added.
        self.assertLessEqual(peak, 101)

    def test_defaultCapacity(self):
        self.assertEqual(AdmissionSettings().rateTableSize, DEFAULT_RATE_TABLE_SIZE)


class SettingsTests(SynchronousTestCase):
    def test_negative(self):
        error = self.assertRaises(
            InvalidRule, AdmissionSettings, maxConnectionsPerSource=-1
        )
        self.assertIn("--max-connections-per-source", str(error))
        for rate in (-1, float("nan"), float("inf")):
            error = self.assertRaises(
                InvalidRule, AdmissionSettings, maxConnectionRatePerSource=rate
            )
            self.assertIn("--max-connection-rate-per-source", str(error))

    def test_reloadKeepsCounts(self):
        """
        New rules at a reload keep the live connections' counts, so tickets
        from before it still release.
        """
        rules = admission(maxConnectionsPerSource=1)
        ticket = rules.admit("192.0.2.7")
        rules.configure(
            AdmissionSettings(maxConnectionsPerSource=1, deny=(net("10.0.0.0/8"),))
        )
        self.assertEqual(rules.admit("192.0.2.7").reason, PER_SOURCE_LIMIT)
        self.assertEqual(rules.admit("10.0.0.1").reason, DENIED)
        ticket.release()
        self.assertIsInstance(rules.admit("192.0.2.7"), Ticket)

    def test_reloadRate(self):
        """
        A reload that keeps the rate keeps the buckets (a reload is no way
        round the limit); one that changes it starts them full.
        """
        clock = Clock()
        rules = admission(clock, maxConnectionRatePerSource=1)
        rules.admit("192.0.2.7")
        rules.configure(
            AdmissionSettings(maxConnectionRatePerSource=1, deny=(net("10.0.0.0/8"),))
        )
        self.assertEqual(rules.admit("192.0.2.7").reason, RATE_LIMIT)
        rules.configure(AdmissionSettings(maxConnectionRatePerSource=2))
        self.assertIsInstance(rules.admit("192.0.2.7"), Ticket)
        rules.configure(AdmissionSettings())
        self.assertIsNone(rules.rate)
        for _ in range(5):
            self.assertIsInstance(rules.admit("192.0.2.7"), Ticket)

    def test_reactorOrCallable(self):
        """
        The clock may be anything with C{seconds} (a reactor) or a callable.
        """
        now = [0.0]
        rules = Admission(
            AdmissionSettings(maxConnectionRatePerSource=1), lambda: now[0]
        )
        self.assertIsInstance(rules.admit("192.0.2.7"), Ticket)
        self.assertEqual(rules.admit("192.0.2.7").reason, RATE_LIMIT)
        now[0] = 1.0
        self.assertIsInstance(rules.admit("192.0.2.7"), Ticket)
