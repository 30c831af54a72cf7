"""
Authorising a TLS client by the names in its certificate
(C{--tls-client-name}, SPEC §9), and naming a certificate in logs.

With C{--tls-client-ca} alone, any certificate the CA signed is admitted; a
name list narrows that to certificates carrying one of the names:

  - a name with a URI scheme (C{spiffe://example.org/ns/prod/sa/orders},
    C{urn:...}) matches a URI SAN exactly, case and all: a URI's path is
    case-sensitive, and a SPIFFE ID is compared as a string;
  - any other name matches the subject's common name or a DNS SAN, ignoring
    ASCII case as DNS does (RFC 4343);
  - C{*.example.com} matches exactly one label in front of C{example.com}:
    C{a.example.com}, not C{a.b.example.com} and not C{example.com}, as
    RFC 6125 §6.4.3 has a client match a server's wildcard. Only a whole
    leftmost label may be C{*}.

The certificate's own names are taken literally, and a configured wildcard
never matches a C{*} label: a client certificate whose only name is
C{*.example.com} is authorised by no configured name. Internationalised
names are compared in the form certificates carry them, A-labels
(C{xn--...}); configure them so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

# A URI scheme (RFC 3986 §3.1) followed by its colon.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# One label of a host name: letters, digits, hyphens and underscores (which
# private CAs do put in names), no empty label.
_LABEL = re.compile(r"[A-Za-z0-9_-]+")
_WILDCARD = "*"


class InvalidClientName(ValueError):
    """
    A C{--tls-client-name} value cannot be used; the message is one line
    naming the option and what is wrong.
    """


@dataclass(frozen=True)
class ClientName:
    """
    One configured name, validated.

    @ivar text: the name as configured.
    @ivar uri: whether it is matched against URI SANs (exactly) rather than
        the common name and DNS SANs (ignoring case).
    @ivar suffix: for a wildcard, C{.example.com} in lower case; else
        C{None}.
    """

    text: str
    uri: bool
    suffix: str | None

    def matches(self, names: CertificateNames) -> bool:
        """Whether a certificate with C{names} carries this name."""
        if self.uri:
            return self.text in names.uris
        if self.suffix is None:
            wanted = _dnsKey(self.text)
            return wanted in names.dnsNames or wanted in names.commonNames
        return any(
            _matchesWildcard(self.suffix, name)
            for name in (*names.dnsNames, *names.commonNames)
        )


def _dnsKey(name: str) -> str:
    # A single trailing dot (an absolute name) names the same host.
    name = name.lower()
    return name[:-1] if name.endswith(".") and len(name) > 1 else name


def _matchesWildcard(suffix: str, name: str) -> bool:
    if not name.endswith(suffix):
        return False
    label = name[: -len(suffix)]
    return bool(label) and "." not in label and _WILDCARD not in label


def parseClientName(text: str, option: str = "--tls-client-name") -> ClientName:
    """
    Validate one configured name.

    Refused: an empty name, leading or trailing blanks, control characters;
    in a URI, a C{*} (URIs are matched exactly, a wildcard there would never
    match what an operator meant); in any other name, a C{*} anywhere but as
    the whole leftmost label (C{*.*.com}, C{a*.com}, C{a.*.com}), a C{*}
    alone, and empty labels (C{a..com}, C{.example.com}).

    @raise InvalidClientName: with a one-line message.
    """
    prefix = f"{option} {text!r}"
    if not text:
        raise InvalidClientName(f"{option}: an empty name matches no certificate")
    if text != text.strip():
        raise InvalidClientName(f"{prefix}: leading or trailing blanks")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise InvalidClientName(f"{prefix}: control characters")
    if _SCHEME.match(text) and (
        "://" in text or text.lower().startswith(("urn:", "spiffe:"))
    ):
        if _WILDCARD in text:
            raise InvalidClientName(
                f"{prefix}: URIs are matched exactly; a * wildcard is only "
                "for DNS names"
            )
        return ClientName(text, uri=True, suffix=None)
    if _WILDCARD not in text:
        return ClientName(text, uri=False, suffix=None)
    labels = _dnsKey(text).split(".")
    if labels[0] != _WILDCARD or len(labels) < 2:
        raise InvalidClientName(
            f"{prefix}: a wildcard must be a whole leftmost label followed by "
            "a domain, as in *.example.com"
        )
    for label in labels[1:]:
        if label == _WILDCARD or _WILDCARD in label:
            raise InvalidClientName(
                f"{prefix}: only the leftmost label may be a wildcard "
                "(*.example.com matches one label)"
            )
        if not _LABEL.fullmatch(label):
            raise InvalidClientName(
                f"{prefix}: {label!r} is not a DNS label (empty, or characters "
                "other than letters, digits, - and _)"
            )
    return ClientName(text, uri=False, suffix="." + ".".join(labels[1:]))


def parseClientNames(
    texts: Iterable[str], option: str = "--tls-client-name"
) -> tuple[ClientName, ...]:
    """
    L{parseClientName} over every value of the repeatable option.

    @raise InvalidClientName: for the first bad value.
    """
    return tuple(parseClientName(text, option) for text in texts)


@dataclass(frozen=True)
class CertificateNames:
    """
    The names a certificate carries that C{--tls-client-name} looks at.

    @ivar commonNames: the subject's CNs, lower-cased, trailing dot dropped.
    @ivar dnsNames: the DNS SANs, the same way.
    @ivar uris: the URI SANs as they are.
    """

    commonNames: frozenset[str]
    dnsNames: frozenset[str]
    uris: frozenset[str]


def _cryptography(certificate: object) -> x509.Certificate:
    # pyOpenSSL's X509 (what Connection.get_peer_certificate gives) converts.
    if isinstance(certificate, x509.Certificate):
        return certificate
    converted: x509.Certificate = certificate.to_cryptography()  # type: ignore[attr-defined]
    return converted


def certificateNames(certificate: object) -> CertificateNames:
    """
    Read the subject CNs, DNS SANs and URI SANs.

    @param certificate: a C{cryptography.x509.Certificate}, or a pyOpenSSL
        C{X509}.
    @return: the names; a SAN extension that does not parse counts as none
        (so such a certificate is authorised by its CN alone, if at all).
    """
    cert = _cryptography(certificate)
    commonNames = frozenset(
        _dnsKey(attribute.value)
        for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if isinstance(attribute.value, str)
    )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return CertificateNames(commonNames, frozenset(), frozenset())
    return CertificateNames(
        commonNames,
        frozenset(_dnsKey(name) for name in san.get_values_for_type(x509.DNSName)),
        frozenset(san.get_values_for_type(x509.UniformResourceIdentifier)),
    )


def certificateAuthorised(certificate: object, names: Iterable[ClientName]) -> bool:
    """
    Whether C{certificate} carries one of the configured C{names}.

    @param certificate: the client's leaf certificate, a
        C{cryptography.x509.Certificate} or a pyOpenSSL C{X509}.
    @param names: from L{parseClientNames}; an empty list authorises no one
        (the caller skips this check when no name is configured).
    """
    carried = certificateNames(certificate)
    return any(name.matches(carried) for name in names)


def subjectLine(certificate: object) -> str:
    """
    The certificate's subject as one RFC 4514 line for logs
    (C{CN=client.example.com,O=Example}); RFC 4514 escapes make a newline or
    a comma inside a value harmless, and other control characters are
    escaped here so that a log line stays one line.
    """
    text = _cryptography(certificate).subject.rfc4514_string()
    return "".join(
        f"\\{ord(char):02x}" if ord(char) < 0x20 or ord(char) == 0x7F else char
        for char in text
    )


def nameVerifier(
    names: Iterable[ClientName],
    refused: Callable[[SSL.Connection, str], None],
) -> Callable[[SSL.Connection, crypto.X509, int, int, int], bool]:
    """
    A pyOpenSSL verify callback (C{Context.set_verify}) that adds the name
    check to OpenSSL's chain check, so that a certificate without an
    authorised name fails the handshake itself (the client gets a
    certificate alert and never a byte from the backend) instead of being
    closed after it.

    Chain errors stay errors; CA certificates (depth above 0) pass on
    OpenSSL's word; the client's own certificate (depth 0) must also carry
    one of C{names}. The callback never raises (pyOpenSSL would hold the
    exception and end the handshake with it): a certificate it cannot read
    is refused.

    @param names: from L{parseClientNames}.
    @param refused: called with the connection and the certificate's
        L{subjectLine} when a chain-valid certificate is refused for its
        names, so that the handshake failure's log line can name it; it
        must not raise.
    """
    authorised = tuple(names)

    def verify(
        connection: SSL.Connection,
        certificate: crypto.X509,
        error: int,
        depth: int,
        ok: int,
    ) -> bool:
        if not ok:
            return False
        if depth:
            return True
        try:
            if certificateAuthorised(certificate, authorised):
                return True
            subject = subjectLine(certificate)
        except Exception:
            subject = "(unreadable certificate)"
        refused(connection, subject)
        return False

    return verify
