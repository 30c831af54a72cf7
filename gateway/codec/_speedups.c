/*
 * gateway.codec._speedups: translation between two framings in one pass.
 *
 * A Translator turns a chunk framed one way into the same messages framed
 * another way, as gateway.codec's pure-Python framings and their translator
 * do, byte for byte: the same output, counts, errors (reason and detail) and
 * salvage. The Python code is the reference (gateway/codec/delimited.py,
 * prefixed.py, netstring.py and the translator over them); every rule here
 * cites the one it copies. Unlike the reference, no Python object is made
 * per message: delimiters are found with memchr, payloads copied with
 * memcpy straight into the one output bytes object of the chunk.
 *
 * gateway/codec/accelerated.py chooses between this and the reference.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

enum Kind { LF, CRLF, INT8, INT16, INT32, NETSTRING, KINDS };

static const char *const NAMES[KINDS] = {
    "lf", "crlf", "int8", "int16", "int32", "netstring",
};

/* The fewest framing bytes a decoded message comes with: a delimiter, a
 * length header, or "0:," for a netstring. Bounds the messages a chunk holds. */
static const int DECODE_MIN[KINDS] = {1, 2, 1, 2, 4, 3};

/* Header bytes of the length-prefixed framings. */
static const int PREFIX[KINDS] = {0, 0, 1, 2, 4, 0};

/* The largest payload each framing's header can announce. */
static const uint64_t PREFIX_LIMIT[KINDS] = {
    0, 0, 0xFFu, 0xFFFFu, 0xFFFFFFFFu, 0,
};

/* The largest size limit handled here: a netstring length of up to its
 * number of digits (18) always fits in 64 bits. accelerated.py leaves
 * larger limits to the reference. */
#define MAX_LIMIT 999999999999999999ULL

/* Set once by configure(): the result tuple type and the error class. */
static PyTypeObject *ResultType = NULL;
static PyObject *ErrorType = NULL;

/* gateway.codec._base's reasons. */
static PyObject *TOO_LONG, *MALFORMED, *TRUNCATED, *UNENCODABLE;

typedef struct {
    PyObject_HEAD
    int source;
    int target;
    uint64_t maxSize;
    int maxDigits;
    /* Payloads decoded from source may hold target's delimiter: an lf
     * payload never holds "\n" (nor so "\r\n"), a crlf one never "\r\n". */
    int checkDelimiter;
    /* The most framing bytes target adds to a payload within the limit. */
    Py_ssize_t mostOverhead;
    /* The bytes of an incomplete message carried over to the next chunk. */
    char *rest;
    Py_ssize_t restLen;
    Py_ssize_t restCap;
} TranslatorObject;

/* The state of one translation: where output goes and the first error. */
typedef struct {
    const TranslatorObject *self;
    PyObject *bytes; /* owned: the output, resized as it grows */
    char *out;       /* the next byte to write */
    char *limit;     /* the end of the output bytes */
    Py_ssize_t count;
    unsigned long long payload;
    /* An unencodable payload was met: later messages are still decoded
     * (a decoding error after it is the one reported, as the reference
     * decodes the whole chunk before encoding) but no longer emitted. */
    int blocked;
    PyObject *reason; /* borrowed; NULL while there is no error */
    PyObject *detail; /* owned */
    int decodeError;
    /* The buffer being decoded ends here; the first target delimiter at or
     * after the last payload searched is at delimiter (end when none). */
    const char *end;
    const char *delimiter;
    int delimiterKnown;
} Pass;

/* Each decoder is compiled once per target with emit() inlined in its loop,
 * so that framing a payload costs no switch on the target. */
#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define ALWAYS_INLINE __forceinline
#else
#define ALWAYS_INLINE inline
#endif

/* Protocol errors are status 1, Python exceptions -1. */
#define PROTOCOL_ERROR 1

static int
countDigits(uint64_t value)
{
    int digits = 1;
    while (value >= 10) {
        value /= 10;
        digits++;
    }
    return digits;
}

static char *
writeDecimal(char *out, uint64_t value)
{
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n) {
        *out++ = digits[--n];
    }
    return out;
}

