"""
Coverage-guided fuzzing of the codecs with atheris (C{make fuzz}).

C{python tests/fuzz_codec.py -max_total_time=60} (any libFuzzer flag works).
Each input chooses a framing to decode, one to encode, a size limit and a
chunking, then checks that:

  - nothing but L{FramingError} is ever raised;
  - decoding in chunks gives the same messages, and the same verdict
    (error or not), as decoding the whole stream at once;
  - messages that encode decode back to themselves;
  - the compiled translator (when built) gives what the pure-Python one
    gives for the same chunks: bytes, counts, error reason and detail, and
    the carried-over rest, after every chunk and at the end.

Not collected by trial (its name does not start with C{test_}).
"""

import sys

import atheris

with atheris.instrument_imports():
    from gateway.codec import FRAMINGS, FramingError, Translator, framing
    from gateway.codec.accelerated import speedups

NAMES = sorted(FRAMINGS)


def decodeAll(decoder, chunks: list[bytes]) -> tuple[list[bytes], bool]:
    """
    Decode C{chunks} in turn, carrying the rest over, then finish: every
    message, and whether the stream broke the framing.
    """
    messages: list[bytes] = []
    rest = b""
    try:
        for chunk in chunks:
            found, rest = decoder.decode(rest + chunk)
            messages += found
        messages += decoder.finish(rest)
    except FramingError as error:
        return messages + error.messages, True
    return messages, False


def outcomes(translator, chunks: list[bytes]) -> list[tuple]:
    """
    What a translator gives for each chunk and at the end, as the two
    implementations must agree on it (the reference's error also lists the
    good messages; the compiled one makes no object per message).
    """
    seen = []
    for result in [*map(translator.feed, chunks), translator.finish()]:
        data, count, payload, error = result
        detail = None if error is None else (error.reason, error.detail)
        seen.append((data, count, payload, detail, translator.rest))
    return seen


def framedStream(provider: atheris.FuzzedDataProvider, name: str) -> bytes:
    """
    Mostly well-formed input, so that the fuzzer spends its time past the
    first header: messages framed properly, then perhaps one byte changed.
    """
    messages = []
    while provider.remaining_bytes() > 2 and len(messages) < 16:
        messages.append(provider.ConsumeBytes(provider.ConsumeIntInRange(0, 120)))
    try:
        stream = framing(name, 2**20).encode(messages)
    except FramingError as error:
        stream = framing(name, 2**20).encode(error.messages)
    if stream and provider.ConsumeBool():
        position = provider.ConsumeIntInRange(0, len(stream) - 1)
        stream = (
            stream[:position]
            + bytes([provider.ConsumeInt(1) & 0xFF])
            + stream[position + 1 :]
        )
    return stream


def testOneInput(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    decoderName = NAMES[provider.ConsumeIntInRange(0, len(NAMES) - 1)]
    encoderName = NAMES[provider.ConsumeIntInRange(0, len(NAMES) - 1)]
    maxSize = provider.ConsumeIntInRange(1, 300)
    cuts = [provider.ConsumeIntInRange(1, 64) for _ in range(4)]
    if provider.ConsumeBool():
        stream = provider.ConsumeBytes(provider.remaining_bytes())
    else:
        stream = framedStream(provider, decoderName)

    whole, wholeBroken = decodeAll(framing(decoderName, maxSize), [stream])
    chunks = []
    offset = 0
    index = 0
    while offset < len(stream):
        size = cuts[index % len(cuts)]
        chunks.append(stream[offset : offset + size])
        offset += size
        index += 1
    chunked, chunkedBroken = decodeAll(framing(decoderName, maxSize), chunks)
    if (whole, wholeBroken) != (chunked, chunkedBroken):
        raise AssertionError(
            f"{decoderName} chunking changed the result:"
            f" {whole!r} {wholeBroken} != {chunked!r} {chunkedBroken}"
        )

    if speedups is not None:
        ours = outcomes(
            Translator(framing(decoderName, maxSize), framing(encoderName, maxSize)),
            chunks,
        )
        compiled = outcomes(
            speedups.Translator(decoderName, encoderName, maxSize), chunks
        )
        if ours != compiled:
            raise AssertionError(
                f"{decoderName} -> {encoderName} at {maxSize}: compiled"
                f" {compiled!r} != reference {ours!r}"
            )

    encoder = framing(encoderName, 2**20)
    try:
        encoded = encoder.encode(whole)
    except FramingError as error:
        encoded = encoder.encode(error.messages)
        whole = error.messages
    again, broken = decodeAll(framing(encoderName, 2**20), [encoded])
    if broken or again != whole:
        raise AssertionError(f"{encoderName} round trip: {whole!r} -> {again!r}")


def main() -> None:
    atheris.Setup(sys.argv, testOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
