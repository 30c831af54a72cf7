"""
Tests for L{gateway.certnames}: C{--tls-client-name} validation and
matching, on certificates issued by trustme and built with cryptography.
"""

import datetime

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.trial.unittest import SynchronousTestCase

from gateway.certnames import (
    InvalidClientName,
    certificateAuthorised,
    certificateNames,
    nameVerifier,
    parseClientName,
    parseClientNames,
    subjectLine,
)

# One key for every built certificate: only the names matter here.
KEY = ec.generate_private_key(ec.SECP256R1())


def build(subject=(), dns=(), uris=(), emails=(), rawSAN=None):
    """
    A self-signed certificate with the given subject attributes
    (C{(oid, value)} pairs) and SANs; C{rawSAN} replaces the SAN extension
    with one of those bytes (to test a malformed one).
    """
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in subject])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    general = (
        [x509.DNSName(value) for value in dns]
        + [x509.UniformResourceIdentifier(value) for value in uris]
        + [x509.RFC822Name(value) for value in emails]
    )
    if rawSAN is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME, rawSAN
            ),
            critical=False,
        )
    elif general:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(general), critical=False
        )
    return builder.sign(KEY, hashes.SHA256())


def cn(value):
    return build(subject=[(NameOID.COMMON_NAME, value)])


def issued(*identities, common_name=None):
    """
    A client certificate issued by a trustme CA, as C{--tls-client-ca}
    deployments get them.
    """
    leaf = trustme.CA().issue_cert(*identities, common_name=common_name)
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())


def allowed(certificate, *names):
    return certificateAuthorised(certificate, parseClientNames(names))


class ParseTests(SynchronousTestCase):
    """
    L{parseClientName} refuses names that cannot mean what they say, in
    one line naming the option.
    """

    def assertRefused(self, text, fragment):
        error = self.assertRaises(InvalidClientName, parseClientName, text)
        self.assertIn(fragment, str(error))
        self.assertTrue(str(error).startswith("--tls-client-name"), str(error))
        self.assertNotIn("\n", str(error))

    def test_wildcards(self):
        for text in ("*.*.com", "*.a.*.com"):
            self.assertRefused(text, "only the leftmost label may be a wildcard")
        for text in ("a*.com", "*a.example.com", "a.*.com", "foo.*", "*", "*."):
            self.assertRefused(text, "a wildcard must be a whole leftmost label")
        self.assertRefused("*..com", "is not a DNS label")
        self.assertRefused("*.exa mple.com", "is not a DNS label")

    def test_empty(self):
        error = self.assertRaises(InvalidClientName, parseClientName, "")
        self.assertEqual(
            str(error), "--tls-client-name: an empty name matches no certificate"
        )

    def test_blanksAndControls(self):
        self.assertRefused(" client.example.com", "leading or trailing blanks")
        self.assertRefused("client\n.example.com", "control characters")

    def test_uriWildcard(self):
        self.assertRefused("spiffe://example.org/*", "URIs are matched exactly")

    def test_kinds(self):
        self.assertTrue(parseClientName("spiffe://example.org/ns/a").uri)
        self.assertTrue(parseClientName("urn:uuid:1234").uri)
        self.assertTrue(parseClientName("https://example.org/client").uri)
        self.assertFalse(parseClientName("client.example.com").uri)
        # A common name need not be a host name.
        self.assertFalse(parseClientName("Orders Service").uri)
        self.assertEqual(parseClientName("*.Example.COM").suffix, ".example.com")
        self.assertIsNone(parseClientName("example.com").suffix)

    def test_optionNamed(self):
        error = self.assertRaises(
            InvalidClientName,
            parseClientNames,
            ["ok.example.com", ""],
            "names",
        )
        self.assertTrue(str(error).startswith("names:"))


