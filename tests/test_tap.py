"""
Tests for L{gateway.tap.Options}: every value checked before anything runs.
"""

import re
from ipaddress import ip_network

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from gateway.admission import AdmissionSettings
from gateway.health import HealthSettings
from gateway.tap import DEFAULT_LISTEN, DEFAULT_METRICS, Options


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def settings(options: Options) -> dict:
    # Every setting: not the loaded TLS material and the configuration
    # built (objects), nor the --config and --check switches.
    return {
        key: value
        for key, value in options.items()
        if key not in ("tls", "configuration", "config", "check")
    }


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
                "handshake-timeout": 10.0,
                "tls-client-name": [],
                "allow": [],
                "deny": [],
                "max-connections-per-source": 0,
                "max-connection-rate-per-source": 0.0,
                "admission": AdmissionSettings(),
                "websocket-path": "/",
                "websocket-origin": [],
                "websocket-message-type": "binary",
                "health-check": "connect",
                "health-check-interval": 2.0,
                "health-check-timeout": 2.0,
                "health-check-rise": 2,
                "health-check-fall": 3,
                "health-check-send": None,
                "health-check-expect": None,
                "health": HealthSettings(),
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
            "--handshake-timeout",
            "0",
            "--allow",
            "10.0.0.0/8",
            "--deny",
            "10.1.0.0/16",
            "--deny",
            "2001:db8::/32",
            "--max-connections-per-source",
            "50",
            "--max-connection-rate-per-source",
            "2.5",
            "--health-check",
            "probe",
            "--health-check-interval",
            "0.5",
            "--health-check-timeout",
            "0.25",
            "--health-check-rise",
            "1",
            "--health-check-fall",
            "4",
            "--health-check-send",
            r"ping\n",
            "--health-check-expect",
            "^pong",
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
                "handshake-timeout": 0.0,
                "tls-client-name": [],
                "allow": ["10.0.0.0/8"],
                "deny": ["10.1.0.0/16", "2001:db8::/32"],
                "max-connections-per-source": 50,
                "max-connection-rate-per-source": 2.5,
                "admission": AdmissionSettings(
                    allow=(ip_network("10.0.0.0/8"),),
                    deny=(ip_network("10.1.0.0/16"), ip_network("2001:db8::/32")),
                    maxConnectionsPerSource=50,
                    maxConnectionRatePerSource=2.5,
                ),
                "websocket-path": "/",
                "websocket-origin": [],
                "websocket-message-type": "binary",
                "health-check": "probe",
                "health-check-interval": 0.5,
                "health-check-timeout": 0.25,
                "health-check-rise": 1,
                "health-check-fall": 4,
                "health-check-send": r"ping\n",
                "health-check-expect": "^pong",
                "health": HealthSettings(
                    mode="probe",
                    interval=0.5,
                    timeout=0.25,
                    rise=1,
                    fall=4,
                    send=b"ping\n",
                    expect=re.compile("^pong"),
                    backendFraming="netstring",
                    maxMessageSize=1024,
                ),
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

    def test_healthChecks(self):
        """
        Each C{--health-check*} mistake is one line naming the option
        (SPEC section 8), in an operator's words.
        """
        for option, args in [
            ("--health-check", ["--health-check", "ping"]),
            ("--health-check-interval", ["--health-check-interval", "0"]),
            ("--health-check-timeout", ["--health-check-timeout", "-1"]),
            ("--health-check-rise", ["--health-check-rise", "0"]),
            ("--health-check-fall", ["--health-check-fall", "1.5"]),
            # A probe needs its message; send and expect need a probe.
            ("--health-check-send", ["--health-check", "probe"]),
            ("--health-check-send", ["--health-check-send", "x"]),
            ("--health-check-expect", ["--health-check-expect", "x"]),
            (
                "--health-check-send",
                ["--health-check", "probe", "--health-check-send", "a\\q"],
            ),
            (
                "--health-check-expect",
                [
                    "--health-check",
                    "probe",
                    "--health-check-send",
                    "x",
                    "--health-check-expect",
                    "(",
                ],
            ),
            # An lf backend cannot carry a probe holding a line end.
            (
                "--health-check-send",
                [
                    "--backend-framing",
                    "lf",
                    "--health-check",
                    "probe",
                    "--health-check-send",
                    "a\\nb",
                ],
            ),
        ]:
            self.check(option, *args)

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