static int
allDigits(const char *p, Py_ssize_t n)
{
    /* bytes.isdigit(): ASCII digits only, and false for b"". */
    if (n == 0) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }
    }
    return 1;
}

static uint64_t
parseDigits(const char *p, Py_ssize_t n)
{
    uint64_t value = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        value = value * 10 + (uint64_t)(p[i] - '0');
    }
    return value;
}

static ALWAYS_INLINE uint64_t
readHeader(const unsigned char *p, int size)
{
    uint64_t value = 0;
    for (int i = 0; i < size; i++) {
        value = (value << 8) | p[i];
    }
    return value;
}

/* The first "\r\n" starting in [start, end), or NULL. "\n" is searched
 * (memchr), then the byte before it checked: "\r\n" cannot overlap itself,
 * so the first "\n" preceded by "\r" is bytes.find's answer. */
static const char *
findCRLF(const char *start, const char *end)
{
    const char *p = start;
    while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        if (p > start && p[-1] == '\r') {
            return p - 1;
        }
        p++;
    }
    return NULL;
}

static void
startBuffer(Pass *pass, const char *buffer, Py_ssize_t length)
{
    pass->end = buffer + length;
    pass->delimiterKnown = 0;
}

/* Record a decoding error; takes the reference to detail. */
static int
fail(Pass *pass, PyObject *reason, PyObject *detail)
{
    if (detail == NULL) {
        return -1;
    }
    Py_XSETREF(pass->detail, detail);
    pass->reason = reason;
    pass->decodeError = 1;
    return PROTOCOL_ERROR;
}

/* A detail naming some bytes of the chunk with their repr, as the
 * reference's f"{head!r}" does. */
static int
failBytes(Pass *pass, PyObject *reason, const char *format, const char *p,
          Py_ssize_t n)
{
    PyObject *bytes = PyBytes_FromStringAndSize(p, n);
    if (bytes == NULL) {
        return -1;
    }
    PyObject *detail = PyUnicode_FromFormat(format, bytes);
    Py_DECREF(bytes);
    return fail(pass, reason, detail);
}

/* Stop emitting at an unencodable payload; a decoding error found later
 * still takes precedence. */
static int
block(Pass *pass, PyObject *detail)
{
    if (detail == NULL) {
        return -1;
    }
    Py_XSETREF(pass->detail, detail);
    pass->reason = UNENCODABLE;
    pass->blocked = 1;
    return 0;
}

/* Whether the payload [start, stop) holds target's delimiter
 * (delimited.py's encode). One search serves every payload up to the
 * delimiter it finds, so a chunk is searched about once in all. */
static void
findDelimiter(Pass *pass, const char *start, const int target)
{
    const char *found;
    if (target == LF) {
        found = memchr(start, '\n', (size_t)(pass->end - start));
    }
    else {
        found = findCRLF(start, pass->end);
    }
    pass->delimiter = found ? found : pass->end;
    pass->delimiterKnown = 1;
}

static ALWAYS_INLINE int
holdsDelimiter(Pass *pass, const char *start, const char *stop,
               const int target)
{
    if (!pass->delimiterKnown || pass->delimiter < start) {
        findDelimiter(pass, start, target);
    }
    if (target == LF) {
        return pass->delimiter < stop;
    }
    return pass->delimiter + 1 < stop;
}

/* Room for at least need more bytes of output, the allocation at least
 * doubled (so that a chunk grows it a few times at most). */
static int
growOutput(Pass *pass, Py_ssize_t need)
{
    char *base = PyBytes_AS_STRING(pass->bytes);
    Py_ssize_t used = pass->out - base;
    Py_ssize_t size = pass->limit - base;
    if (need > PY_SSIZE_T_MAX - used) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t grown = size < PY_SSIZE_T_MAX / 2 ? 2 * size : PY_SSIZE_T_MAX;
    if (grown < used + need) {
        grown = used + need;
    }
    if (_PyBytes_Resize(&pass->bytes, grown) < 0) {
        return -1;
    }
    base = PyBytes_AS_STRING(pass->bytes);
    pass->out = base + used;
    pass->limit = base + grown;
    return 0;
}

