"""
Tests for L{gateway.names}: the listener and backend names that metrics
labels and logs carry.
"""

from twisted.trial.unittest import SynchronousTestCase

from gateway.names import backendName, listenerName

# Things a label value must never carry: directories, key and certificate
# files, and the client-side details an endpoint string may hold.
SECRETS = ("/", "pem", "key", "interface", "10.0.0.1", "mode", "trustRoots")


class ListenerNameTests(SynchronousTestCase):
    """
    L{listenerName} is C{KIND:PORT} or C{KIND:NAME}, the TLS and PROXY
    protocol layers shown as prefixes, and nothing else of the description.
    """

    def check(self, cases: dict[tuple[str, bool], str]) -> None:
        for (description, tls), expected in cases.items():
            name = listenerName(description, tls=tls)
            self.assertEqual(name, expected, (description, tls))
            for secret in SECRETS:
                self.assertNotIn(secret, name, (description, name))

    def test_tcp(self) -> None:
        """
        A TCP listener is named by its port, positional or keyword; the
        interface it binds is left out.
        """
        self.check(
            {
                ("tcp:7000", False): "tcp:7000",
                ("tcp:7000:interface=10.0.0.1", False): "tcp:7000",
                ("tcp:port=7000:interface=10.0.0.1:backlog=50", False): "tcp:7000",
                ("tcp:0:interface=127.0.0.1", False): "tcp:0",
            }
        )

    def test_tcp6(self) -> None:
        """
        A tcp6 listener keeps its kind; the escaped colons of its interface
        do not confuse the parse.
        """
        self.check(
            {
                ("tcp6:7000", False): "tcp6:7000",
                ("tcp6:7000:interface=\\:\\:1", False): "tcp6:7000",
                ("tcp6:port=7000:interface=\\:\\:", False): "tcp6:7000",
            }
        )

    def test_unix(self) -> None:
        """
        A UNIX socket listener is named by the socket's file name, never its
        directory.
        """
        self.check(
            {
                ("unix:/run/gateway/gw.sock", False): "unix:gw.sock",
                ("unix:address=/run/gateway/gw.sock:mode=660", False): "unix:gw.sock",
                ("unix:gw.sock", False): "unix:gw.sock",
                ("unix:/run/gateway/gw.sock", True): "tls+unix:gw.sock",
            }
        )

    def test_systemd(self) -> None:
        """
        A socket passed by systemd is named by its FileDescriptorName, or
        its index when it has none.
        """
        self.check(
            {
                ("systemd:domain=INET:name=gateway", False): "systemd:gateway",
                ("systemd:domain=INET6:index=1", False): "systemd:1",
                ("systemd:domain=INET:name=gateway-tls", True): (
                    "tls+systemd:gateway-tls"
                ),
            }
        )

    def test_haproxy(self) -> None:
        """
        Behind the C{haproxy:} wrapper the inner listener's name gets a
        C{proxy+} prefix.
        """
        self.check(
            {
                ("haproxy:tcp:7000", False): "proxy+tcp:7000",
                ("haproxy:tcp:7000:interface=10.0.0.1", False): "proxy+tcp:7000",
                ("haproxy:tcp:7443", True): "proxy+tls:7443",
                ("haproxy:unix:/run/gateway/gw.sock", False): "proxy+unix:gw.sock",
                ("haproxy:systemd:domain=INET:name=gateway", False): (
                    "proxy+systemd:gateway"
                ),
            }
        )

    def test_tls(self) -> None:
        """
        TLS over TCP (either family) is C{tls:PORT}; over anything else the
        kind gets a C{tls+} prefix.
        """
        self.check(
            {
                ("tcp:7443", True): "tls:7443",
                ("tcp:7443:interface=10.0.0.1", True): "tls:7443",
                ("tcp6:7443:interface=\\:\\:1", True): "tls:7443",
            }
        )

    def test_keyFilesLeftOut(self) -> None:
        """
        A Twisted C{ssl:} listener names its key and certificate files in
        the description; the name keeps only the port.
        """
        self.check(
            {
                (
                    "ssl:7443:privateKey=/etc/gw/key.pem:certKey=/etc/gw/cert.pem",
                    False,
                ): ("ssl:7443"),
                ("ssl:port=7443:privateKey=/etc/gw/key.pem", False): "ssl:7443",
            }
        )

    def test_pathOfAnotherKind(self) -> None:
        """
        An endpoint kind from a plugin whose first argument is a path gets
        only the last component of it.
        """
        self.check({("acme:/srv/certs:tcp:443", False): "acme:certs"})


class BackendNameTests(SynchronousTestCase):
    """
    L{backendName} is C{KIND:HOST:PORT} or C{unix:FILE}.
    """

    def check(self, cases: dict[str, str]) -> None:
        for description, expected in cases.items():
            name = backendName(description)
            self.assertEqual(name, expected, description)
            for secret in SECRETS:
                self.assertNotIn(secret, name, (description, name))

    def test_tcp(self) -> None:
        """
        A TCP backend is named by its host and port, keyword or positional;
        its other arguments are left out.
        """
        self.check(
            {
                "tcp:host=backend.example:port=9000": "tcp:backend.example:9000",
                "tcp:host=127.0.0.1:port=9000:timeout=5": "tcp:127.0.0.1:9000",
                "tcp:backend.example:9000": "tcp:backend.example:9000",
            }
        )

    def test_tls(self) -> None:
        """
        A TLS backend is named by its host and port; the trust roots and any
        client certificate or key files are left out.
        """
        self.check(
            {
                "tls:backend.example:9443": "tls:backend.example:9443",
                "tls:backend.example:9443:trustRoots=/etc/gateway/roots": (
                    "tls:backend.example:9443"
                ),
                "tls:host=backend.example:port=9443"
                ":certificate=/etc/gateway/client.pem"
                ":privateKey=/etc/gateway/client.key": "tls:backend.example:9443",
            }
        )

    def test_unix(self) -> None:
        """
        A UNIX socket backend is named by the socket's file name only.
        """
        self.check(
            {
                "unix:path=/run/app/app.sock": "unix:app.sock",
                "unix:path=/run/app/app.sock:timeout=5": "unix:app.sock",
                "unix:/run/app/app.sock": "unix:app.sock",
            }
        )
