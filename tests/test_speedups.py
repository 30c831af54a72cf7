"""
Tests for L{gateway.codec.translator} and L{gateway.codec.accelerated}:
translation chunk by chunk, by the pure-Python reference and by the compiled
accelerator, which must agree on every byte, count, error and salvage.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from gateway.codec import FRAMINGS, FramingError, framing
from gateway.codec._base import MALFORMED, TOO_LONG, TRUNCATED, UNENCODABLE
from gateway.codec.accelerated import ACCELERATED
from gateway.codec.translator import Translation, Translator, translator
from tests.wheel import buildWheel

try:
    from gateway.codec import _speedups
except ImportError:
    _speedups = None
else:
    # Configured here too: with GATEWAY_NO_EXTENSIONS=1 the gateway leaves
    # it alone, and these tests still compare it with the reference.
    _speedups.configure(Translation, FramingError)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(FRAMINGS)
NOT_BUILT = (
    "gateway.codec._speedups is not built (the install found no C compiler"
    " or no Python headers): only the pure-Python reference is tested"
)

# Small enough that hypothesis reaches it, large enough to hold int8's limit.
LIMIT = 300


def frame(name: str, payload: bytes) -> bytes:
    """
    C{payload} framed as C{name} whatever it holds: a delimiter inside an
    lf payload, or a length the header cannot hold (cut to its low bytes),
    gives the bad input a careless peer sends.
    """
    size = len(payload)
    if name == "lf":
        return payload + b"\n"
    if name == "crlf":
        return payload + b"\r\n"
    if name == "netstring":
        return b"%d:%s," % (size, payload)
    width = {"int8": 1, "int16": 2, "int32": 4}[name]
    return (size % 256**width).to_bytes(width, "big") + payload


def outcome(result: Translation) -> tuple:
    """
    What the two implementations must agree on: the bytes, the counts and
    the error's reason and detail. (The reference's error also lists the
    good messages; the accelerator makes no object per message.)
    """
    error = result.error
    return (
        result.data,
        result.messages,
        result.payload,
        None if error is None else (error.reason, error.detail),
    )


def reference(source: str, target: str, maxSize: int) -> Translator:
    """
    The pure-Python translator from C{source} to C{target} (framing names).
    """
    return Translator(framing(source, maxSize), framing(target, maxSize))


def translateAll(make, source, target, maxSize, chunks) -> list[tuple]:
    """
    Feed every chunk to a fresh translator (on past errors too: the rest is
    then kept, as it was), then finish: every outcome and the rest after
    each chunk.
    """
    translating = make(source, target, maxSize)
    outcomes = []
    for chunk in chunks:
        outcomes.append((outcome(translating.feed(chunk)), translating.rest))
    outcomes.append((outcome(translating.finish()), translating.rest))
    return outcomes


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    C{data} cut at the offsets C{cuts} (taken modulo its length plus one).
    """
    offsets = sorted({c % (len(data) + 1) for c in cuts})
    pieces = []
    previous = 0
    for offset in [*offsets, len(data)]:
        pieces.append(data[previous:offset])
        previous = offset
    return pieces