class MatchTests(SynchronousTestCase):
    """
    L{certificateAuthorised}: subject CN, DNS SANs and URI SANs.
    """

    def test_dnsSAN(self):
        certificate = issued("client.example.com", "other.example.net")
        self.assertTrue(allowed(certificate, "client.example.com"))
        self.assertTrue(allowed(certificate, "nope.example.com", "other.example.net"))
        self.assertFalse(allowed(certificate, "server.example.com"))

    def test_caseInsensitiveDNS(self):
        self.assertTrue(allowed(issued("Client.Example.com"), "CLIENT.example.COM"))
        self.assertTrue(allowed(issued("client.example.com"), "*.EXAMPLE.com"))

    def test_trailingDot(self):
        self.assertTrue(allowed(issued("client.example.com"), "client.example.com."))

    def test_commonName(self):
        """
        The subject CN counts, with no SAN at all or besides the SANs.
        """
        self.assertTrue(allowed(cn("orders"), "orders"))
        self.assertTrue(allowed(cn("Orders Service"), "orders service"))
        self.assertFalse(allowed(cn("orders"), "billing"))
        certificate = issued("a.example.com", common_name="billing.internal")
        self.assertTrue(allowed(certificate, "billing.internal"))
        self.assertTrue(allowed(certificate, "a.example.com"))

    def test_wildcardOneLabel(self):
        """
        C{*.example.com} matches one label: not two, not none, and not a
        name that merely ends in the same letters.
        """
        self.assertTrue(allowed(issued("a.example.com"), "*.example.com"))
        self.assertFalse(allowed(issued("a.b.example.com"), "*.example.com"))
        self.assertFalse(allowed(issued("example.com"), "*.example.com"))
        self.assertFalse(allowed(issued("aexample.com"), "*.example.com"))
        self.assertFalse(allowed(issued("a.example.com.evil"), "*.example.com"))
        self.assertTrue(allowed(cn("a.example.com"), "*.example.com"))
        self.assertFalse(allowed(cn("a.b.example.com"), "*.example.com"))

    def test_certificateWildcardLiteral(self):
        """
        A client certificate's own wildcard is no wildcard: it does not
        match a configured wildcard, nor a configured name under it.
        """
        certificate = build(dns=["*.example.com"])
        self.assertFalse(allowed(certificate, "*.example.com"))
        self.assertFalse(allowed(certificate, "a.example.com"))

    def test_uriSAN(self):
        """
        URI SANs match exactly, case included; they are not matched as
        DNS names, nor DNS names as URIs.
        """
        spiffe = "spiffe://example.org/ns/prod/sa/orders"
        certificate = build(uris=[spiffe], dns=["orders.example.org"])
        self.assertTrue(allowed(certificate, spiffe))
        self.assertFalse(allowed(certificate, spiffe.upper()))
        self.assertFalse(allowed(certificate, "spiffe://example.org/ns/prod"))
        self.assertFalse(allowed(certificate, spiffe + "/x"))
        self.assertFalse(allowed(build(dns=["orders.example.org"]), spiffe))
        # A CN that happens to look like the URI is not a URI SAN.
        self.assertFalse(allowed(cn(spiffe), spiffe))

    def test_emailNotAName(self):
        """
        An e-mail SAN is not one of the names looked at.
        """
        certificate = issued("client@example.com")
        self.assertFalse(allowed(certificate, "client@example.com"))

    def test_nothing(self):
        self.assertFalse(allowed(build(), "client.example.com"))
        self.assertFalse(allowed(issued("client.example.com")))

    def test_malformedSAN(self):
        """
        A SAN extension that does not parse counts as no SAN: the CN alone
        can still authorise.
        """
        certificate = build(
            subject=[(NameOID.COMMON_NAME, "orders")], rawSAN=b"\x30\x03\x82\x01"
        )
        names = certificateNames(certificate)
        self.assertEqual(names.dnsNames, frozenset())
        self.assertTrue(allowed(certificate, "orders"))
        self.assertFalse(allowed(certificate, "other"))

    def test_pyOpenSSL(self):
        """
        A pyOpenSSL certificate (what a TLS connection gives) is accepted.
        """
        original = issued("client.example.com", common_name="client")
        certificate = crypto.X509.from_cryptography(original)
        self.assertTrue(allowed(certificate, "client.example.com"))
        self.assertEqual(subjectLine(certificate), subjectLine(original))