/* Frame one payload into the output, or block on one the target cannot
 * carry (delimited.py and prefixed.py's encode, netstring.py's format). */
static ALWAYS_INLINE int
emit(Pass *pass, const char *payload, Py_ssize_t length, const int target)
{
    if (pass->blocked) {
        return 0;
    }
    const TranslatorObject *self = pass->self;
    if (pass->limit - pass->out < length ||
        pass->limit - pass->out - length < self->mostOverhead) {
        if (growOutput(pass, length + self->mostOverhead) < 0) {
            return -1;
        }
    }
    char *out = pass->out;
    uint64_t size = (uint64_t)length;
    switch (target) {
    case LF:
    case CRLF:
        if (self->checkDelimiter &&
            holdsDelimiter(pass, payload, payload + length, target)) {
            return block(pass, PyUnicode_FromFormat(
                "payload contains the %s delimiter %s", NAMES[target],
                target == LF ? "b'\\n'" : "b'\\r\\n'"));
        }
        memcpy(out, payload, (size_t)length);
        out += length;
        if (target == CRLF) {
            *out++ = '\r';
        }
        *out++ = '\n';
        break;
    case INT8:
    case INT16:
    case INT32:
        if (size > PREFIX_LIMIT[target]) {
            return block(pass, PyUnicode_FromFormat(
                "payload of %zd bytes does not fit a %s length", length,
                NAMES[target]));
        }
        for (int shift = 8 * (PREFIX[target] - 1); shift >= 0;
             shift -= 8) {
            *out++ = (char)((size >> shift) & 0xFF);
        }
        memcpy(out, payload, (size_t)length);
        out += length;
        break;
    case NETSTRING:
        out = writeDecimal(out, size);
        *out++ = ':';
        memcpy(out, payload, (size_t)length);
        out += length;
        *out++ = ',';
        break;
    }
    pass->out = out;
    pass->count++;
    pass->payload += size;
    return 0;
}

/* delimited.py's decode. */
static ALWAYS_INLINE int
decodeDelimitedTo(Pass *pass, const char *buffer, Py_ssize_t length,
                  Py_ssize_t *used, const int target)
{
    const TranslatorObject *self = pass->self;
    const char *position = buffer;
    const char *end = buffer + length;
    int crlf = self->source == CRLF;
    for (;;) {
        const char *found =
            crlf ? findCRLF(position, end)
                 : memchr(position, '\n', (size_t)(end - position));
        if (found == NULL) {
            break;
        }
        Py_ssize_t size = found - position;
        if ((uint64_t)size > self->maxSize) {
            return fail(pass, TOO_LONG, PyUnicode_FromFormat(
                "%s message of %zd bytes, over the limit of %llu",
                NAMES[self->source], size,
                (unsigned long long)self->maxSize));
        }
        if (emit(pass, position, size, target) < 0) {
            return -1;
        }
        position = found + (crlf ? 2 : 1);
    }
    /* A rest ending in the first half of a CRLF may be a message of exactly
     * the limit whose terminator is still on its way. */
    Py_ssize_t rest = end - position;
    if (crlf && rest && end[-1] == '\r') {
        rest--;
    }
    if ((uint64_t)rest > self->maxSize) {
        return fail(pass, TOO_LONG, PyUnicode_FromFormat(
            "%s message longer than the limit of %llu bytes and still not "
            "terminated",
            NAMES[self->source], (unsigned long long)self->maxSize));
    }
    *used = position - buffer;
    return 0;
}

/* prefixed.py's decode: a header over the limit is refused before its body
 * arrives. Compiled once per header size too. */
static ALWAYS_INLINE int
decodeSized(Pass *pass, const char *buffer, Py_ssize_t length,
            Py_ssize_t *used, const int target, const int prefix)
{
    const TranslatorObject *self = pass->self;
    Py_ssize_t position = 0;
    while (length - position >= prefix) {
        uint64_t size =
            readHeader((const unsigned char *)buffer + position, prefix);
        if (size > self->maxSize) {
            return fail(pass, TOO_LONG, PyUnicode_FromFormat(
                "%s length %llu over the limit of %llu", NAMES[self->source],
                (unsigned long long)size, (unsigned long long)self->maxSize));
        }
        if ((uint64_t)(length - position - prefix) < size) {
            break;
        }
        if (emit(pass, buffer + position + prefix, (Py_ssize_t)size, target) < 0) {
            return -1;
        }
        position += prefix + (Py_ssize_t)size;
    }
    *used = position;
    return 0;
}