# Words that give a Python exception away; none belongs in an operator's
# error line.
PYTHON_WORDS = (
    "Traceback",
    "__init__",
    "positional argument",
    "multiple values",
    "invalid literal",
    "Error",
    "Errno",
    "errno",
    "NoneType",
    "->",
    "b'",
    "_parse",
    "keyword argument",
    "object",
)


def certificateFile(testCase: SynchronousTestCase) -> str:
    import trustme

    path = testCase.mktemp()
    trustme.CA().issue_cert("gw.example").private_key_and_cert_chain_pem.write_to_path(
        path
    )
    return path


# (arguments, the option the line must name, a phrase it must hold)
BAD_ARGUMENTS = [
    (["--backend", "tcp:host=x"], "--backend", "no port"),
    (["--backend", "tcp:9000:127.0.0.1"], "--backend", "is not a number"),
    (["--backend", "tcp:host=::1:port=9000"], "--backend", r"host=\:\:1"),
    (["--backend", "tls:h:1:trustRoots=/nonexistent"], "--backend", "does not exist"),
    (["--backend", "ssl:host=h:port=1"], "--backend", "tls:HOST:PORT"),
    (["--backend", "unix:"], "--backend", "no path"),
    (["--listen", "tcp6:7000:interface=::1"], "--listen", r"interface=\:\:1"),
    (["--listen", "tcp:127.0.0.1:7000"], "--listen", "tcp:7000:interface=127.0.0.1"),
    (["--listen", "unix:/nonexistent/dir/gw.sock"], "--listen", "does not exist"),
    (["--listen", "ssl:7443"], "--listen", "use --listen-tls"),
    (["--listen", "tcp:99999"], "--listen", "from 0 to 65535"),
    (["--listen", "haproxy:tcp:x"], "--listen", "not a number"),
    (["--metrics", "tcp:"], "--metrics", "no port"),
    (["--metrics", "tcp:9180:interface=::1"], "--metrics", r"interface=\:\:1"),
    (["--client-framing", "json"], "--client-framing", "unknown framing"),
    (["--max-message-size", "lots"], "--max-message-size", "not an integer"),
    (["--idle-timeout", "-1"], "--idle-timeout", "0 or more"),
    (["--bogus"], "--bogus", "no such gateway option"),
    (["--listen"], "--listen", "needs a value"),
    (["--tls"], "--tls", "several options"),
    (["stray"], "'stray'", "every gateway setting is an option"),
    (
        ["--client-framing", "lf", "--client-framing", "crlf"],
        "--client-framing",
        "twice",
    ),
    (["--metrics=none", "--metrics", "tcp:1"], "--metrics", "twice"),
    (["--backend-framing", "int8"], "--backend-framing int8", "at most 255 bytes"),
    (["--client-framing", "int16"], "--client-framing int16", "at most 65535 bytes"),
    (
        ["--backend-framing", "int8", "--max-message-size", "256"],
        "--max-message-size",
        "255 or less",
    ),
    (["--tls-key", "k.pem"], "--tls-key", "no --listen-tls"),
    (["--tls-client-ca", "ca.pem"], "--tls-client-ca", "no --listen-tls"),
    (["--tls-min-version", "1.3"], "--tls-min-version", "no --listen-tls"),
    (["--tls-client-name", "a.example"], "--tls-client-name", "no --listen-tls"),
    (["--handshake-timeout", "-1"], "--handshake-timeout", "0 or more"),
    (["--max-connections-per-source", "x"], "--max-connections-per-source", "integer"),
    (
        ["--max-connection-rate-per-source", "-2"],
        "--max-connection-rate-per-source",
        "0 or more",
    ),
    (["--allow", "10.0.0.1/8"], "--allow", "host bits set"),
    (["--deny", "example.com"], "--deny", "not an IP address"),
    (["--backend-proxy-protocol", "v3"], "--backend-proxy-protocol", "v2-ssl"),
    (["--backend-framing", "websocket"], "--backend-framing", "client framing only"),
    (["--websocket-path", "/ws"], "--websocket-path", "--client-framing websocket"),
    (
        ["--websocket-origin", "https://a.example"],
        "--websocket-origin",
        "--client-framing websocket",
    ),
    (
        ["--websocket-message-type", "text"],
        "--websocket-message-type",
        "--client-framing websocket",
    ),
    (
        ["--client-framing", "websocket", "--websocket-path", "ws"],
        "--websocket-path 'ws'",
        "starts with /",
    ),
    (
        ["--client-framing", "websocket", "--websocket-path", "/ws?x=1"],
        "--websocket-path",
        "no query",
    ),
    (
        ["--client-framing", "websocket", "--websocket-message-type", "json"],
        "--websocket-message-type",
        "is not binary or text",
    ),
    *(
        (
            ["--client-framing", "websocket", "--websocket-origin", origin],
            f"--websocket-origin {origin!r}",
            phrase,
        )
        for origin, phrase in [
            ("app.example.com", "scheme://host"),
            ("https://app.example.com/", "no path"),
            ("https://App.Example.com", "lower case"),
            ("https://app.example.com:99999", "port 99999"),
            ("*", "scheme://host"),
        ]
    ),
]