class TranslationTestsMixin:
    """
    Translation cases, run against each implementation by the subclasses.
    """

    def make(self, source: str, target: str, maxSize: int):
        raise NotImplementedError()

    def translate(self, source, target, chunks, maxSize=LIMIT):
        """
        Feed C{chunks}, stopping at the first error, then finish when there
        was none: the bytes out, the counts and the error (or None).
        """
        translating = self.make(source, target, maxSize)
        out = []
        messages = payload = 0
        for chunk in [*chunks, None]:
            result = translating.feed(chunk) if chunk is not None else None
            if result is None:
                result = translating.finish()
            out.append(result.data)
            messages += result.messages
            payload += result.payload
            if result.error is not None:
                return b"".join(out), messages, payload, result.error
        return b"".join(out), messages, payload, None

    def test_everyPairWholeAndByteByByte(self):
        """
        Every framing translates into every other, empty messages included,
        fed whole or one byte at a time.
        """
        messages = [b"", b"hello", b"x" * 200, b"", b"\x00\xff:,"]
        for source in NAMES:
            for target in NAMES:
                data = framing(source, LIMIT).encode(messages)
                expected = framing(target, LIMIT).encode(messages)
                counts = (len(messages), sum(map(len, messages)))
                for chunks in [[data], [bytes([b]) for b in data]]:
                    self.assertEqual(
                        self.translate(source, target, chunks),
                        (expected, *counts, None),
                        (source, target, len(chunks)),
                    )

    def test_result(self):
        """
        A result is a L{Translation}: the bytes for the other side, the message
        and payload byte counts, no error.
        """
        result = self.make("lf", "int32", LIMIT).feed(b"ab\n\ncd")
        self.assertIsInstance(result, Translation)
        self.assertEqual(result, (b"\0\0\0\x02ab\0\0\0\0", 2, 2, None))

    def test_nothingYet(self):
        """
        A chunk without a whole message gives empty bytes and keeps the rest.
        """
        translating = self.make("int32", "lf", LIMIT)
        self.assertEqual(translating.feed(b"\0\0\0\x03ab"), (b"", 0, 0, None))
        self.assertEqual(translating.rest, b"\0\0\0\x03ab")
        self.assertEqual(translating.feed(b"c"), (b"abc\n", 1, 3, None))
        self.assertEqual(translating.rest, b"")

    def assertError(self, got, data, messages, payload, reason, detail=None):
        self.assertEqual(got[:3], (data, messages, payload))
        error = got[3]
        self.assertIsInstance(error, FramingError)
        self.assertEqual(error.reason, reason)
        if detail is not None:
            self.assertEqual(error.detail, detail)

    def test_lfExactlyAtLimit(self):
        """
        A line of exactly the limit passes, split anywhere.
        """
        line = b"x" * LIMIT
        for chunks in [[line + b"\n"], [line, b"\n"], [line[:7], line[7:] + b"\n"]]:
            self.assertEqual(
                self.translate("lf", "int16", chunks),
                (b"\x01\x2c" + line, 1, LIMIT, None),
            )

    def test_lfOverLimitBeforeItsNewline(self):
        """
        A line one byte over the limit is refused as soon as that byte
        arrives, without waiting for its newline; the message before it is
        delivered.
        """
        self.assertError(
            self.translate("lf", "int32", [b"ok\n" + b"x" * LIMIT, b"y"]),
            b"\0\0\0\x02ok",
            1,
            2,
            TOO_LONG,
            f"lf message longer than the limit of {LIMIT} bytes and still not"
            " terminated",
        )

    def test_lfOverLimitWithItsNewline(self):
        """
        A whole line over the limit is refused with its length.
        """
        self.assertError(
            self.translate("lf", "int32", [b"a\n" + b"x" * (LIMIT + 1) + b"\nb\n"]),
            b"\0\0\0\x01a",
            1,
            1,
            TOO_LONG,
            f"lf message of {LIMIT + 1} bytes, over the limit of {LIMIT}",
        )

    def test_crlfCarriageReturnAtTheLimitWaits(self):
        """
        A crlf line of exactly the limit and the CR of its terminator waits
        for the LF.
        """
        line = b"x" * LIMIT
        self.assertEqual(
            self.translate("crlf", "lf", [line + b"\r", b"\n"]),
            (line + b"\n", 1, LIMIT, None),
        )

    def test_prefixedHeaderOverLimit(self):
        """
        A length header over the limit is refused on the header alone.
        """
        self.assertError(
            self.translate("int32", "lf", [b"\0\0\0\x01a\0\0\x01\x2d"]),
            b"a\n",
            1,
            1,
            TOO_LONG,
            f"int32 length 301 over the limit of {LIMIT}",
        )

    def test_netstringMalformed(self):
        """
        Leading zeros, a missing comma and a non-numeric length are malformed
        netstrings; what came before is delivered.
        """
        for bad, detail in [
            (b"01:a,", "netstring length b'01' is not a number"),
            (b"1:ab", "netstring payload not followed by a comma"),
            (b"x1:a,", "netstring length b'x1' is not a number"),
            (b":", "netstring length b'' is not a number"),
        ]:
            self.assertError(
                self.translate("netstring", "lf", [b"1:a,", bad]),
                b"a\n",
                1,
                1,
                MALFORMED,
                detail,
            )

    def test_netstringLeadingZeroWaitsForItsColon(self):
        """
        C{00} could only be refused once its colon shows it is a length.
        """
        translating = self.make("netstring", "lf", LIMIT)
        self.assertEqual(translating.feed(b"00"), (b"", 0, 0, None))
        self.assertEqual(translating.feed(b":").error.reason, MALFORMED)

    def test_netstringLengthOverLimit(self):
        """
        A length over the limit is too long, with or without its colon.
        """
        self.assertError(
            self.translate("netstring", "lf", [b"301:"]),
            b"",
            0,
            0,
            TOO_LONG,
            f"netstring length 301 over the limit of {LIMIT}",
        )
        self.assertError(
            self.translate("netstring", "lf", [b"3", b"000"]),
            b"",
            0,
            0,
            TOO_LONG,
            f"netstring length over the limit of {LIMIT}",
        )

    def test_unencodableSalvage(self):
        """
        A payload the target cannot carry ends the translation there: the
        messages before it are delivered, the ones after it are not.
        """
        chunk = frame("int32", b"a") + frame("int32", b"b\nc") + frame("int32", b"d")
        self.assertError(
            self.translate("int32", "lf", [chunk]),
            b"a\n",
            1,
            1,
            UNENCODABLE,
            "payload contains the lf delimiter b'\\n'",
        )
        self.assertError(
            self.translate("crlf", "lf", [b"ok\r\na\nb\r\n"]),
            b"ok\n",
            1,
            2,
            UNENCODABLE,
        )
        self.assertError(
            self.translate("lf", "int8", [b"ok\n" + b"x" * 256 + b"\n"]),
            b"\x02ok",
            1,
            2,
            UNENCODABLE,
            "payload of 256 bytes does not fit a int8 length",
        )

    def test_decodingErrorWinsOverUnencodable(self):
        """
        A decoding error after an unencodable payload in the same chunk is
        the error reported; the salvage still stops before the unencodable
        payload.
        """
        chunk = frame("int32", b"a") + frame("int32", b"b\n") + b"\xff\0\0\0"
        self.assertError(self.translate("int32", "lf", [chunk]), b"a\n", 1, 1, TOO_LONG)

    def test_restKeptAfterError(self):
        """
        After an error the carried-over bytes are as they were.
        """
        translating = self.make("int32", "lf", LIMIT)
        translating.feed(b"\0\0\0\x02a")
        self.assertEqual(translating.feed(b"b\xff\xff\xff\xff").error.reason, TOO_LONG)
        self.assertEqual(translating.rest, b"\0\0\0\x02a")

    def test_crossingAPayloadDelimiter(self):
        """
        Two crlf payloads whose joined bytes hold CRLF are each encodable.
        """
        self.assertEqual(
            self.translate("int8", "crlf", [b"\x02a\r\x02\nb"]),
            (b"a\r\r\n\nb\r\n", 2, 4, None),
        )

    def test_finishUnterminatedLine(self):
        """
        At the end of the stream an unterminated last line is a message; a
        lone CR ending a crlf one is the half of a terminator that never came.
        """
        self.assertEqual(
            self.translate("lf", "int32", [b"a\nlast"]),
            (b"\0\0\0\x01a\0\0\0\x04last", 2, 5, None),
        )
        self.assertEqual(
            self.translate("crlf", "lf", [b"last\r"]), (b"last\n", 1, 4, None)
        )
        self.assertEqual(self.translate("crlf", "lf", [b"\r"]), (b"", 0, 0, None))

    def test_finishTruncated(self):
        """
        A frame cut by the end of the stream is truncated.
        """
        for source, data, detail in [
            ("int32", b"\0\0\0\x05ab", "stream ended inside a int32 frame (6 bytes)"),
            ("int8", b"\x05", "stream ended inside a int8 frame (1 bytes)"),
            ("netstring", b"5:ab", "stream ended inside a netstring (4 bytes)"),
        ]:
            self.assertError(
                self.translate(source, "lf", [data]), b"", 0, 0, TRUNCATED, detail
            )

    def test_finishUnencodable(self):
        """
        An unterminated last line the target cannot carry is unencodable.
        """
        self.assertError(
            self.translate("crlf", "lf", [b"a\nb"]), b"", 0, 0, UNENCODABLE
        )

    def test_finishTwice(self):
        """
        Finishing gives the rest once; the translator then holds nothing.
        """
        translating = self.make("lf", "int8", LIMIT)
        translating.feed(b"abc")
        self.assertEqual(translating.finish(), (b"\x03abc", 1, 3, None))
        self.assertEqual(translating.finish(), (b"", 0, 0, None))
        self.assertEqual(translating.rest, b"")

    def test_unknownFraming(self):
        """
        A framing name that does not exist is a L{KeyError}.
        """
        self.assertRaises(KeyError, self.make, "int64", "lf", LIMIT)
        self.assertRaises(KeyError, self.make, "lf", "LF", LIMIT)