static ALWAYS_INLINE int
decodePrefixedTo(Pass *pass, const char *buffer, Py_ssize_t length,
                 Py_ssize_t *used, const int target)
{
    switch (pass->self->source) {
    case INT8:
        return decodeSized(pass, buffer, length, used, target, 1);
    case INT16:
        return decodeSized(pass, buffer, length, used, target, 2);
    default:
        return decodeSized(pass, buffer, length, used, target, 4);
    }
}

/* netstring.py's decode: the colon is looked for within the longest
 * length the limit allows, plus one byte. */
static ALWAYS_INLINE int
decodeNetstringTo(Pass *pass, const char *buffer, Py_ssize_t length,
                  Py_ssize_t *used, const int target)
{
    const TranslatorObject *self = pass->self;
    const char *position = buffer;
    const char *end = buffer + length;
    while (position < end) {
        Py_ssize_t window = end - position;
        if (window > self->maxDigits + 1) {
            window = self->maxDigits + 1;
        }
        const char *colon = memchr(position, ':', (size_t)window);
        if (colon == NULL) {
            if (!allDigits(position, window)) {
                return failBytes(pass, MALFORMED,
                                 "netstring length %R is not a number",
                                 position, window);
            }
            if (window > self->maxDigits) {
                return fail(pass, TOO_LONG, PyUnicode_FromFormat(
                    "netstring length over the limit of %llu",
                    (unsigned long long)self->maxSize));
            }
            break;
        }
        Py_ssize_t digits = colon - position;
        if (!allDigits(position, digits) ||
            (digits > 1 && position[0] == '0')) {
            return failBytes(pass, MALFORMED,
                             "netstring length %R is not a number", position,
                             digits);
        }
        uint64_t size = parseDigits(position, digits);
        if (size > self->maxSize) {
            return fail(pass, TOO_LONG, PyUnicode_FromFormat(
                "netstring length %llu over the limit of %llu",
                (unsigned long long)size, (unsigned long long)self->maxSize));
        }
        /* Incomplete until the comma is there too. */
        if ((uint64_t)(end - colon - 1) <= size) {
            break;
        }
        const char *stop = colon + 1 + size;
        if (*stop != ',') {
            return fail(pass, MALFORMED, PyUnicode_FromString(
                "netstring payload not followed by a comma"));
        }
        if (emit(pass, colon + 1, (Py_ssize_t)size, target) < 0) {
            return -1;
        }
        position = stop + 1;
    }
    *used = position - buffer;
    return 0;
}

#define SPECIALIZE(name)                                                   \
    static int name(Pass *pass, const char *buffer, Py_ssize_t length,     \
                    Py_ssize_t *used)                                      \
    {                                                                      \
        switch (pass->self->target) {                                      \
        case LF:                                                           \
            return name##To(pass, buffer, length, used, LF);               \
        case CRLF:                                                         \
            return name##To(pass, buffer, length, used, CRLF);             \
        case INT8:                                                         \
            return name##To(pass, buffer, length, used, INT8);             \
        case INT16:                                                        \
            return name##To(pass, buffer, length, used, INT16);            \
        case INT32:                                                        \
            return name##To(pass, buffer, length, used, INT32);            \
        default:                                                           \
            return name##To(pass, buffer, length, used, NETSTRING);        \
        }                                                                  \
    }

SPECIALIZE(decodeDelimited)
SPECIALIZE(decodePrefixed)
SPECIALIZE(decodeNetstring)

static int
decode(Pass *pass, const char *buffer, Py_ssize_t length, Py_ssize_t *used)
{
    startBuffer(pass, buffer, length);
    switch (pass->self->source) {
    case LF:
    case CRLF:
        return decodeDelimited(pass, buffer, length, used);
    case NETSTRING:
        return decodeNetstring(pass, buffer, length, used);
    default:
        return decodePrefixed(pass, buffer, length, used);
    }
}