class OperatorWordsTests(SynchronousTestCase):
    """
    Every mistake is one line naming the option, in an operator's words.
    """

    def test_table(self) -> None:
        for arguments, option, phrase in BAD_ARGUMENTS:
            error = self.assertRaises(UsageError, parse, *arguments)
            message = str(error)
            self.assertNotIn("\n", message)
            self.assertIn(option, message, arguments)
            self.assertIn(phrase, message, arguments)
            for word in PYTHON_WORDS:
                self.assertNotIn(word, message, (arguments, message))

    def test_tlsFilesWithoutListener(self) -> None:
        """
        A certificate given without a TLS listener would serve nothing: the
        gateway would silently listen in plaintext.
        """
        path = certificateFile(self)
        error = self.assertRaises(UsageError, parse, "--tls-cert", path)
        self.assertIn("--tls-cert: there is no --listen-tls listener", str(error))
        parse("--tls-cert", path, "--listen-tls", "tcp:0")

    def test_clientNames(self) -> None:
        """
        --tls-client-name needs --tls-client-ca (a certificate is only asked
        for with one); a name that could never match is refused; good names
        reach the TLS material.
        """
        path = certificateFile(self)
        tls = ["--listen-tls", "tcp:0", "--tls-cert", path]
        error = self.assertRaises(
            UsageError, parse, *tls, "--tls-client-name", "a.example"
        )
        self.assertIn("--tls-client-name: needs --tls-client-ca", str(error))
        withCA = [*tls, "--tls-client-ca", path]
        error = self.assertRaises(
            UsageError, parse, *withCA, "--tls-client-name", "a.*.example"
        )
        self.assertIn("--tls-client-name 'a.*.example'", str(error))
        options = parse(
            *withCA, "--tls-client-name", "*.a.example", "--tls-client-name", "b"
        )
        self.assertEqual(
            [name.text for name in options["tls"].current.clientNames],
            ["*.a.example", "b"],
        )

    def test_proxySSL(self) -> None:
        """
        v2-ssl is a --backend-proxy-protocol value.
        """
        options = parse("--backend-proxy-protocol", "v2-ssl")
        self.assertEqual(options["backend-proxy-protocol"], "v2-ssl")

    def test_framingLimits(self) -> None:
        """
        The largest size a framing can carry is accepted; one more is not.
        """
        for framing, limit in [("int8", 255), ("int16", 65535)]:
            for side in ("--client-framing", "--backend-framing"):
                options = parse(side, framing, "--max-message-size", str(limit))
                self.assertEqual(options["max-message-size"], limit)
                self.assertRaises(
                    UsageError,
                    parse,
                    side,
                    framing,
                    "--max-message-size",
                    str(limit + 1),
                )
        parse("--backend-framing", "int32", "--max-message-size", str(2**32 - 1))
        self.assertRaises(
            UsageError,
            parse,
            "--backend-framing",
            "int32",
            "--max-message-size",
            str(2**32),
        )

    def test_webSocket(self) -> None:
        """
        WebSocket clients' options, parsed; origins in the forms browsers
        send them.
        """
        origins = ["https://app.example.com", "http://127.0.0.1:8080", "null"]
        options = parse(
            "--client-framing",
            "websocket",
            "--websocket-path",
            "/ws/v1",
            "--websocket-message-type",
            "text",
            *[
                argument
                for origin in origins
                for argument in ("--websocket-origin", origin)
            ],
            "--websocket-origin",
            "https://[::1]:8443",
        )
        self.assertEqual(
            (
                options["client-framing"],
                options["websocket-path"],
                options["websocket-origin"],
                options["websocket-message-type"],
            ),
            ("websocket", "/ws/v1", [*origins, "https://[::1]:8443"], "text"),
        )

    def test_repeatable(self) -> None:
        """
        The repeatable options still repeat.
        """
        options = parse("--listen", "tcp:1", "--listen", "tcp:2", "--metrics", "none")
        self.assertEqual(options["listen"], ["tcp:1", "tcp:2"])


