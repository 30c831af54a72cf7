"""
Tests for L{gateway.codec}: every framing, whole and in every chunking.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.codec import FRAMINGS, FramingError, framing
from gateway.codec._base import MALFORMED, TOO_LONG, TRUNCATED, UNENCODABLE
from gateway.codec.delimited import LONG_MESSAGE

# Small enough that hypothesis reaches it, large enough to hold int8's limit.
LIMIT = 300


def decodeAll(codec, data: bytes, cuts: list[int]):
    """
    Feed C{data} cut at C{cuts} the way a proxy does: rest + next chunk.
    """
    messages = []
    rest = b""
    previous = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        got, rest = codec.decode(rest + data[previous:cut])
        messages.extend(got)
        previous = cut
    return messages, rest


def encodable(name: str):
    """
    Lists of payloads the framing C{name} can carry within L{LIMIT}.
    """
    payload = st.binary(max_size=LIMIT)
    if name == "lf":
        payload = payload.filter(lambda p: b"\n" not in p)
    elif name == "crlf":
        payload = payload.filter(lambda p: b"\r\n" not in p)
    elif name == "int8":
        payload = st.binary(max_size=255)
    return st.lists(payload, max_size=20)


class RoundTripTests(SynchronousTestCase):
    """
    decode(encode(messages)) == messages, however the bytes are chunked.
    """

    def check(self, name, messages, cuts):
        codec = framing(name, LIMIT)
        data = codec.encode(messages)
        decoded, rest = decodeAll(codec, data, [c % (len(data) + 1) for c in cuts])
        self.assertEqual((decoded, rest), (messages, b""))

    def roundTrip(name):  # noqa: N805 - builds one test per framing
        @settings(max_examples=150, deadline=None)
        @given(data=st.data(), cuts=st.lists(st.integers(min_value=0), max_size=8))
        def test(self, data, cuts):
            self.check(name, data.draw(encodable(name)), cuts)

        return test

    test_lf = roundTrip("lf")
    test_crlf = roundTrip("crlf")
    test_int8 = roundTrip("int8")
    test_int16 = roundTrip("int16")
    test_int32 = roundTrip("int32")
    test_netstring = roundTrip("netstring")
    del roundTrip

    def test_byteByByte(self):
        """
        Every framing yields the same messages when fed one byte at a time.
        """
        messages = [b"", b"hello", b"x" * 200, b"", b"\x00\xff"]
        for name in FRAMINGS:
            codec = framing(name, LIMIT)
            data = codec.encode(messages)
            decoded, rest = decodeAll(codec, data, list(range(len(data))))
            self.assertEqual((decoded, rest), (messages, b""), name)


class ArbitraryInputTests(SynchronousTestCase):
    """
    Any bytes at all either decode or raise L{FramingError}, nothing else.
    """

    def survives(name):  # noqa: N805 - builds one test per framing
        @settings(max_examples=200, deadline=None)
        @given(data=st.binary(max_size=2 * LIMIT), cuts=st.lists(st.integers(0)))
        def test(self, data, cuts):
            codec = framing(name, LIMIT)
            try:
                messages, rest = decodeAll(
                    codec, data, [c % (len(data) + 1) for c in cuts]
                )
                messages += codec.finish(rest)
            except FramingError as error:
                self.assertIn(error.reason, (TOO_LONG, MALFORMED, TRUNCATED))
                messages = error.messages
            for message in messages:
                self.assertLessEqual(len(message), LIMIT)

        return test

    test_lf = survives("lf")
    test_crlf = survives("crlf")
    test_int8 = survives("int8")
    test_int16 = survives("int16")
    test_int32 = survives("int32")
    test_netstring = survives("netstring")
    del survives


class DelimitedTests(SynchronousTestCase):
    def test_lf(self):
        codec = framing("lf", LIMIT)
        self.assertEqual(codec.decode(b"a\n\nb\nrest"), ([b"a", b"", b"b"], b"rest"))
        self.assertEqual(codec.encode([b"a", b"", b"b"]), b"a\n\nb\n")
        self.assertEqual(codec.encode([]), b"")

    def test_lfKeepsCarriageReturn(self):
        """
        C{lf} is exact: a CR before the LF belongs to the payload.
        """
        self.assertEqual(framing("lf", LIMIT).decode(b"a\r\n"), ([b"a\r"], b""))

    def test_crlf(self):
        codec = framing("crlf", LIMIT)
        self.assertEqual(codec.decode(b"a\r\nb\nc\r\nd\r"), ([b"a", b"b\nc"], b"d\r"))
        self.assertEqual(codec.encode([b"a", b"b\r"]), b"a\r\nb\r\r\n")

    def test_finish(self):
        """
        An unterminated last line is a message; nothing left is none.
        """
        self.assertEqual(framing("lf", LIMIT).finish(b"last"), [b"last"])
        self.assertEqual(framing("lf", LIMIT).finish(b""), [])
        self.assertEqual(framing("crlf", LIMIT).finish(b"last\r"), [b"last"])

    def test_exactlyAtLimit(self):
        codec = framing("lf", LIMIT)
        self.assertEqual(codec.decode(b"x" * LIMIT + b"\n"), ([b"x" * LIMIT], b""))
        self.assertEqual(codec.decode(b"x" * LIMIT), ([], b"x" * LIMIT))

    def test_onePastLimit(self):
        """
        A line one byte too long fails, with the good lines before it kept.
        """
        codec = framing("lf", LIMIT)
        error = self.assertRaises(
            FramingError, codec.decode, b"ok\n" + b"x" * (LIMIT + 1) + b"\nlater\n"
        )
        self.assertEqual((error.reason, error.messages), (TOO_LONG, [b"ok"]))

    def test_unterminatedPastLimit(self):
        """
        A line that is already too long fails before its end arrives.
        """
        codec = framing("lf", LIMIT)
        error = self.assertRaises(
            FramingError, codec.decode, b"ok\n" + b"x" * (LIMIT + 1)
        )
        self.assertEqual((error.reason, error.messages), (TOO_LONG, [b"ok"]))

    @settings(max_examples=100, deadline=None)
    @given(
        lengths=st.lists(st.integers(0, 2 * LONG_MESSAGE), max_size=8),
        name=st.sampled_from(["lf", "crlf"]),
        tail=st.binary(max_size=3),
    )
    def test_longAndShortMessages(self, lengths, name, tail):
        """
        Chunks whose first message is long (found one by one) or short
        (split at once) decode alike: as C{bytes.split} would.
        """
        codec = framing(name, 4 * LONG_MESSAGE)
        data = codec.encode([b"x" * n for n in lengths]) + tail.replace(b"\n", b"")
        parts = data.split(codec.delimiter)
        self.assertEqual(codec.decode(data), (parts[:-1], parts[-1]))

    def test_delimiterAcrossPayloads(self):
        """
        A CR ending one payload and an LF starting the next do not make a
        CRLF inside either: both are carried.
        """
        codec = framing("crlf", LIMIT)
        data = codec.encode([b"a\r", b"\nb"])
        self.assertEqual(data, b"a\r\r\n\nb\r\n")
        self.assertEqual(codec.decode(data), ([b"a\r", b"\nb"], b""))

    def test_unencodable(self):
        for name, bad in [("lf", b"a\nb"), ("crlf", b"a\r\nb")]:
            error = self.assertRaises(
                FramingError, framing(name, LIMIT).encode, [b"ok", bad, b"later"]
            )
            self.assertEqual((error.reason, error.messages), (UNENCODABLE, [b"ok"]))

    def test_encodeWithin(self):
        """
        Given the chunk the payloads were decoded from, C{encode} searches it
        for the delimiter first: a delimiter outside every payload (here in
        an int32 length header of 10) does not refuse them, and one inside a
        payload still does.
        """
        codec = framing("lf", LIMIT)
        int32 = framing("int32", LIMIT)
        ten = b"0123456789"
        chunk = int32.encode([ten, b"x"])
        self.assertIn(b"\n", chunk)
        messages, rest = int32.decode(chunk)
        self.assertEqual(codec.encode(messages, chunk), ten + b"\nx\n")

        bad = int32.encode([b"ok", b"a\nb", b"later"])
        messages, rest = int32.decode(bad)
        error = self.assertRaises(FramingError, codec.encode, messages, bad)
        self.assertEqual((error.reason, error.messages), (UNENCODABLE, [b"ok"]))

    @given(st.lists(st.binary(max_size=20), max_size=20))
    def test_encodeWithinSameAsWithout(self, payloads):
        """
        Searching the source chunk never changes what C{encode} does.
        """
        int32 = framing("int32", LIMIT)
        chunk = int32.encode(payloads)
        for name in ("lf", "crlf"):
            codec = framing(name, LIMIT)
            try:
                expected = codec.encode(payloads)
            except FramingError as error:
                got = self.assertRaises(FramingError, codec.encode, payloads, chunk)
                self.assertEqual(got.messages, error.messages)
            else:
                self.assertEqual(codec.encode(payloads, chunk), expected)


class LengthPrefixedTests(SynchronousTestCase):
    def test_int32(self):
        codec = framing("int32", LIMIT)
        self.assertEqual(codec.encode([b"ab", b""]), b"\0\0\0\2ab\0\0\0\0")
        self.assertEqual(
            codec.decode(b"\0\0\0\2ab\0\0\0\0\0\0"), ([b"ab", b""], b"\0\0")
        )

    def test_int16AndInt8(self):
        self.assertEqual(framing("int16", LIMIT).encode([b"ab"]), b"\0\2ab")
        self.assertEqual(framing("int8", LIMIT).encode([b"ab"]), b"\2ab")

    def test_headerOverLimitRefusedAtOnce(self):
        """
        A length over the limit fails on the header, before any body arrives.
        """
        codec = framing("int32", LIMIT)
        error = self.assertRaises(
            FramingError, codec.decode, b"\0\0\0\1x" + (LIMIT + 1).to_bytes(4, "big")
        )
        self.assertEqual((error.reason, error.messages), (TOO_LONG, [b"x"]))

    def test_overLimitWithItsBody(self):
        """
        A frame over the limit fails even when its whole body is in the chunk.
        """
        codec = framing("int32", LIMIT)
        tooLong = (LIMIT + 1).to_bytes(4, "big") + b"y" * (LIMIT + 1)
        error = self.assertRaises(FramingError, codec.decode, b"\0\0\0\1x" + tooLong)
        self.assertEqual((error.reason, error.messages), (TOO_LONG, [b"x"]))

    def test_encodeNothing(self):
        self.assertEqual(framing("int32", LIMIT).encode([]), b"")

    def test_exactlyAtLimit(self):
        codec = framing("int32", LIMIT)
        frame = LIMIT.to_bytes(4, "big") + b"x" * LIMIT
        self.assertEqual(codec.decode(frame), ([b"x" * LIMIT], b""))

    def test_int8CannotCarry256(self):
        error = self.assertRaises(
            FramingError, framing("int8", LIMIT).encode, [b"ok", b"x" * 256]
        )
        self.assertEqual((error.reason, error.messages), (UNENCODABLE, [b"ok"]))
        self.assertEqual(len(framing("int8", LIMIT).encode([b"x" * 255])), 256)

    def test_int16CannotCarry65536(self):
        codec = framing("int16", 70000)
        error = self.assertRaises(FramingError, codec.encode, [b"x" * 65536])
        self.assertEqual(error.reason, UNENCODABLE)

    def test_truncated(self):
        codec = framing("int32", LIMIT)
        self.assertEqual(codec.finish(b""), [])
        error = self.assertRaises(FramingError, codec.finish, b"\0\0\0\5ab")
        self.assertEqual(error.reason, TRUNCATED)


class NetstringTests(SynchronousTestCase):
    def test_roundTrip(self):
        codec = framing("netstring", LIMIT)
        self.assertEqual(codec.encode([b"hello", b""]), b"5:hello,0:,")
        self.assertEqual(codec.decode(b"5:hello,0:,3:ab"), ([b"hello", b""], b"3:ab"))

    def test_malformed(self):
        codec = framing("netstring", LIMIT)
        for bad in [b"x:", b"05:hello,", b":", b"-1:", b"5:hello!", b"1x"]:
            error = self.assertRaises(FramingError, codec.decode, b"0:," + bad)
            self.assertEqual((error.reason, error.messages), (MALFORMED, [b""]), bad)

    def test_tooLong(self):
        codec = framing("netstring", LIMIT)
        for bad in [b"%d:" % (LIMIT + 1), b"9999", b"99999"]:
            error = self.assertRaises(FramingError, codec.decode, bad)
            self.assertEqual(error.reason, TOO_LONG, bad)

    def test_incompleteLengthWaits(self):
        codec = framing("netstring", LIMIT)
        self.assertEqual(codec.decode(b"30"), ([], b"30"))
        self.assertEqual(codec.decode(b"3:abc"), ([], b"3:abc"))

    def test_truncated(self):
        error = self.assertRaises(
            FramingError, framing("netstring", LIMIT).finish, b"3:ab"
        )
        self.assertEqual(error.reason, TRUNCATED)


class CRLFAtTheLimitTests(SynchronousTestCase):
    def test_carriageReturnWaits(self):
        """
        A crlf message of exactly the limit whose CR arrives in one read and
        LF in the next is accepted, as it is when both arrive together
        (found by tests/fuzz_codec.py).
        """
        codec = framing("crlf", LIMIT)
        message = b"m" * LIMIT
        self.assertEqual(codec.decode(message + b"\r"), ([], message + b"\r"))
        self.assertEqual(codec.decode(message + b"\r\n"), ([message], b""))
        error = self.assertRaises(FramingError, codec.decode, message + b"x")
        self.assertEqual(error.reason, TOO_LONG)
        error = self.assertRaises(FramingError, codec.decode, message + b"x\r")
        self.assertEqual(error.reason, TOO_LONG)