/*
 * How many bytes of chunk, appended to the rest, make its first frame
 * whole, or make its decoding fail as it would on rest + chunk, or are the
 * whole chunk. The rest never holds a complete frame (nor a bad one), so
 * only that much of the chunk is copied; the remainder is decoded in place.
 */
static Py_ssize_t
firstFrameEnd(const TranslatorObject *self, const char *chunk, Py_ssize_t n)
{
    const char *rest = self->rest;
    Py_ssize_t restLen = self->restLen;
    Py_ssize_t m = n;
    switch (self->source) {
    case LF: {
        const char *found = memchr(chunk, '\n', (size_t)n);
        if (found) {
            m = found - chunk + 1;
        }
        break;
    }
    case CRLF: {
        if (n && rest[restLen - 1] == '\r' && chunk[0] == '\n') {
            m = 1;
        }
        else {
            const char *found = findCRLF(chunk, chunk + n);
            if (found) {
                m = found - chunk + 2;
            }
        }
        break;
    }
    case INT8:
    case INT16:
    case INT32: {
        int prefix = PREFIX[self->source];
        unsigned char header[4];
        Py_ssize_t have = restLen < prefix ? restLen : prefix;
        Py_ssize_t need = prefix - have;
        if (n < need) {
            break;
        }
        memcpy(header, rest, (size_t)have);
        memcpy(header + have, chunk, (size_t)need);
        uint64_t size = readHeader(header, prefix);
        if (size > self->maxSize) {
            m = need;
        }
        else if ((uint64_t)(prefix + size - restLen) < (uint64_t)n) {
            m = (Py_ssize_t)(prefix + size - restLen);
        }
        break;
    }
    case NETSTRING: {
        const char *colon = memchr(rest, ':', (size_t)restLen);
        uint64_t frame;
        if (colon == NULL) {
            /* The rest is digits only: look for the colon in the rest of
             * the window, then check the whole length as decoding will. */
            Py_ssize_t window = self->maxDigits + 1 - restLen;
            if (window > n) {
                window = n;
            }
            const char *found = memchr(chunk, ':', (size_t)window);
            if (found == NULL) {
                m = window;
                break;
            }
            /* The length is the rest's digits and chunk[:c]: bad ones (or
             * a leading zero) fail on the header, as in the reference. */
            Py_ssize_t c = found - chunk;
            if (c > 0 && !allDigits(chunk, c)) {
                m = c + 1;
                break;
            }
            if (rest[0] == '0' && restLen + c > 1) {
                m = c + 1;
                break;
            }
            uint64_t size = parseDigits(rest, restLen);
            for (Py_ssize_t i = 0; i < c; i++) {
                size = size * 10 + (uint64_t)(chunk[i] - '0');
            }
            if (size > self->maxSize) {
                m = c + 1;
                break;
            }
            frame = (uint64_t)(restLen + c + 1) + size + 1;
        }
        else {
            uint64_t size = parseDigits(rest, colon - rest);
            frame = (uint64_t)(colon - rest + 1) + size + 1;
        }
        if (frame - (uint64_t)restLen < (uint64_t)n) {
            m = (Py_ssize_t)(frame - (uint64_t)restLen);
        }
        break;
    }
    }
    return m;
}

static int
reserveRest(TranslatorObject *self, Py_ssize_t size)
{
    if (size <= self->restCap) {
        return 0;
    }
    char *grown = PyMem_Realloc(self->rest, (size_t)size);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->rest = grown;
    self->restCap = size;
    return 0;
}

/* An idle translator holds no buffer; a large one left by a long partial
 * message is given back once the message is through. */
static void
trimRest(TranslatorObject *self)
{
    if (self->restLen == 0) {
        PyMem_Free(self->rest);
        self->rest = NULL;
        self->restCap = 0;
    }
    else if (self->restCap > 4096 && self->restCap > 2 * self->restLen) {
        char *shrunk = PyMem_Realloc(self->rest, (size_t)self->restLen);
        if (shrunk != NULL) {
            self->rest = shrunk;
            self->restCap = self->restLen;
        }
    }
}