class UnderTwistdTests(SynchronousTestCase):
    """
    Run by twistd, a mistake ends the process with the one line on stderr:
    twistd would print its whole usage text before it
    (C{twisted.application.app.run}).
    """

    def test_oneLine(self) -> None:
        import sys

        from twisted.scripts.twistd import ServerOptions

        config = ServerOptions()
        error = self.assertRaises(
            SystemExit,
            config.parseOptions,
            ["-n", "gateway", "--backend", "tcp:host=x"],
        )
        prefix = " ".join(sys.argv[0:2])
        self.assertEqual(
            error.code,
            f"{prefix}: --backend 'tcp:host=x': no port: write tcp:host=HOST:port=PORT",
        )

    def test_table(self) -> None:
        """
        Every mistake of L{BAD_ARGUMENTS}, through twistd's own option
        parser, ends with its one line.
        """
        from twisted.scripts.twistd import ServerOptions

        for arguments, option, phrase in BAD_ARGUMENTS:
            error = self.assertRaises(
                SystemExit, ServerOptions().parseOptions, ["gateway", *arguments]
            )
            self.assertIsInstance(error.code, str)
            self.assertNotIn("\n", error.code)
            self.assertIn(option, error.code)
            self.assertIn(phrase, error.code)

    def test_help(self) -> None:
        """
        C{--help} prints the usage and exits 0.
        """
        import io
        from contextlib import redirect_stdout

        from twisted.scripts.twistd import ServerOptions

        out = io.StringIO()
        with redirect_stdout(out):
            error = self.assertRaises(
                SystemExit, ServerOptions().parseOptions, ["gateway", "--help"]
            )
        self.assertEqual(error.code, 0)
        self.assertIn("--max-message-size", out.getvalue())


class VersionTests(SynchronousTestCase):
    def test_line(self) -> None:
        """
        One line: the gateway's version, then Twisted's, Python's and
        OpenSSL's.
        """
        import platform
        import re

        from gateway import __version__
        from gateway.tap import versionLine
        from twisted import version

        line = versionLine()
        self.assertRegex(
            line,
            r"^gateway \S+ \(Twisted \S+, Python \S+, OpenSSL \d+\.\d+\.\d+\S*\)$",
        )
        self.assertIn(f"gateway {__version__} ", line)
        self.assertIn(f"Twisted {version.short()},", line)
        self.assertIn(f"Python {platform.python_version()},", line)
        self.assertIsNone(re.search(r"\n", line))