class PythonTranslationTests(TranslationTestsMixin, SynchronousTestCase):
    """
    The cases against the pure-Python reference.
    """

    def make(self, source, target, maxSize):
        return reference(source, target, maxSize)


class CompiledTranslationTests(TranslationTestsMixin, SynchronousTestCase):
    """
    The cases against the compiled accelerator.
    """

    if _speedups is None:
        skip = NOT_BUILT

    def make(self, source, target, maxSize):
        return _speedups.Translator(source, target, maxSize)

    def test_bytesLike(self):
        """
        Any bytes-like chunk is read in place.
        """
        for chunk in [bytearray(b"ab\n"), memoryview(b"xab\n")[1:]]:
            translating = self.make("lf", "int8", LIMIT)
            self.assertEqual(translating.feed(chunk), (b"\x02ab", 1, 2, None))

    def test_limitOutOfRange(self):
        """
        A limit with more than 18 digits or below zero is refused
        (L{translator} gives those to the reference).
        """
        self.assertRaises(OverflowError, self.make, "lf", "lf", 10**18)
        self.assertRaises(OverflowError, self.make, "lf", "lf", -1)
        self.assertRaises(OverflowError, self.make, "lf", "lf", 2**64 + 5)

    def test_idleHoldsNoBuffer(self):
        """
        Once a long partial message is through, the translator gives its
        buffer back: an idle pair's translators hold no bytes.
        """
        import tracemalloc

        translating = self.make("lf", "int32", 10**6)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            self.assertEqual(translating.feed(b"x" * 200_000).messages, 0)
            held = tracemalloc.get_traced_memory()[0] - before
            result = translating.feed(b"\n")
            self.assertEqual(result.messages, 1)
            del result
            idle = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertGreaterEqual(held, 200_000)
        self.assertLess(idle, 1000)

    def test_largeChunkOfSmallMessages(self):
        """
        Output that outgrows its first allocation many times over (empty
        lines into netstrings: one byte becomes five) is all there.
        """
        translating = self.make("lf", "netstring", 10**17)
        result = translating.feed(b"\n" * 100_000)
        self.assertEqual(result, (b"0:," * 100_000, 100_000, 0, None))


