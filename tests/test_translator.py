"""
Tests for L{gateway.codec.translator}: one direction's bytes, chunk by chunk.
"""

from twisted.trial.unittest import SynchronousTestCase

from gateway.codec import FRAMINGS, FramingError, Translator, framing

LIMIT = 100


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


class TranslatorTests(SynchronousTestCase):
    def test_chunked(self):
        """
        Messages split across chunks come out whole, with their counts.
        """
        translator = Translator(framing("lf", LIMIT), framing("int32", LIMIT))
        self.assertEqual(translator.feed(b"ab"), (b"", 0, 0, None))
        self.assertEqual(
            translator.feed(b"c\n\nd"), (frame(b"abc") + frame(b""), 2, 3, None)
        )
        self.assertEqual(translator.finish(), (frame(b"d"), 1, 1, None))

    def test_salvage(self):
        """
        A bad message fails the chunk: the result is the translation of the
        good ones before it, and the error; the error itself is untouched.
        """
        translator = Translator(framing("int32", LIMIT), framing("lf", LIMIT))
        out, count, payload, error = translator.feed(
            frame(b"ok") + frame(b"a\nb") + frame(b"x")
        )
        self.assertEqual((out, count, payload), (b"ok\n", 1, 2))
        self.assertIsInstance(error, FramingError)
        self.assertEqual(error.reason, "unencodable")
        self.assertEqual(set(vars(error)), {"reason", "detail", "messages"})

    def test_salvageDecodeError(self):
        """
        A decoding error keeps the messages decoded before it.
        """
        translator = Translator(framing("lf", 3), framing("int32", LIMIT))
        out, count, payload, error = translator.feed(b"ab\nlong\n")
        self.assertEqual((out, count, payload), (frame(b"ab"), 1, 2))
        self.assertEqual(error.reason, "too_long")

    def test_truncatedAtFinish(self):
        """
        A stream that ends inside a frame is an error at L{Translator.finish},
        after the whole frames before it.
        """
        translator = Translator(framing("int32", LIMIT), framing("lf", LIMIT))
        self.assertEqual(translator.feed(frame(b"whole") + frame(b"cut")[:5])[1], 1)
        out, count, payload, error = translator.finish()
        self.assertEqual((out, count, payload), (b"", 0, 0))
        self.assertEqual(error.reason, "truncated")

    def test_payloadCounts(self):
        """
        The payload bytes reported for a chunk are the sum of its messages'
        lengths, for every framing (most work it out from the framing's
        fixed overhead instead of summing), whatever the chunk boundaries.
        """
        messages = [b"", b"a", b"bc" * 20, b"", b"d" * 99]
        for name in FRAMINGS:
            stream = framing(name, LIMIT).encode(messages)
            for size in (1, 3, len(stream)):
                translator = Translator(framing(name, LIMIT), framing("int32", LIMIT))
                counts = [0, 0]
                for start in range(0, len(stream), size):
                    _, count, payload, error = translator.feed(
                        stream[start : start + size]
                    )
                    self.assertIsNone(error)
                    counts[0] += count
                    counts[1] += payload
                self.assertEqual(counts, [5, 140], (name, size))