/* Framing bytes the target adds to a payload of size bytes. */
static Py_ssize_t
encodeOverhead(int target, uint64_t size)
{
    switch (target) {
    case LF:
        return 1;
    case CRLF:
        return 2;
    case NETSTRING:
        return countDigits(size) + 2;
    default:
        return PREFIX[target];
    }
}

/* The output bytes allocated for total input bytes: all it can take when
 * the target's framing is no longer than the source's; else room for one
 * message in 16 bytes to grow (a 64 KiB chunk then needs less than glibc's
 * threshold for mmap, whose page faults would cost more than the
 * translation), more being made as needed. */
static Py_ssize_t
outputGuess(const TranslatorObject *self, Py_ssize_t total)
{
    uint64_t largest = self->maxSize < (uint64_t)total ? self->maxSize
                                                        : (uint64_t)total;
    Py_ssize_t grow =
        encodeOverhead(self->target, largest) - DECODE_MIN[self->source];
    if (grow <= 0) {
        return total;
    }
    Py_ssize_t extra = (total / 16 + 1) * grow;
    return extra < PY_SSIZE_T_MAX - total ? total + extra : total;
}

static PyObject *
makeResult(PyObject *data, Py_ssize_t count, unsigned long long payload,
           PyObject *error)
{
    /* A NamedTuple has a tuple's layout (checked by configure()), so it is
     * allocated and filled as one, without calling its Python __new__. */
    PyObject *result = ResultType->tp_alloc(ResultType, 4);
    PyObject *messages = PyLong_FromSsize_t(count);
    PyObject *bytes = PyLong_FromUnsignedLongLong(payload);
    if (result == NULL || messages == NULL || bytes == NULL) {
        Py_XDECREF(result);
        Py_XDECREF(messages);
        Py_XDECREF(bytes);
        Py_DECREF(data);
        Py_XDECREF(error);
        return NULL;
    }
    if (error == NULL) {
        error = Py_NewRef(Py_None);
    }
    PyTuple_SET_ITEM(result, 0, data);
    PyTuple_SET_ITEM(result, 1, messages);
    PyTuple_SET_ITEM(result, 2, bytes);
    PyTuple_SET_ITEM(result, 3, error);
    return result;
}

/* The result of a pass: its output as far as it went (the salvage when
 * there was an error), its counts, and its error. */
