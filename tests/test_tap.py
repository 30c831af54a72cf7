"""
Tests for L{gateway.tap.Options}: every value checked before anything runs.
"""

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from gateway.tap import DEFAULT_LISTEN, DEFAULT_METRICS, Options


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def settings(options: Options) -> dict:
    # Everything but the loaded TLS material, which is an object.
    return {key: value for key, value in options.items() if key != "tls"}


class DefaultsTests(SynchronousTestCase):
    def test_defaults(self):
        """
        With no options: one plain listener on 127.0.0.1:7000, the demo
        backend, metrics on 127.0.0.1:9180 and the SPEC's defaults.
        """
        self.assertEqual(
            settings(parse()),
            {
                "listen": [DEFAULT_LISTEN],
                "listen-tls": [],
                "tls-cert": [],
                "tls-key": [],
                "tls-alpn": [],
                "tls-client-ca": None,
                "tls-min-version": "1.2",
                "backend": [],
                "backend-proxy-protocol": None,
                "client-framing": "lf",
                "backend-framing": "int32",
                "max-message-size": 65536,
                "max-connections": 10000,
                "connect-timeout": 10.0,
                "idle-timeout": 300.0,
                "drain-timeout": 30.0,
                "metrics": DEFAULT_METRICS,
            },
        )

    def test_everything(self):
        options = parse(
            "--listen",
            "tcp:7001",
            "--listen",
            "unix:/tmp/gw.sock",
            "--backend",
            "tcp:host=127.0.0.1:port=9000",
            "--backend",
            "unix:path=/tmp/backend.sock",
            "--client-framing",
            "crlf",
            "--backend-framing",
            "netstring",
            "--max-message-size",
            "1024",
            "--max-connections",
            "5",
            "--connect-timeout",
            "0.5",
            "--idle-timeout",
            "0",
            "--drain-timeout",
            "2",
            "--metrics",
            "none",
        )
        self.assertEqual(
            settings(options),
            {
                "listen": ["tcp:7001", "unix:/tmp/gw.sock"],
                "listen-tls": [],
                "tls-cert": [],
                "tls-key": [],
                "tls-alpn": [],
                "tls-client-ca": None,
                "tls-min-version": "1.2",
                "backend": [
                    "tcp:host=127.0.0.1:port=9000",
                    "unix:path=/tmp/backend.sock",
                ],
                "backend-proxy-protocol": None,
                "client-framing": "crlf",
                "backend-framing": "netstring",
                "max-message-size": 1024,
                "max-connections": 5,
                "connect-timeout": 0.5,
                "idle-timeout": 0.0,
                "drain-timeout": 2.0,
                "metrics": None,
            },
        )

    def test_tlsOnlyMeansNoDefaultPlainListener(self):
        """
        A gateway given only TLS listeners does not also open plain port 7000.
        """
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("gw.example")
        path = self.mktemp()
        cert.private_key_and_cert_chain_pem.write_to_path(path)
        options = parse("--listen-tls", "tcp:0", "--tls-cert", path)
        self.assertEqual((options["listen"], options["listen-tls"]), ([], ["tcp:0"]))
        self.assertIsNotNone(options["tls"])


class BadValueTests(SynchronousTestCase):
    """
    Each bad value is a L{UsageError} whose one line names the option.
    """

    def check(self, option: str, *args: str) -> None:
        error = self.assertRaises(UsageError, parse, *args)
        message = str(error)
        self.assertIn(option, message)
        self.assertNotIn("\n", message)

    def test_framings(self):
        self.check("--client-framing", "--client-framing", "xml")
        self.check("--backend-framing", "--backend-framing", "LF")

    def test_numbers(self):
        for option, value in [
            ("--max-message-size", "0"),
            ("--max-message-size", "1.5"),
            ("--max-message-size", "big"),
            ("--max-connections", "-1"),
            ("--connect-timeout", "0"),
            ("--connect-timeout", "nan"),
            ("--idle-timeout", "-0.1"),
            ("--idle-timeout", "inf"),
            ("--drain-timeout", "-5"),
        ]:
            self.check(option, option, value)

    def test_endpoints(self):
        self.check("--listen", "--listen", "tcp:port=notanumber")
        self.check("--listen", "--listen", "bogus:1")
        self.check("--listen-tls", "--listen-tls", "tcp:x", "--tls-cert", "c.pem")
        self.check("--backend", "--backend", "tcp:host=h")
        self.check("--metrics", "--metrics", "tcp:")

    def test_systemdNameMissing(self):
        """
        A systemd socket name that systemd did not pass is named in the error.
        """
        error = self.assertRaises(
            UsageError, parse, "--listen", "systemd:domain=INET:name=nosuchname"
        )
        self.assertIn("--listen", str(error))

    def test_tls(self):
        self.check("--listen-tls", "--listen-tls", "tcp:0")
        self.check("--tls-cert", "--listen-tls", "tcp:0", "--tls-cert", "/nonexistent")
        self.check("--tls-min-version", "--tls-min-version", "1.1")
