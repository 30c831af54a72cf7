"""
Tests for L{gateway.config}: one table of settings, read from the command
line and from a TOML file through one validation path (SPEC sections 2, 7).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from contextlib import redirect_stdout
from typing import Any

import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from gateway.codec import FRAMINGS
from gateway.config import (
    DEFAULT_LISTEN,
    FRAMING_LIMITS,
    SERVICE_KEYS,
    SETTINGS,
    SETTINGS_TABLE,
    ConfigError,
    fromCommandLine,
    parseText,
    toTOML,
)
from gateway.tap import Options

FILE = "gateway.toml"
GOOD = """
metrics = "tcp:9180:interface=127.0.0.1"
max-connections = 500
drain-timeout = 5

[defaults]
idle-timeout = 120

[services.orders]
listen = ["tcp:7000:interface=127.0.0.1"]
client-framing = "lf"
backend-framing = "int32"
backend = ["tcp:host=10.0.0.5:port=9000", "tcp:host=10.0.0.6:port=9000"]

[services.quotes]
listen = "tcp:7001:interface=127.0.0.1"
client-framing = "crlf"
backend-framing = "netstring"
idle-timeout = 0
backend = "unix:path=/run/quotes.sock"
"""


def parse(text: str) -> Any:
    return parseText(text.encode("utf-8"), FILE)


def writeFile(testCase: SynchronousTestCase, text: str) -> str:
    directory = tempfile.mkdtemp()
    testCase.addCleanup(shutil.rmtree, directory, True)
    path = os.path.join(directory, "gateway.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


class TableTests(SynchronousTestCase):
    """
    The options are made from the table, so an option and a key agree.
    """

    def test_everySettingIsAnOption(self) -> None:
        """
        Every setting of the table is a long option of C{twistd gateway},
        with the table's default.
        """
        options = Options()
        for setting in SETTINGS_TABLE:
            self.assertIn(setting.name + "=", options.longOpt)
            if not setting.repeatable:
                self.assertEqual(options[setting.name], setting.default)
            else:
                self.assertEqual(options[setting.name], [])

    def test_helpFromTable(self) -> None:
        """
        C{--help} shows the table's help text of a repeatable option.
        """
        text = str(Options())
        self.assertIn("--backend", text)
        self.assertIn("round robin", text)
        self.assertIn("--config", text)
        self.assertIn("--check", text)

    def test_noReactor(self) -> None:
        """
        L{gateway.config} imports no reactor, so documentation tools can read
        the table.
        """
        import subprocess
        import sys

        code = (
            "import sys, gateway.config;"
            " print('twisted.internet.reactor' in sys.modules)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        self.assertEqual(out.stdout.strip(), "False")


class FileTests(SynchronousTestCase):
    """
    A configuration file: its shape, and every mistake as one line naming
    the file, the service and the key.
    """

    def test_good(self) -> None:
        """
        Process-wide keys, defaults, and services; a repeatable key takes a
        single string too.
        """
        configuration = parse(GOOD)
        self.assertEqual(
            configuration.process,
            {
                "max-connections": 500,
                "drain-timeout": 5.0,
                "metrics": "tcp:9180:interface=127.0.0.1",
            },
        )
        self.assertEqual(list(configuration.services), ["orders", "quotes"])
        orders = configuration.services["orders"]
        quotes = configuration.services["quotes"]
        self.assertEqual(orders["idle-timeout"], 120.0)
        self.assertEqual(quotes["idle-timeout"], 0.0)
        self.assertEqual(quotes["listen"], ("tcp:7001:interface=127.0.0.1",))
        self.assertEqual(quotes["backend"], ("unix:path=/run/quotes.sock",))
        self.assertEqual(orders["max-connections"], 10000)
        self.assertEqual(orders["connect-timeout"], 10.0)

    def assertError(self, text: str, line: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse(text)
        self.assertEqual(str(caught.exception), line)
        self.assertNotIn("\n", str(caught.exception))

    def test_badValues(self) -> None:
        """
        Each bad value gives one line naming the file, the service and the
        key, in the words the option's error uses.
        """
        service = '[services.orders]\nlisten = ["tcp:7000"]\n'
        cases = {
            'backend-framing = "int64"': (
                "gateway.toml: services.orders: backend-framing: unknown framing"
                f" 'int64'; choose one of {', '.join(FRAMINGS)}"
            ),
            "max-message-size = 0": (
                "gateway.toml: services.orders: max-message-size: 0 is not an"
                " integer of 1 or more"
            ),
            "idle-timeout = -1": (
                "gateway.toml: services.orders: idle-timeout: -1 is not a number"
                " of 0 or more"
            ),
            "connect-timeout = true": (
                "gateway.toml: services.orders: connect-timeout: True is not a"
                " number of more than 0"
            ),
            "max-connections = 1.5": (
                "gateway.toml: services.orders: max-connections: 1.5 is not an"
                " integer of 1 or more"
            ),
            'tls-min-version = "1.1"': (
                "gateway.toml: services.orders: tls-min-version: '1.1' is not 1.2"
                " or 1.3"
            ),
            'backend-proxy-protocol = "v3"': (
                "gateway.toml: services.orders: backend-proxy-protocol: 'v3' is"
                " not v1, v2 or v2-ssl"
            ),
            'backend = ["tcp:host=10.0.0.5"]': (
                "gateway.toml: services.orders: backend: 'tcp:host=10.0.0.5':"
            ),
            "client-framing = 8": (
                "gateway.toml: services.orders: client-framing: 8 is not a"
                " string; write it in quotes"
            ),
            'client-framing = "int8"': (
                "gateway.toml: services.orders: client-framing: int8 carries at"
                " most 255 bytes per message, but max-message-size is 65536"
                " (its default): give max-message-size 255 or less, or a wider"
                " framing"
            ),
            'tls-cert = ["x.pem"]': (
                "gateway.toml: services.orders: tls-cert: there is no listen-tls"
                " listener for it to apply to: add one (listen-tls tcp:7443) or"
                " leave tls-cert out"
            ),
            "backend = 5": (
                "gateway.toml: services.orders: backend: 5 is not a string or an"
                " array of strings"
            ),
            "colour = 5": "gateway.toml: services.orders: colour: unknown key",
            'health-check = "probe"': (
                "gateway.toml: services.orders: health-check-send: health-check"
                " probe needs a message to send"
            ),
            'health-check = "ping"': (
                "gateway.toml: services.orders: health-check: unknown mode 'ping'"
                " (choose none, connect, probe)"
            ),
            'allow = ["10.0.0.1/8"]': "gateway.toml: services.orders: allow:",
            'websocket-path = "/ws"': (
                "gateway.toml: services.orders: websocket-path: only WebSocket"
                " clients have it: add client-framing websocket or leave"
                " websocket-path out"
            ),
            'backend-framing = "websocket"': (
                "gateway.toml: services.orders: backend-framing: websocket:"
                " WebSocket is a client framing only"
            ),
            'tls-client-name = ["a.example"]': (
                "gateway.toml: services.orders: tls-client-name: there is no"
                " listen-tls listener"
            ),
            "handshake-timeout = -1": (
                "gateway.toml: services.orders: handshake-timeout: -1 is not a"
                " number of 0 or more"
            ),
            "health-check-rise = 0": (
                "gateway.toml: services.orders: health-check-rise: 0 is not an"
                " integer of 1 or more"
            ),
            "drain-timeout = 5": (
                "gateway.toml: services.orders: drain-timeout: a process-wide key:"
                " put it at the top of the file"
            ),
            "backends = []": (
                "gateway.toml: services.orders: backends: unknown key (did you"
                " mean backend?)"
            ),
        }
        for line, expected in cases.items():
            with self.assertRaises(ConfigError, msg=line) as caught:
                parse(service + line + "\n")
            self.assertTrue(
                str(caught.exception).startswith(expected),
                (line, str(caught.exception)),
            )
            self.assertNotIn("\n", str(caught.exception))

    def test_listenMalformed(self) -> None:
        self.assertError(
            '[services.orders]\nlisten = ["tcp:http"]\n',
            "gateway.toml: services.orders: listen: 'tcp:http': port 'http' is"
            " not a number from 0 to 65535: write tcp:PORT[:interface=ADDRESS]",
        )

    def test_tlsFiles(self) -> None:
        """
        TLS files are read and checked; a missing one names its key.
        """
        with self.assertRaises(ConfigError) as caught:
            parse(
                '[services.q]\nlisten-tls = ["tcp:7443"]\n'
                'tls-cert = ["/nonexistent/q.pem"]\n'
            )
        self.assertEqual(
            str(caught.exception),
            "gateway.toml: services.q: tls-cert: /nonexistent/q.pem: cannot"
            " read: No such file or directory",
        )
        ca = trustme.CA()
        path = writeFile(self, "")
        ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(path)
        configuration = parse(
            f'[services.q]\nlisten-tls = ["tcp:7443"]\ntls-cert = ["{path}"]\n'
        )
        self.assertIsNotNone(configuration.services["q"].tls)
        self.assertError(
            '[services.q]\nlisten-tls = ["tcp:7443"]\n',
            "gateway.toml: services.q: listen-tls: needs at least one tls-cert",
        )

    def test_shape(self) -> None:
        """
        Unknown top-level keys, a service without a listener, a listener in
        two services, a bad service name, no service at all, a syntax error
        (with the parser's line): each one line.
        """
        self.assertError(
            'colour = "red"\n[services.a]\nlisten = "tcp:1"\n',
            "gateway.toml: colour: unknown key",
        )
        self.assertError(
            'idle-timeout = 5\n[services.a]\nlisten = "tcp:1"\n',
            "gateway.toml: idle-timeout: a service key: put it in [defaults] or"
            " in a [services.NAME] table",
        )
        self.assertError(
            '[services.a]\nbackend = "tcp:host=h:port=1"\n',
            "gateway.toml: services.a: listen: the service has no listener: give"
            " listen or listen-tls",
        )
        self.assertError(
            '[services.a]\nlisten = "tcp:1"\n[services.b]\nlisten-tls = "tcp:1"\n'
            'tls-cert = "x"\n',
            "gateway.toml: services.b: tls-cert: x: cannot read: No such file or"
            " directory",
        )
        self.assertError(
            '[services.a]\nlisten = "tcp:1"\n[services.b]\nlisten = ["tcp:1"]\n',
            "gateway.toml: services.b: listen: 'tcp:1' is a listener of"
            " services.a too: a listener belongs to one service",
        )
        self.assertError(
            '[services.Orders]\nlisten = "tcp:1"\n',
            "gateway.toml: services.Orders: not a service name: use 1 to 32 of"
            " a-z, 0-9, _ and -, starting with a letter or a digit",
        )
        self.assertError(
            'metrics = "none"\n',
            "gateway.toml: no [services.NAME] table: the file serves nothing",
        )
        self.assertError(
            '[services.a]\nlisten = "tcp:1"\nbackend = [\n',
            "gateway.toml: TOML syntax error: Invalid value (at end of document)",
        )
        self.assertError(
            "[services.a]\nlisten = tcp:1\n",
            "gateway.toml: TOML syntax error: Invalid value (at line 2, column 10)",
        )
        self.assertError(
            'max-connections = 0\n[services.a]\nlisten = "tcp:1"\n',
            "gateway.toml: max-connections: 0 is not an integer of 1 or more",
        )
        self.assertError(
            '[defaults]\nlisten-tl = "x"\n[services.a]\nlisten = "tcp:1"\n',
            "gateway.toml: defaults: listen-tl: unknown key (did you mean listen-tls?)",
        )


class CommandLineTests(SynchronousTestCase):
    """
    C{--config} and C{--check} on the command line.
    """

    def parse(self, *arguments: str) -> Options:
        options = Options()
        options.parseOptions(list(arguments))
        return options

    def test_configAlone(self) -> None:
        """
        With C{--config}, any other gateway option but C{--check} is refused.
        """
        path = writeFile(self, GOOD)
        for option in (
            ["--listen", "tcp:7000"],
            ["--client-framing", "crlf"],
            ["--metrics", "none"],
            ["--drain-timeout", "3"],
        ):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse("--config", path, *option)
            name = option[0][2:]
            self.assertEqual(
                str(caught.exception),
                f"{option[0]}: not with --config: the file describes every"
                f" service; write it there ({name} = ...)",
            )

    def test_config(self) -> None:
        """
        The file's services are the configuration.
        """
        options = self.parse("--config", writeFile(self, GOOD))
        self.assertEqual(list(options["configuration"].services), ["orders", "quotes"])

    def test_configError(self) -> None:
        """
        A bad file is a usage error naming the file.
        """
        path = writeFile(self, '[services.a]\nlisten = "tcp:1"\nfoo = 1\n')
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--config", path)
        self.assertEqual(str(caught.exception), f"{path}: services.a: foo: unknown key")
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--config", path + ".missing")
        self.assertEqual(
            str(caught.exception),
            f"{path}.missing: cannot read: no such file or directory",
        )

    def test_check(self) -> None:
        """
        C{--check} prints C{FILE: ok} (C{configuration ok} without a file)
        and exits 0; nothing is built.
        """
        path = writeFile(self, GOOD)
        out = io.StringIO()
        with redirect_stdout(out), self.assertRaises(SystemExit) as caught:
            self.parse("--config", path, "--check")
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(out.getvalue(), f"{path}: ok\n")
        out = io.StringIO()
        with redirect_stdout(out), self.assertRaises(SystemExit) as caught:
            self.parse("--listen", "tcp:7000", "--check")
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(out.getvalue(), "configuration ok\n")

    def test_checkSystemd(self) -> None:
        """
        C{--check} runs outside the process systemd hands its sockets to: a
        C{systemd:} listener is not looked for; started, it is.
        """
        out = io.StringIO()
        with redirect_stdout(out), self.assertRaises(SystemExit):
            self.parse("--listen", "systemd:domain=INET:name=gw", "--check")
        self.assertEqual(out.getvalue(), "configuration ok\n")
        with self.assertRaises(usage.UsageError):
            self.parse("--listen", "systemd:domain=INET:name=gw")


# A valid service: each key with a value drawn from its valid ones.
_ENDPOINT_PORTS = st.integers(min_value=1, max_value=65535)


@st.composite
def services(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    ports = draw(st.lists(_ENDPOINT_PORTS, min_size=1, max_size=3, unique=True))
    raw["listen"] = [f"tcp:{port}:interface=127.0.0.1" for port in ports]
    if draw(st.booleans()):
        raw["backend"] = [
            f"tcp:host=10.0.0.{n}:port={p}"
            for n, p in draw(
                st.lists(
                    st.tuples(st.integers(1, 254), _ENDPOINT_PORTS),
                    min_size=1,
                    max_size=3,
                )
            )
        ]
    client = draw(st.sampled_from(sorted(FRAMINGS)))
    backend = draw(st.sampled_from(sorted(FRAMINGS)))
    raw["client-framing"] = client
    raw["backend-framing"] = backend
    limit = min(FRAMING_LIMITS.get(client, 2**32), FRAMING_LIMITS.get(backend, 2**32))
    if draw(st.booleans()) or limit < 65536:
        raw["max-message-size"] = draw(st.integers(1, min(limit, 2**24)))
    for key in ("connect-timeout",):
        if draw(st.booleans()):
            raw[key] = draw(st.floats(0.001, 1e6, allow_nan=False))
    if draw(st.booleans()):
        raw["idle-timeout"] = draw(st.floats(0, 1e6, allow_nan=False))
    if draw(st.booleans()):
        raw["max-connections"] = draw(st.integers(1, 10**6))
    if draw(st.booleans()):
        raw["backend-proxy-protocol"] = draw(st.sampled_from(["v1", "v2"]))
    if draw(st.booleans()):
        raw["health-check"] = draw(st.sampled_from(["none", "connect"]))
    if draw(st.booleans()):
        raw["handshake-timeout"] = draw(st.floats(0, 1e6, allow_nan=False))
    if draw(st.booleans()):
        raw["max-connections-per-source"] = draw(st.integers(0, 10**6))
    if draw(st.booleans()):
        raw["max-connection-rate-per-source"] = draw(st.floats(0, 1e6, allow_nan=False))
    for key in ("allow", "deny"):
        if draw(st.booleans()):
            raw[key] = [
                f"10.{n}.0.0/16"
                for n in draw(st.lists(st.integers(0, 255), max_size=3))
            ]
    for key in ("health-check-interval", "health-check-timeout"):
        if draw(st.booleans()):
            raw[key] = draw(st.floats(0.001, 1e6, allow_nan=False))
    for key in ("health-check-rise", "health-check-fall"):
        if draw(st.booleans()):
            raw[key] = draw(st.integers(1, 100))
    return raw


def commandLine(raw: dict[str, Any]) -> list[str]:
    arguments = []
    for key, value in raw.items():
        for item in value if isinstance(value, list) else [value]:
            arguments += [
                f"--{key}",
                repr(item) if isinstance(item, float) else str(item),
            ]
    return arguments


class PropertyTests(SynchronousTestCase):
    """
    SPEC section 7: one vocabulary, one validation path.
    """

    @settings(max_examples=200, deadline=None)
    @given(services())
    def test_sameSettings(self, raw: dict[str, Any]) -> None:
        """
        Any valid service, rendered as a TOML table and as command-line
        options, gives the same settings.
        """
        fromFile = parseText(toTOML({"default": raw}).encode("utf-8"), FILE)
        options = Options()
        options.parseOptions(commandLine(raw))
        fromOptions = options["configuration"]
        self.assertEqual(
            fromFile.services["default"].values,
            fromOptions.services["default"].values,
        )
        self.assertEqual(
            fromFile.services["default"].values,
            fromCommandLine(raw).services["default"].values,
        )
        for derived in ("health", "admission", "websocket"):
            self.assertEqual(
                getattr(fromFile.services["default"], derived),
                getattr(fromOptions.services["default"], derived),
            )

    def test_defaultListener(self) -> None:
        """
        The command line alone listens where it always has.
        """
        self.assertEqual(
            fromCommandLine({}).services["default"]["listen"], (DEFAULT_LISTEN,)
        )

    def test_keysAreOptions(self) -> None:
        """
        Every service key is a setting of the table.
        """
        self.assertTrue(set(SERVICE_KEYS) <= set(SETTINGS))


class ExampleTests(SynchronousTestCase):
    """
    The shipped C{etc/gateway.toml} is a valid configuration.
    """

    def test_example(self) -> None:
        """
        Two services with different framings, TLS on one, several backends;
        its TLS files named where an operator puts them, here stood in for.
        """
        example = os.path.join(os.path.dirname(__file__), "..", "etc", "gateway.toml")
        with open(example) as f:
            text = f.read()
        leaf = trustme.CA().issue_cert("localhost")
        certFile = writeFile(self, "")
        keyFile = certFile + ".key"
        leaf.cert_chain_pems[0].write_to_path(certFile)
        leaf.private_key_pem.write_to_path(keyFile)
        text = text.replace("/etc/gateway/tls/quotes.pem", certFile)
        text = text.replace("/etc/gateway/tls/quotes.key", keyFile)
        configuration = parse(text)
        orders, quotes = configuration.services.values()
        self.assertNotEqual(
            (orders["client-framing"], orders["backend-framing"]),
            (quotes["client-framing"], quotes["backend-framing"]),
        )
        self.assertEqual((orders.tls is None, quotes.tls is None), (True, False))
        self.assertEqual((len(orders["backend"]), len(quotes["backend"])), (2, 2))