static PyObject *
finishPass(Pass *pass)
{
    PyObject *out = pass->bytes;
    pass->bytes = NULL;
    Py_ssize_t size = pass->out - PyBytes_AS_STRING(out);
    if (_PyBytes_Resize(&out, size) < 0) {
        Py_CLEAR(pass->detail);
        return NULL;
    }
    PyObject *error = NULL;
    if (pass->reason != NULL) {
        error = PyObject_CallFunctionObjArgs(ErrorType, pass->reason,
                                             pass->detail, NULL);
        Py_CLEAR(pass->detail);
        if (error == NULL) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return makeResult(out, pass->count, pass->payload, error);
}

PyDoc_STRVAR(feed_doc,
"feed(data) -> Result\n\n"
"Translate one chunk (any bytes-like object), with the bytes of an\n"
"incomplete message carried over from the previous one. The result holds\n"
"the bytes for the other side, their message and payload byte counts and\n"
"None; or, at the first bad message, the translation of the good ones\n"
"before it, their counts and the FramingError (the carried-over bytes are\n"
"then left as they were).");

static PyObject *
Translator_feed(TranslatorObject *self, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const char *chunk = view.buf;
    Py_ssize_t n = view.len;
    Py_ssize_t restLen = self->restLen;
    Py_ssize_t size = outputGuess(self, restLen + n);
    Pass pass = {self, PyBytes_FromStringAndSize(NULL, size)};
    if (pass.bytes == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    pass.out = PyBytes_AS_STRING(pass.bytes);
    pass.limit = pass.out + size;
    int status = 0;
    Py_ssize_t from = 0;
    Py_ssize_t used;
    if (restLen) {
        /* The message begun in the previous chunk, made whole in the rest
         * buffer; decoding it there gives the errors rest + chunk gives. */
        Py_ssize_t m = firstFrameEnd(self, chunk, n);
        status = reserveRest(self, restLen + m);
        if (status == 0) {
            memcpy(self->rest + restLen, chunk, (size_t)m);
            status = decode(&pass, self->rest, restLen + m, &used);
        }
        if (status == 0) {
            Py_ssize_t left = restLen + m - used;
            if (left) {
                /* Still incomplete: then m == n, and all of it is kept. */
                memmove(self->rest, self->rest + used, (size_t)left);
                self->restLen = left;
                from = n;
            }
            else {
                self->restLen = 0;
                from = m;
            }
        }
    }
    if (status == 0 && from < n) {
        status = decode(&pass, chunk + from, n - from, &used);
        if (status == 0 && !pass.blocked) {
            Py_ssize_t tail = n - from - used;
            if (tail) {
                status = reserveRest(self, tail);
                if (status == 0) {
                    memcpy(self->rest, chunk + from + used, (size_t)tail);
                }
            }
            self->restLen = tail;
        }
    }
    PyBuffer_Release(&view);
    if (status != 0 || pass.blocked) {
        /* The reference keeps its rest when a chunk fails; the bytes it had
         * are still at the start of the buffer. */
        self->restLen = restLen;
    }
    trimRest(self);
    if (status < 0) {
        Py_CLEAR(pass.bytes);
        Py_CLEAR(pass.detail);
        return NULL;
    }
    return finishPass(&pass);
}

PyDoc_STRVAR(finish_doc,
"finish() -> Result\n\n"
"Translate what is left once the sending side has ended its stream: an\n"
"unterminated last line (lf, crlf) is a message; a partial frame is a\n"
"'truncated' error.");

static PyObject *
Translator_finish(TranslatorObject *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t length = self->restLen;
    const char *message = self->rest;
    self->restLen = 0;
    Pass pass = {self, NULL};
    PyObject *result = NULL;
    switch (self->source) {
    case CRLF:
        /* A lone CR at the end is the first half of a CRLF that never came. */
        if (length && message[length - 1] == '\r') {
            length--;
        }
        break;
    case LF:
        break;
    default:
        if (length) {
            int status;
            if (self->source == NETSTRING) {
                status = fail(&pass, TRUNCATED, PyUnicode_FromFormat(
                    "stream ended inside a netstring (%zd bytes)", length));
            }
            else {
                status = fail(&pass, TRUNCATED, PyUnicode_FromFormat(
                    "stream ended inside a %s frame (%zd bytes)",
                    NAMES[self->source], length));
            }
            if (status < 0) {
                goto done;
            }
            length = 0;
        }
    }
    Py_ssize_t size = length ? length + self->mostOverhead : 0;
    pass.bytes = PyBytes_FromStringAndSize(NULL, size);
    if (pass.bytes == NULL) {
        Py_CLEAR(pass.detail);
        goto done;
    }
    pass.out = PyBytes_AS_STRING(pass.bytes);
    pass.limit = pass.out + size;
    if (length) {
        startBuffer(&pass, message, length);
        if (emit(&pass, message, length, self->target) < 0) {
            Py_CLEAR(pass.bytes);
            Py_CLEAR(pass.detail);
            goto done;
        }
    }
    result = finishPass(&pass);
done:
    trimRest(self);
    return result;
}

static PyObject *
Translator_getRest(TranslatorObject *self, void *Py_UNUSED(closure))
{
    return PyBytes_FromStringAndSize(self->rest, self->restLen);
}

static int
kindOf(PyObject *name)
{
    if (PyUnicode_Check(name)) {
        for (int kind = 0; kind < KINDS; kind++) {
            if (PyUnicode_CompareWithASCIIString(name, NAMES[kind]) == 0) {
                return kind;
            }
        }
    }
    /* framing() raises KeyError for a name it does not know. */
    PyErr_SetObject(PyExc_KeyError, name);
    return -1;
}

static int
Translator_init(TranslatorObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"source", "target", "maxSize", NULL};
    PyObject *source, *target, *limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO!:Translator", keywords,
                                     &source, &target, &PyLong_Type, &limit)) {
        return -1;
    }
    /* OverflowError below zero and past 64 bits, as past MAX_LIMIT. */
    unsigned long long maxSize = PyLong_AsUnsignedLongLong(limit);
    if (maxSize == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (ResultType == NULL) {
        /* Its Python half, which calls configure(). */
        PyObject *glue = PyImport_ImportModule("gateway.codec.accelerated");
        Py_XDECREF(glue);
        if (glue == NULL) {
            return -1;
        }
        if (ResultType == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "_speedups is not configured");
            return -1;
        }
    }
    if (maxSize > MAX_LIMIT) {
        PyErr_SetString(PyExc_OverflowError, "maxSize over 10**18 - 1");
        return -1;
    }
    if ((self->source = kindOf(source)) < 0 ||
        (self->target = kindOf(target)) < 0) {
        return -1;
    }
    self->maxSize = maxSize;
    self->maxDigits = countDigits(maxSize);
    self->checkDelimiter =
        (self->target == LF && self->source != LF) ||
        (self->target == CRLF && self->source != LF && self->source != CRLF);
    self->mostOverhead = encodeOverhead(self->target, maxSize);
    self->restLen = 0;
    return 0;
}

