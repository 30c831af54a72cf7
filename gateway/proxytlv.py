"""
The TLVs of C{--backend-proxy-protocol v2-ssl} (SPEC §9): what HAProxy's
C{send-proxy-v2-ssl-cn} tells a backend about a TLS client, plus the SNI
name, appended to a version 2 PROXY header's address block.

The format is HAProxy's C{doc/proxy-protocol.txt} §2.2: each TLV is a type
byte, a two-byte big-endian length and the value. C{PP2_TYPE_SSL}'s value
is a C{client} flags byte, a four-byte big-endian C{verify} field and
sub-TLVs in the same format.

Two points where HAProxy's code and its document differ, and what is done
here:

  - HAProxy sends a C{PP2_TYPE_SSL} with empty flags for a client that did
    not use TLS; SPEC §9 (and the document's "for a TLS client") has no
    SSL TLV then: L{v2SSLHeader} with no TLS details leaves the header as
    it is.
  - HAProxy leaves C{verify} at 0 when no certificate was presented; the
    document says it is zero only "if the client presented a certificate
    and it was successfully verified, and non-zero otherwise". This follows
    the document, so a backend that checks C{verify == 0} alone never takes
    an anonymous client for an authenticated one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.x509.oid import NameOID

# Types and flags, doc/proxy-protocol.txt §2.2.
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

# The verify field for a certificate that was verified, and for everything
# else (no certificate, or one not verified).
VERIFY_OK = 0
VERIFY_NOT_VERIFIED = 1

_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Signature, version and command, family and transport: the length follows.
_LENGTH_OFFSET = 14
_FIXED_LENGTH = 16
# A TLV's length, and the whole header's address block length, are 16 bits.
MAX_LENGTH = 0xFFFF


class TLVTooLong(ValueError):
    """
    A value (a certificate's CN, an SNI name) does not fit a 16-bit TLV
    length, or the header would grow past 65,535 bytes of address block.
    """


@dataclass(frozen=True)
class ClientTLS:
    """
    What the gateway knows about a client's TLS session once its handshake
    has completed: the arguments of L{sslTLVs}.

    @ivar version: OpenSSL's name of the protocol (C{TLSv1.3}).
    @ivar cipher: OpenSSL's name of the cipher (C{TLS_AES_256_GCM_SHA384}).
    @ivar clientCN: the client certificate's subject CN, if it has one.
    @ivar certificatePresented: whether the client sent a certificate.
    @ivar verified: whether that certificate was verified against the CA.
    @ivar sni: the server name the client asked for, if any.
    """

    version: str | None
    cipher: str | None
    clientCN: str | None
    certificatePresented: bool
    verified: bool
    sni: str | bytes | None


def tlv(kind: int, value: bytes) -> bytes:
    """
    One TLV: C{kind} (0 to 255), the length of C{value}, C{value}.

    @raise TLVTooLong: when C{value} is longer than 65,535 bytes.
    """
    if len(value) > MAX_LENGTH:
        raise TLVTooLong(
            f"PROXY TLV 0x{kind:02x} of {len(value)} bytes: at most {MAX_LENGTH}"
        )
    return struct.pack("!BH", kind, len(value)) + value


def _text(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def sslTLVs(
    version: str | None,
    cipher: str | None,
    clientCN: str | None,
    certificatePresented: bool,
    verified: bool,
    sni: str | bytes | None,
) -> bytes:
    """
    The TLVs for a client that connected over TLS: C{PP2_TYPE_AUTHORITY}
    with the SNI name when the client sent one, then C{PP2_TYPE_SSL}.

    C{PP2_TYPE_SSL} carries the flags C{PP2_CLIENT_SSL}, plus
    C{PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS} when a certificate was
    presented (on this connection, hence in its session), C{verify} 0 when
    it was verified (1 otherwise), and the sub-TLVs
    C{PP2_SUBTYPE_SSL_VERSION}, C{PP2_SUBTYPE_SSL_CN} (with a certificate
    that has a CN) and C{PP2_SUBTYPE_SSL_CIPHER}, in HAProxy's order. Text
    is sent as UTF-8 (ASCII for the version and cipher names); a C{bytes}
    SNI, as pyOpenSSL gives it, is sent as it came.

    @raise TLVTooLong: when a value, or the SSL TLV as a whole, exceeds
        65,535 bytes.
    """
    flags = PP2_CLIENT_SSL
    if certificatePresented:
        flags |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
    verify = VERIFY_OK if certificatePresented and verified else VERIFY_NOT_VERIFIED
    subs = b""
    if version:
        subs += tlv(PP2_SUBTYPE_SSL_VERSION, version.encode("ascii"))
    if certificatePresented and clientCN:
        subs += tlv(PP2_SUBTYPE_SSL_CN, clientCN.encode("utf-8"))
    if cipher:
        subs += tlv(PP2_SUBTYPE_SSL_CIPHER, cipher.encode("ascii"))
    authority = tlv(PP2_TYPE_AUTHORITY, _text(sni)) if sni else b""
    return authority + tlv(PP2_TYPE_SSL, struct.pack("!BI", flags, verify) + subs)


def withTLVs(header: bytes, tlvs: bytes) -> bytes:
    """
    A version 2 PROXY header with C{tlvs} appended after what it already
    carries, its length field grown to match.

    Apply it before any C{PP2_TYPE_CRC32C} is computed: the checksum covers
    the whole header. The headers the gateway builds carry none.

    @param header: a complete version 2 header (C{PROXY} or C{LOCAL}), as
        C{gateway.proxyprotocol.v2Header} makes.
    @raise ValueError: when C{header} is not a complete version 2 header.
    @raise TLVTooLong: when the address block would pass 65,535 bytes.
    """
    if not header.startswith(_V2_SIGNATURE) or len(header) < _FIXED_LENGTH:
        raise ValueError("not a version 2 PROXY header")
    (length,) = struct.unpack_from("!H", header, _LENGTH_OFFSET)
    if len(header) != _FIXED_LENGTH + length:
        raise ValueError(
            f"version 2 PROXY header of {len(header)} bytes, "
            f"its length field says {_FIXED_LENGTH + length}"
        )
    if not tlvs:
        return header
    grown = length + len(tlvs)
    if grown > MAX_LENGTH:
        raise TLVTooLong(f"PROXY header address block of {grown} bytes")
    return (
        header[:_LENGTH_OFFSET] + struct.pack("!H", grown) + header[_FIXED_LENGTH:]
    ) + tlvs


def v2SSLHeader(header: bytes, tls: ClientTLS | None) -> bytes:
    """
    The C{v2-ssl} header: C{header} (from C{v2Header}) with L{sslTLVs} for
    a TLS client, and unchanged for a client that did not use TLS.
    """
    if tls is None:
        return withTLVs(header, b"")
    return withTLVs(
        header,
        sslTLVs(
            tls.version,
            tls.cipher,
            tls.clientCN,
            tls.certificatePresented,
            tls.verified,
            tls.sni,
        ),
    )


def clientTLS(connection: object, verified: bool) -> ClientTLS:
    """
    Read L{ClientTLS} from a pyOpenSSL C{Connection} whose handshake has
    completed (C{transport.getHandle()} of a TLS transport).

    @param verified: whether a presented certificate was verified. pyOpenSSL
        does not expose OpenSSL's verify result; with C{--tls-client-ca} the
        gateway's context fails every handshake whose certificate does not
        verify, so the caller passes whether a client CA was configured.
    """
    peer = connection.get_peer_certificate()  # type: ignore[attr-defined]
    cn = None
    if peer is not None:
        names = peer.to_cryptography().subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
        values = [name.value for name in names if isinstance(name.value, str)]
        cn = values[0] if values else None
    return ClientTLS(
        version=connection.get_protocol_version_name(),  # type: ignore[attr-defined]
        cipher=connection.get_cipher_name(),  # type: ignore[attr-defined]
        clientCN=cn,
        certificatePresented=peer is not None,
        verified=verified and peer is not None,
        sni=connection.get_servername(),  # type: ignore[attr-defined]
    )
