"""
Tests for L{gateway.endpoints}: endpoint strings split as Twisted splits
them, checked in an operator's words, and given the listen backlog.
"""

from __future__ import annotations

import os

import trustme
from twisted.internet.endpoints import _parse
from twisted.trial.unittest import SynchronousTestCase

from gateway.endpoints import (
    LISTEN_BACKLOG,
    EndpointError,
    checkBackend,
    checkListen,
    checkMetrics,
    split,
    withBacklog,
)
from tests.test_tap import PYTHON_WORDS


class SplitTests(SynchronousTestCase):
    def test_likeTwisted(self) -> None:
        """
        Positional and keyword arguments come out as Twisted's own parser
        reads them, escapes included.
        """
        for description in [
            "tcp:7000",
            "tcp:7000:interface=127.0.0.1",
            r"tcp6:7000:interface=\:\:1",
            "tcp6:7000:interface=::1",
            "unix:/run/gw.sock:mode=660",
            r"tls:host=a\=b:port=1:trustRoots=x=y",
            "tcp:host=h:port=1:",
        ]:
            endpoint = split(description)
            args, kwargs = _parse(description)
            self.assertEqual(
                (endpoint.kind, list(endpoint.args), endpoint.kwargs),
                (args[0], args[1:], kwargs),
                description,
            )


class BacklogTests(SynchronousTestCase):
    """
    L{withBacklog} adds C{backlog=} where Twisted would default it to 50.
    """

    def test_added(self) -> None:
        suffix = f":backlog={LISTEN_BACKLOG}"
        for description in [
            "tcp:7000",
            "tcp:7000:interface=127.0.0.1",
            r"tcp6:7000:interface=\:\:1",
            "unix:/run/gateway/gw.sock",
            "unix:address=/run/gw.sock:mode=660",
        ]:
            self.assertEqual(withBacklog(description), description + suffix)

    def test_behindProxy(self) -> None:
        self.assertEqual(
            withBacklog("haproxy:tcp:7000"),
            f"haproxy:tcp:7000:backlog={LISTEN_BACKLOG}",
        )
        self.assertEqual(
            withBacklog("haproxy:unix:/run/gw.sock"),
            f"haproxy:unix:/run/gw.sock:backlog={LISTEN_BACKLOG}",
        )

    def test_stringWins(self) -> None:
        """
        A string that sets its backlog, by key or by position (Twisted's
        third argument for tcp and unix, second for tcp6), keeps it.
        """
        for description in [
            "tcp:7000:backlog=10",
            "tcp:7000:127.0.0.1:10",
            "tcp6:7000:10",
            "unix:/run/gw.sock:660:10",
            "haproxy:tcp:7000:backlog=10",
        ]:
            self.assertEqual(withBacklog(description), description)

    def test_otherKinds(self) -> None:
        """
        systemd's sockets are bound (with their backlog) by systemd.
        """
        for description in ["systemd:domain=INET:name=gateway", "none"]:
            self.assertEqual(withBacklog(description), description)

    def test_atLeast1024(self) -> None:
        """
        SPEC §2: at least 1024.
        """
        self.assertGreaterEqual(LISTEN_BACKLOG, 1024)