# Bytes that mean something to some framing, so that random messages hold
# delimiters, netstring-looking lengths and length headers.
TRICKY = [b"\n", b"\r", b"\r\n", b":", b",", b"0", b"1", b"9", b"\x00", b"\x01", b"a"]
trickyBytes = st.lists(st.sampled_from(TRICKY), max_size=12).map(b"".join)


@st.composite
def streams(draw, source: str):
    """
    A limit, and a stream for C{source}: random messages framed as
    C{source} (some of them at, one under or one over the limit), perhaps
    with bytes changed or junk added, or random bytes altogether.
    """
    maxSize = draw(
        st.one_of(st.sampled_from([0, 1, 2, 9, 10, 11, 99, 100, 255, 256, LIMIT]))
        | st.integers(0, LIMIT)
    )
    if draw(st.integers(0, 9)) == 0:
        return maxSize, draw(st.binary(max_size=2 * LIMIT))
    edge = st.sampled_from([maxSize - 1, maxSize, maxSize + 1]).filter(lambda n: n >= 0)
    message = st.one_of(
        trickyBytes,
        st.binary(max_size=20),
        st.builds(lambda n, b: (b * n)[:n], edge, st.sampled_from(TRICKY)),
    )
    messages = draw(st.lists(message, max_size=8))
    data = bytearray(b"".join(frame(source, m) for m in messages))
    for position, byte in draw(
        st.lists(st.tuples(st.integers(0), st.integers(0, 255)), max_size=2)
    ):
        if data:
            data[position % len(data)] = byte
    data += draw(st.one_of(st.just(b""), trickyBytes, st.binary(max_size=6)))
    return maxSize, bytes(data)