static void
Translator_dealloc(TranslatorObject *self)
{
    PyMem_Free(self->rest);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Translator_methods[] = {
    {"feed", (PyCFunction)Translator_feed, METH_O, feed_doc},
    {"finish", (PyCFunction)Translator_finish, METH_NOARGS, finish_doc},
    {NULL},
};

static PyGetSetDef Translator_getset[] = {
    {"rest", (getter)Translator_getRest, NULL,
     "The bytes of the incomplete message carried over.", NULL},
    {NULL},
};

PyDoc_STRVAR(Translator_doc,
"Translator(source, target, maxSize)\n\n"
"Turns a byte stream framed as source (lf, crlf, int8, int16, int32,\n"
"netstring) into the same messages framed as target, chunk by chunk,\n"
"refusing payloads over maxSize bytes (at most 10**18 - 1).");

static PyTypeObject TranslatorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.codec._speedups.Translator",
    .tp_basicsize = sizeof(TranslatorObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Translator_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Translator_init,
    .tp_dealloc = (destructor)Translator_dealloc,
    .tp_methods = Translator_methods,
    .tp_getset = Translator_getset,
};

PyDoc_STRVAR(configure_doc,
"configure(resultType, errorType)\n\n"
"The NamedTuple of four fields results are made of, and the exception\n"
"class errors are made of (called with reason and detail).");

static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "configure() takes 2 arguments");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    if (!PyType_Check(args[0]) || !PyType_IsSubtype(type, &PyTuple_Type) ||
        type->tp_basicsize != PyTuple_Type.tp_basicsize ||
        type->tp_itemsize != PyTuple_Type.tp_itemsize ||
        type->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError,
                        "resultType must be a NamedTuple without a __dict__");
        return NULL;
    }
    Py_XSETREF(ResultType, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(ErrorType, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     configure_doc},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway.codec._speedups",
    .m_doc = "One-pass translation between message framings.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&TranslatorType) < 0) {
        return NULL;
    }
    if ((TOO_LONG = PyUnicode_InternFromString("too_long")) == NULL ||
        (MALFORMED = PyUnicode_InternFromString("malformed")) == NULL ||
        (TRUNCATED = PyUnicode_InternFromString("truncated")) == NULL ||
        (UNENCODABLE = PyUnicode_InternFromString("unencodable")) == NULL) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    PyObject *limit = PyLong_FromUnsignedLongLong(MAX_LIMIT);
    if (limit == NULL ||
        PyModule_AddObjectRef(module, "Translator",
                              (PyObject *)&TranslatorType) < 0 ||
        PyModule_AddObjectRef(module, "MAX_LIMIT", limit) < 0) {
        Py_XDECREF(limit);
        Py_DECREF(module);
        return NULL;
    }
    Py_DECREF(limit);
    return module;
}