class CheckTests(SynchronousTestCase):
    """
    Each mistake is one sentence, in an operator's words, and says how to
    write the string instead.
    """

    def assertRefused(self, check, description: str, *expected: str) -> str:
        error = self.assertRaises(EndpointError, check, description)
        message = str(error)
        self.assertNotIn("\n", message)
        for word in PYTHON_WORDS:
            self.assertNotIn(word, message, (description, message))
        for text in expected:
            self.assertIn(text, message, description)
        return message

    def test_listen(self) -> None:
        for description, expected in [
            ("tcp", "no port"),
            ("tcp:", "no port"),
            ("tcp:x", "'x' is not a number from 0 to 65535"),
            ("tcp:-1", "not a number"),
            ("tcp:70000", "not a number"),
            ("tcp:7000:interface=", None),
            ("tcp:127.0.0.1:7000", "tcp:7000:interface=127.0.0.1"),
            ("tcp:7000:iface=127.0.0.1", "unknown key 'iface'"),
            ("tcp:7000:interface=not an address", "neither an IP address"),
            ("tcp:7000:backlog=0", "backlog='0'"),
            ("tcp:7000:backlog=many", "backlog='many'"),
            ("tcp:7000:1.2.3.4:5:6", "too many arguments"),
            ("tcp:port=1:2", "given twice"),
            ("tcp6:7000:interface=::1", r"tcp6:7000:interface=\:\:1"),
            ("tcp6:7000:interface=::1:backlog=5", r"interface=\:\:1:backlog=5"),
            ("tcp6:7000:interface=[::1]", r"tcp6:7000:interface=\:\:1"),
            ("tcp:7000:interface=fe80::1%eth0", r"interface=fe80\:\:1%eth0"),
            ("unix:", "no socket path"),
            ("unix:/nonexistent/dir/gw.sock", "directory /nonexistent/dir does not"),
            ("unix:/tmp/gw.sock:mode=rw", "mode='rw'"),
            ("unix:/tmp/gw.sock:lockfile=yes", "lockfile='yes'"),
            ("systemd:name=gateway", "domain=''"),
            ("systemd:domain=INET", "name="),
            ("systemd:domain=INET:name=a:index=0", "once"),
            ("systemd:domain=INET:index=first", "index='first'"),
            ("systemd:domain=INET4:name=gateway", "domain='INET4'"),
            ("ssl:7443", "--listen-tls"),
            ("ssl:7443:privateKey=k.pem:certKey=c.pem", "--listen-tls"),
            ("haproxy:", "haproxy:tcp:PORT"),
            ("haproxy:ssl:7443", "--listen-tls"),
            ("haproxy:haproxy:tcp:1", "once"),
            ("haproxy:tcp:x", "not a number"),
            ("bogus:1", "unknown endpoint kind 'bogus:'"),
            ("", "empty endpoint kind"),
            ("7000", "unknown endpoint kind '7000:'"),
        ]:
            if expected is None:
                checkListen(description)
            else:
                self.assertRefused(checkListen, description, expected)

    def test_listenAccepted(self) -> None:
        for description in [
            "tcp:0",
            "tcp:7000:interface=127.0.0.1",
            "tcp:port=7000:interface=localhost",
            r"tcp6:7000:interface=\:\:1",
            "tcp6:7000",
            "TCP:7000",
            "unix:gw.sock",
            f"unix:{os.getcwd()}/gw.sock:mode=0660:lockfile=0:backlog=5",
            "unix:@abstract",
            "systemd:domain=INET:name=gateway",
            "systemd:domain=INET6:index=0",
            "haproxy:tcp:7000",
            "haproxy:systemd:domain=INET:name=gateway",
        ]:
            checkListen(description)

    def test_unwritableDirectory(self) -> None:
        if os.getuid() == 0:
            self.skipTest("root may write anywhere")
        directory = self.mktemp()
        os.mkdir(directory, 0o500)
        self.assertRefused(checkListen, f"unix:{directory}/gw.sock", "is not writable")

    def test_backend(self) -> None:
        for description, expected in [
            ("tcp:host=x", "no port: write tcp:host=HOST:port=PORT"),
            ("tcp:port=9000", "no host"),
            ("tcp:host=x:port=y", "'y' is not a number from 1 to 65535"),
            ("tcp:host=x:port=0", "from 1 to 65535"),
            ("tcp:9000:127.0.0.1", "'127.0.0.1' is not a number"),
            ("tcp:host=::1:port=9000", r"tcp:host=\:\:1:port=9000"),
            ("tcp:host=x:port=1:timeout=1.5", "timeout='1.5'"),
            ("tcp:host=x:port=1:timeout=0", "timeout='0'"),
            ("tcp:host=x:port=1:tls=yes", "unknown key 'tls'"),
            ("tcp:host=bad host:port=1", "neither an IP address"),
            ("tls:h", "no port"),
            ("tls:h:1:trustRoots=/nonexistent", "trustRoots=/nonexistent does not"),
            ("tls:h:1:certificate=/nonexistent.pem", "no such file"),
            ("tls:h:1:endpoint=tcp\\:h\\:1", "endpoint="),
            ("unix:", "no path"),
            ("unix:path=", "no path"),
            ("unix:path=/x:lockfile=2", "lockfile='2'"),
            ("ssl:host=h:port=1", "does not check the backend's host name"),
            ("carrier-pigeon:coop", "unknown endpoint kind 'carrier-pigeon:'"),
            ("", "empty endpoint kind"),
        ]:
            self.assertRefused(checkBackend, description, expected)

    def test_backendAccepted(self) -> None:
        for description in [
            "tcp:host=127.0.0.1:port=9000",
            "tcp:127.0.0.1:9000",
            "tcp:host=backend.example.com:9000",
            r"tcp:host=\:\:1:port=9000",
            "tcp:host=x:port=1:timeout=5:bindAddress=127.0.0.1",
            "tls:backend.example.com:9443",
            "tls:host=backend.example.com:port=9443",
            "unix:path=/run/backend/backend.sock",
            "unix:/run/backend.sock:timeout=3",
        ]:
            checkBackend(description)

    def test_trustRoots(self) -> None:
        """
        A C{trustRoots=} directory must hold a certificate Twisted reads: a
        C{*.pem} file with a PEM certificate in it.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        description = f"tls:h:1:trustRoots={directory}"
        self.assertRefused(checkBackend, description, "holds no certificate")
        ca = trustme.CA()
        # Twisted skips files not named *.pem, and PEM that does not parse.
        ca.cert_pem.write_to_path(os.path.join(directory, "ca.crt"))
        with open(os.path.join(directory, "broken.pem"), "w") as file:
            file.write("-----BEGIN CERTIFICATE-----\nnot base64\n")
        self.assertRefused(checkBackend, description, "holds no certificate")
        ca.cert_pem.write_to_path(os.path.join(directory, "ca.pem"))
        checkBackend(description)

    def test_clientCertificate(self) -> None:
        """
        A C{tls:} backend's client certificate must come with its key, and
        they must match.
        """
        ca = trustme.CA()
        leaf = ca.issue_cert("client.example")
        other = ca.issue_cert("other.example")
        directory = self.mktemp()
        os.mkdir(directory)
        both = os.path.join(directory, "both.pem")
        leaf.private_key_and_cert_chain_pem.write_to_path(both)
        certOnly = os.path.join(directory, "cert.pem")
        leaf.cert_chain_pems[0].write_to_path(certOnly)
        key = os.path.join(directory, "key.pem")
        leaf.private_key_pem.write_to_path(key)
        otherKey = os.path.join(directory, "other.key")
        other.private_key_pem.write_to_path(otherKey)
        checkBackend(f"tls:h:1:certificate={both}")
        checkBackend(f"tls:h:1:certificate={certOnly}:privateKey={key}")
        self.assertRefused(
            checkBackend, f"tls:h:1:certificate={certOnly}", "no unencrypted PEM"
        )
        self.assertRefused(
            checkBackend,
            f"tls:h:1:certificate={certOnly}:privateKey={otherKey}",
            "does not match",
        )
        self.assertRefused(
            checkBackend, f"tls:h:1:certificate={key}", "no PEM certificate"
        )

    def test_trustRootsFile(self) -> None:
        path = self.mktemp()
        with open(path, "w") as file:
            file.write("")
        self.assertRefused(
            checkBackend, f"tls:h:1:trustRoots={path}", "is not a directory"
        )

    def test_metrics(self) -> None:
        """
        C{--metrics} takes any server endpoint; the usual kinds are checked
        as closely as listeners.
        """
        self.assertRefused(checkMetrics, "tcp:", "no port")
        self.assertRefused(checkMetrics, "tcp:x", "not a number")
        self.assertRefused(checkMetrics, "", "empty endpoint kind")
        checkMetrics("tcp:9180:interface=127.0.0.1")
        checkMetrics("ssl:9443:privateKey=key.pem")