class DifferentialTests(SynchronousTestCase):
    """
    The accelerator and the reference, driven with the same random streams
    in the same random chunks, give the same outcome after every chunk and
    at the end of the stream.
    """

    if _speedups is None:
        skip = NOT_BUILT

    def agree(self, source, target, maxSize, chunks):
        self.assertEqual(
            translateAll(_speedups.Translator, source, target, maxSize, chunks),
            translateAll(reference, source, target, maxSize, chunks),
            (source, target, maxSize, chunks),
        )

    def differential(source):  # noqa: N805 - builds one test per framing
        @settings(max_examples=300, deadline=None)
        @given(
            stream=streams(source),
            target=st.sampled_from(NAMES),
            cuts=st.lists(st.integers(0), max_size=8),
        )
        def test(self, stream, target, cuts):
            maxSize, data = stream
            self.agree(source, target, maxSize, cut(data, cuts))

        @settings(max_examples=60, deadline=None)
        @given(stream=streams(source), target=st.sampled_from(NAMES))
        def byteByByte(self, stream, target):
            maxSize, data = stream
            self.agree(source, target, maxSize, [bytes([b]) for b in data])

        return test, byteByByte

    test_fromLf, test_fromLfByteByByte = differential("lf")
    test_fromCrlf, test_fromCrlfByteByByte = differential("crlf")
    test_fromInt8, test_fromInt8ByteByByte = differential("int8")
    test_fromInt16, test_fromInt16ByteByByte = differential("int16")
    test_fromInt32, test_fromInt32ByteByByte = differential("int32")
    test_fromNetstring, test_fromNetstringByteByByte = differential("netstring")
    del differential

    def test_realSizes(self):
        """
        The default limit, messages around it and around the int8 and int16
        limits, in reads of 64 KiB, 4 KiB and 1000 bytes.
        """
        limit = 65536
        payloads = [b"", b"a", b"\r" * 255, b"b" * 256, b"c" * 1000, b"d" * 65535]
        payloads += [b"e" * limit, b"f" * (limit + 1)]
        for source in NAMES:
            data = b"".join(frame(source, payload) for payload in payloads)
            for size in [65536, 4096, 1000]:
                chunks = [data[i : i + size] for i in range(0, len(data), size)]
                for target in NAMES:
                    self.agree(source, target, limit, chunks)

    def test_badInputs(self):
        """
        Every kind of bad input, in every chunking of two.
        """
        cases = [
            ("netstring", b"3:abc,01:a,"),
            ("netstring", b"3:abc,1a:a,"),
            ("netstring", b"3:abc,3:abcd"),
            ("netstring", b"2:ab,9999:"),
            ("netstring", b"2:ab,99999"),
            ("netstring", b"2:ab,0000"),
            ("int8", b"\x01a\xff" + b"x" * 255),
            ("int16", b"\0\x01a\x01\x2d"),
            ("int32", b"\0\0\0\x01a\xff\xff\xff\xff"),
            ("lf", b"a\n" + b"x" * 301),
            ("lf", b"a\n" + b"x" * 301 + b"\n"),
            ("crlf", b"a\r\n" + b"x" * 300 + b"\r"),
            ("crlf", b"a\r\n" + b"x" * 301 + b"\r"),
            ("crlf", b"a\r\nb\nc\r\n"),
            ("int8", b"\x01a\x03b\nc"),
            ("int8", b"\x01a\x03b\r\n\x01c"),
        ]
        for source, data in cases:
            for target in NAMES:
                for at in range(len(data) + 1):
                    self.agree(source, target, LIMIT, [data[:at], data[at:]])