class SubjectLineTests(SynchronousTestCase):
    """
    L{subjectLine} names a certificate in one log line.
    """

    def test_rfc4514(self):
        certificate = build(
            subject=[
                (NameOID.COUNTRY_NAME, "FR"),
                (NameOID.ORGANIZATION_NAME, "Example, Inc."),
                (NameOID.COMMON_NAME, "orders"),
            ]
        )
        self.assertEqual(subjectLine(certificate), "CN=orders,O=Example\\, Inc.,C=FR")

    def test_trustme(self):
        certificate = issued("client.example.com", common_name="client")
        self.assertIn("CN=client", subjectLine(certificate))

    def test_oneLine(self):
        """
        Control characters inside a value cannot break the log line.
        """
        line = subjectLine(cn("evil\nCN=admin\r\x00"))
        self.assertNotIn("\n", line)
        self.assertNotIn("\r", line)
        self.assertNotIn("\x00", line)
        self.assertTrue(line.startswith("CN=evil"))

    def test_empty(self):
        self.assertEqual(subjectLine(build()), "")


def handshake(client, server):
    """
    Run a TLS handshake between two memory-BIO pyOpenSSL connections,
    passing bytes until both ends are done; an end's C{SSL.Error} escapes.
    """
    done = set()
    for _ in range(20):
        for connection in (client, server):
            if connection not in done:
                try:
                    connection.do_handshake()
                    done.add(connection)
                except SSL.WantReadError:
                    pass
        for source, sink in ((client, server), (server, client)):
            try:
                sink.bio_write(source.bio_read(65536))
            except SSL.WantReadError:
                pass
        if len(done) == 2:
            return
    raise AssertionError("handshake did not finish")


class NameVerifierTests(SynchronousTestCase):
    """
    L{nameVerifier} makes a certificate without an authorised name fail
    the handshake, on real pyOpenSSL sessions with a CA, an intermediate CA
    and leaf certificates from trustme.
    """

    def setUp(self):
        self.root = trustme.CA()
        self.intermediate = self.root.create_child_ca()
        self.refusals = []

    def connect(self, names, leaf):
        """
        Handshake a client presenting C{leaf} with a server that trusts the
        root and wants one of C{names}; return the server's connection.
        """
        serverContext = SSL.Context(SSL.TLS_METHOD)
        self.root.issue_cert("gateway.example.com").configure_cert(serverContext)
        self.root.configure_trust(serverContext)
        serverContext.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
            nameVerifier(
                parseClientNames(names),
                lambda connection, subject: self.refusals.append(subject),
            ),
        )
        clientContext = SSL.Context(SSL.TLS_METHOD)
        self.root.configure_trust(clientContext)
        leaf.configure_cert(clientContext)
        server = SSL.Connection(serverContext, None)
        server.set_accept_state()
        client = SSL.Connection(clientContext, None)
        client.set_connect_state()
        handshake(client, server)
        return server

    def test_allowedName(self):
        """
        A leaf issued by an intermediate CA, carrying an allowed name,
        completes: the CA certificates are not held to the names.
        """
        leaf = self.intermediate.issue_cert("orders.example.com")
        server = self.connect(["*.example.com"], leaf)
        self.assertIsNotNone(server.get_peer_certificate())
        self.assertEqual(self.refusals, [])

    def test_wrongName(self):
        """
        A valid chain with the wrong name fails the handshake, and the
        refusal names the certificate's subject.
        """
        leaf = self.intermediate.issue_cert("a.b.example.com", common_name="intruder")
        self.assertRaises(SSL.Error, self.connect, ["*.example.com", "orders"], leaf)
        [subject] = self.refusals
        self.assertIn("CN=intruder", subject)

    def test_untrustedChain(self):
        """
        A certificate from another CA still fails on its chain, whatever
        its names: the name check adds to OpenSSL's, never replaces it.
        """
        stranger = trustme.CA().issue_cert("orders.example.com")
        self.assertRaises(SSL.Error, self.connect, ["orders.example.com"], stranger)
        self.assertEqual(self.refusals, [])

    def test_unreadableIsRefused(self):
        """
        A certificate the check cannot read is refused, not raised through
        pyOpenSSL.
        """

        class Broken:
            def to_cryptography(self):
                raise ValueError("unreadable")

        verify = nameVerifier(
            parseClientNames(["orders"]), lambda c, s: self.refusals.append(s)
        )
        self.assertFalse(verify(None, Broken(), 0, 0, 1))
        self.assertEqual(self.refusals, ["(unreadable certificate)"])
        self.assertTrue(verify(None, Broken(), 0, 1, 1))
        self.assertFalse(verify(None, Broken(), 20, 1, 0))