class ChoiceTests(SynchronousTestCase):
    """
    L{translator} gives the accelerator unless it is missing or turned off.
    """

    def test_compiledWhenBuilt(self):
        """
        With the accelerator built and not turned off, L{translator} gives it.
        """
        if _speedups is None or not ACCELERATED:
            raise SkipTest(NOT_BUILT if _speedups is None else "turned off")
        self.assertIsInstance(
            translator(framing("lf", 10), framing("int32", 10)), _speedups.Translator
        )

    def test_builtWhereACompilerIs(self):
        """
        The development install (C{make}) builds the accelerator in place
        when there is a C compiler: it is not silently left out.
        """
        compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
        if shutil.which(compiler) is None:
            raise SkipTest(f"no C compiler ({compiler}) here")
        self.assertIsNotNone(_speedups, "a compiler is here but it was not built")

    def test_hugeLimitGoesToTheReference(self):
        """
        A limit the accelerator does not take is served by the reference.
        """
        self.assertIsInstance(
            translator(framing("lf", 10**18), framing("int32", 10**18)), Translator
        )

    def test_otherFramingsGoToTheReference(self):
        """
        Framings the accelerator does not implement (another class, even
        under a known name), and two different size limits, are served by
        the reference.
        """
        from gateway.codec.delimited import Delimited

        cases = [
            (framing("lf", 10), framing("int32", 11)),
            (Delimited(b"|", 10, "lf"), framing("int32", 10)),
            (framing("lf", 10), Delimited(b"|", 10, "pipe")),
        ]
        for decoder, encoder in cases:
            self.assertIsInstance(translator(decoder, encoder), Translator)

    def test_environmentForcesTheReference(self):
        """
        C{GATEWAY_NO_EXTENSIONS=1} makes L{translator} give the reference,
        without importing the accelerator.
        """
        script = (
            "import sys\n"
            "from gateway.codec import framing, translator\n"
            "from gateway.codec.accelerated import ACCELERATED\n"
            "made = translator(framing('lf', 10), framing('int32', 10))\n"
            "print(type(made).__name__, ACCELERATED,"
            " 'gateway.codec._speedups' in sys.modules)\n"
        )
        env = dict(os.environ, GATEWAY_NO_EXTENSIONS="1")
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=ROOT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.split(), ["Translator", "False", "False"])

    def test_installsWithoutACompiler(self):
        """
        Where the compiler fails (C{CC=/bin/false}), the package still builds
        and installs, without the accelerator, and translates in Python.
        """
        out = os.path.abspath(self.mktemp())
        # A copy of the sources alone: no build/ nor in-place module that
        # setuptools would take as already built.
        source = os.path.join(out, "source")
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(
                ".*", "build", "_trial_temp*", "*.so", "*.egg-info", "__pycache__"
            ),
        )
        env = dict(os.environ, CC="/bin/false", LDSHARED="/bin/false")
        wheel, names = buildWheel(out, source, env)
        self.assertIn("gateway/codec/accelerated.py", names)
        self.assertEqual([name for name in names if "_speedups" in name], [])
        target = os.path.join(out, "site")
        zipfile.ZipFile(wheel).extractall(target)
        # -S: not the development install's path (its .pth), only the wheel.
        script = (
            f"import sys; sys.path.insert(0, {target!r})\n"
            "from gateway.codec import framing, translator\n"
            "from gateway.codec.accelerated import ACCELERATED\n"
            "made = translator(framing('lf', 10), framing('int32', 10))\n"
            "print(ACCELERATED, made.feed(b'hi\\n'))\n"
        )
        result = subprocess.run(
            [sys.executable, "-S", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=out,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout.strip(),
            "False Translation(data=b'\\x00\\x00\\x00\\x02hi', messages=1, payload=2,"
            " error=None)",
        )
