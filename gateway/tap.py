"""
The gateway's twistd options, and the service they describe.

This is the only module that reads options; everything else is handed
objects.
"""

from __future__ import annotations

import getopt
import signal
import sys
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger
from twisted.python import reflect, usage

from gateway import __version__
from gateway import reactor as gatewayReactor
from gateway.admission import (
    Admission,
    AdmissionSettings,
    InvalidRule,
    parseNetworks,
)
from gateway.backends import Backend, BackendPool
from gateway.certnames import InvalidClientName, parseClientNames
from gateway.codec import FRAMINGS, framing
from gateway.daemon import StartupReport, installParentWait
from gateway.demo import DemoBackendService
from gateway.endpoints import (
    EndpointError,
    checkBackend,
    checkListen,
    checkMetrics,
    clientForm,
    serverForm,
    split,
    withBacklog,
)
from gateway.headerfirst import backendEndpoint, wrapEndpoint
from gateway.health import (
    CONNECT,
    DEFAULT_FALL,
    DEFAULT_INTERVAL,
    DEFAULT_RISE,
    DEFAULT_TIMEOUT,
    HealthSettings,
    HealthSettingsError,
    compileExpect,
    parseSend,
)
from gateway.healthservice import (
    ServiceView,
    StatusSource,
    healthProblems,
    serviceHealth,
)
from gateway.names import backendName, listenerName
from gateway.notify import Notifier, NotifyService
from gateway.proxy import Connections, ProxyFactory
from gateway.proxyprotocol import HEADERS, isBehindProxy, serverEndpoint
from gateway.refusals import RefusalLog
from gateway.service import (
    GatewayService,
    ListenerService,
    LogReopenService,
    SignalService,
    StopSignals,
)
from gateway.stats import NoRecorder, Recorder
from gateway.tls import ReloadableServerTLS, TLSError, wrapFactory
from gateway.websocketclient import (
    MESSAGE_TYPES,
    WebSocketSettings,
    checkOrigin,
    checkPath,
)

DEFAULT_LISTEN = "tcp:7000:interface=127.0.0.1"
DEFAULT_METRICS = "tcp:9180:interface=127.0.0.1"
# The name of the one service the command line describes (SPEC section 7).
DEFAULT_SERVICE = "default"
TLS_VERSIONS = ("1.2", "1.3")
# The longest payload each length-prefixed framing can carry, in bytes.
FRAMING_LIMITS = {"int8": 2**8 - 1, "int16": 2**16 - 1, "int32": 2**32 - 1}
# The client framing of WebSocket clients (SPEC section 10): not a framing
# of a byte stream, so not one of FRAMINGS, and a client framing only.
WEBSOCKET = "websocket"
CLIENT_FRAMINGS = (*FRAMINGS, WEBSOCKET)
# Options that only mean something to WebSocket clients.
WEBSOCKET_OPTIONS = ("websocket-path", "websocket-origin", "websocket-message-type")
# Options that only mean something to a TLS listener.
TLS_OPTIONS = (
    "tls-cert",
    "tls-key",
    "tls-client-ca",
    "tls-min-version",
    "tls-alpn",
    "tls-client-name",
)
# --backend-proxy-protocol's values: the headers, and v2 with the client's
# TLS details (SPEC section 9).
PROXY_V2_SSL = "v2-ssl"
PROXY_VERSIONS = (*HEADERS, PROXY_V2_SSL)

log = Logger(namespace="gateway.tap")


def _reactor() -> Any:
    # Imported late: twistd installs the reactor it was asked for with
    # --reactor before the gateway's options are parsed. Asked for none,
    # the gateway installs its own rather than Twisted's default.
    if gatewayReactor.canInstall():
        gatewayReactor.install()
    from twisted.internet import reactor

    return reactor


class Options(usage.Options):
    """
    C{twistd gateway} options. Every value is checked before anything listens.
    """

    synopsis = "[options]"
    longdesc = (
        "Translate newline-delimited client messages into length-prefixed "
        "backend frames and back. With no --backend, a built-in echo backend "
        "is started for trying the gateway out. See gateway(8) (man gateway)"
        " and the manual in docs/ for every option, signal and log line."
    )

    optParameters = [
        [
            "client-framing",
            None,
            "lf",
            "Framing on the client side: " + ", ".join(CLIENT_FRAMINGS) + ".",
        ],
        ["backend-framing", None, "int32", "Framing on the backend side."],
        [
            "max-message-size",
            None,
            "65536",
            "Longest payload accepted from either side, in bytes.",
        ],
        [
            "max-connections",
            None,
            "10000",
            "Concurrent client connections; more are accepted and closed at once.",
        ],
        ["connect-timeout", None, "10", "Backend connect timeout, in seconds."],
        [
            "idle-timeout",
            None,
            "300",
            "Seconds without a byte either way before a pair is closed (0: never).",
        ],
        [
            "drain-timeout",
            None,
            "30",
            "On SIGTERM, seconds open connections may take to finish"
            " (a second SIGTERM ends the drain at once).",
        ],
        [
            "tls-client-ca",
            None,
            None,
            "PEM file of the CA that must have signed every client's certificate"
            " (mTLS). [default: no client certificates]",
        ],
        ["tls-min-version", None, "1.2", "Lowest TLS version accepted: 1.2 or 1.3."],
        [
            "backend-proxy-protocol",
            None,
            None,
            "v1, v2 or v2-ssl: send the client's original address to the"
            " backend (PROXY protocol) before the first frame; v2-ssl adds the"
            " client's TLS version, cipher, certificate CN and SNI."
            " [default: none]",
        ],
        [
            "handshake-timeout",
            None,
            "10",
            "Seconds a connection may take before its first byte can reach a"
            " backend: TLS handshake, incoming PROXY header, WebSocket upgrade"
            " (0: no limit).",
        ],
        [
            "max-connections-per-source",
            None,
            "0",
            "Concurrent connections of one client address (IPv6: its /64);"
            " more are closed at once (0: no limit).",
        ],
        [
            "max-connection-rate-per-source",
            None,
            "0",
            "New connections per second from one client address (a token"
            " bucket holding that many); more are closed at once (0: no limit).",
        ],
        [
            "websocket-path",
            None,
            "/",
            "With --client-framing websocket: the request path that is"
            " upgraded (others get 404).",
        ],
        [
            "websocket-message-type",
            None,
            "binary",
            "With --client-framing websocket: the type of the messages sent"
            " to clients, binary or text.",
        ],
        [
            "metrics",
            None,
            DEFAULT_METRICS,
            "Server endpoint for /metrics, /healthz, /readyz and the status"
            " page (/ and /status.json), or none.",
        ],
        [
            "health-check",
            None,
            CONNECT,
            "Active checks of each backend: none, connect (the connection,"
            " TLS included, completes) or probe (connect, send"
            " --health-check-send, match the reply with --health-check-expect).",
        ],
        [
            "health-check-interval",
            None,
            f"{DEFAULT_INTERVAL:g}",
            "Seconds between two checks of one backend.",
        ],
        [
            "health-check-timeout",
            None,
            f"{DEFAULT_TIMEOUT:g}",
            "Seconds a check may take before it fails.",
        ],
        [
            "health-check-rise",
            None,
            str(DEFAULT_RISE),
            "Checks passed in a row that bring a down backend up.",
        ],
        [
            "health-check-fall",
            None,
            str(DEFAULT_FALL),
            "Checks failed in a row that take an up backend down.",
        ],
        [
            "health-check-send",
            None,
            None,
            "The probe's message, in the backend framing (UTF-8; escapes \\n"
            " \\r \\t \\\\ \\xHH). [default: none]",
        ],
        [
            "health-check-expect",
            None,
            None,
            "Python regular expression the probe's first reply must contain."
            " [default: any reply]",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["listen-tls"] = []
        self["tls-cert"] = []
        self["tls-key"] = []
        self["tls-alpn"] = []
        self["tls-client-name"] = []
        self["allow"] = []
        self["deny"] = []
        self["backend"] = []
        self["websocket-origin"] = []
        # Long names of the options given on the command line.
        self.given: set[str] = set()

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse C{options}; a mistake raises L{usage.UsageError} with one line.

        Run by twistd (as its C{gateway} subcommand), a mistake instead ends
        the process at once with that line on stderr and status 1: twistd
        itself would print the whole usage text first (in
        C{twisted.application.app.run}), burying the line that matters.
        C{--help} is unaffected: it prints the usage and exits 0.
        """
        try:
            self._notTwice(sys.argv[1:] if options is None else options)
            super().parseOptions(options)
        except usage.UsageError as error:
            if self.parent is None:
                raise
            # The prefix twistd gives its own option errors.
            raise SystemExit(f"{' '.join(sys.argv[0:2])}: {error}")

    def _notTwice(self, arguments: list[str]) -> None:
        """
        Refuse a non-repeatable option given twice (with getopt, as
        L{usage.Options} reads them, so that C{--opt=value} and unambiguous
        abbreviations count too), and say getopt's errors in plain words.
        """
        try:
            found, rest = getopt.getopt(arguments, self.shortOpt, self.longOpt)
        except getopt.GetoptError as error:
            raise usage.UsageError(_getoptError(error))
        once: list[list[Any]] = []
        reflect.accumulateClassList(type(self), "optParameters", once)
        reflect.accumulateClassList(type(self), "optFlags", once)
        single = {entry[0] for entry in once}
        first: dict[str, str] = {}
        for name, value in found:
            name = name.lstrip("-")
            if name in first and name in single:
                raise usage.UsageError(
                    f"--{name} given twice ({first[name]!r} and {value!r}):"
                    " it takes one value; give it once"
                )
            first[name] = value
            self.given.add(name)

    def parseArgs(self, *arguments: str) -> None:
        if arguments:
            raise usage.UsageError(
                f"unexpected argument {arguments[0]!r}: every gateway setting"
                " is an option (--listen ENDPOINT, --backend ENDPOINT, ...);"
                " see twistd gateway --help"
            )

    def opt_version(self) -> None:
        """
        Print the versions of the gateway, Twisted, Python and OpenSSL, and exit.
        """
        print(versionLine())
        sys.exit(0)

    def opt_listen(self, description: str) -> None:
        """
        Listen on this Twisted server endpoint (repeatable), e.g.
        tcp:7000:interface=127.0.0.1, tcp6:7000, unix:/run/gateway.sock,
        systemd:domain=INET:name=gateway, haproxy:tcp:7000. Listens with a
        backlog of 4096 unless the string sets backlog=.
        [default: tcp:7000:interface=127.0.0.1]
        """
        self["listen"].append(description)

    def opt_listen_tls(self, description: str) -> None:
        """
        Listen with TLS on this server endpoint (repeatable): tcp:7443,
        systemd:domain=INET:name=gateway-tls, haproxy:tcp:7443, ...
        """
        self["listen-tls"].append(description)

    def opt_tls_cert(self, path: str) -> None:
        """
        PEM certificate, then its chain (repeatable: chosen by SNI, the first
        is the default).
        """
        self["tls-cert"].append(path)

    def opt_tls_alpn(self, name: str) -> None:
        """
        ALPN protocol to select when a TLS client offers it (repeatable), e.g.
        http/1.1; a client offering others only is refused.
        [default: an ALPN offer is ignored]
        """
        self["tls-alpn"].append(name)

    def opt_tls_client_name(self, name: str) -> None:
        """
        With --tls-client-ca: a name the client certificate must carry as its
        subject CN or a DNS or URI SAN (repeatable; *.example.com matches one
        label). [default: any certificate the CA signed]
        """
        self["tls-client-name"].append(name)

    def opt_allow(self, cidr: str) -> None:
        """
        Only client addresses inside this network may connect (repeatable),
        e.g. 10.0.0.0/8, 2001:db8::/32. [default: every address]
        """
        self["allow"].append(cidr)

    def opt_deny(self, cidr: str) -> None:
        """
        Client addresses inside this network may not connect (repeatable;
        wins over --allow). [default: none]
        """
        self["deny"].append(cidr)

    def opt_tls_key(self, path: str) -> None:
        """
        PEM private key of the --tls-cert in the same position (repeatable).
        [default: the key inside the certificate file]
        """
        self["tls-key"].append(path)

    def opt_websocket_origin(self, origin: str) -> None:
        """
        With --client-framing websocket: an Origin allowed to upgrade
        (repeatable), e.g. https://app.example.com; others get 403.
        [default: any origin]
        """
        self["websocket-origin"].append(origin)

    def opt_backend(self, description: str) -> None:
        """
        Connect to this Twisted client endpoint (repeatable: round robin,
        skipping backends that fail), e.g. tcp:host=10.0.0.5:port=9000,
        unix:path=/run/backend.sock. [default: a built-in echo backend]
        """
        self["backend"].append(description)

    def postOptions(self) -> None:
        if self["backend-framing"] == WEBSOCKET:
            raise usage.UsageError(
                "--backend-framing websocket: WebSocket is a client framing"
                f" only; choose one of {', '.join(FRAMINGS)} for the backend"
            )
        for option, choices in (
            ("client-framing", CLIENT_FRAMINGS),
            ("backend-framing", FRAMINGS),
        ):
            if self[option] not in choices:
                raise usage.UsageError(
                    f"--{option}: unknown framing {self[option]!r};"
                    f" choose one of {', '.join(choices)}"
                )
        self._webSocket()
        self["max-message-size"] = _number(self, "max-message-size", int, minimum=1)
        self["max-connections"] = _number(self, "max-connections", int, minimum=1)
        self["connect-timeout"] = _number(self, "connect-timeout", float, above=0)
        self["idle-timeout"] = _number(self, "idle-timeout", float, minimum=0)
        self["drain-timeout"] = _number(self, "drain-timeout", float, minimum=0)
        self["handshake-timeout"] = _number(self, "handshake-timeout", float, minimum=0)
        self["admission"] = self._admission()
        self._framingsCarry()
        if self["tls-min-version"] not in TLS_VERSIONS:
            raise usage.UsageError(
                f"--tls-min-version: {self['tls-min-version']!r} is not 1.2 or 1.3"
            )
        proxyVersion = self["backend-proxy-protocol"]
        if proxyVersion is not None and proxyVersion not in PROXY_VERSIONS:
            raise usage.UsageError(
                f"--backend-proxy-protocol: {proxyVersion!r} is not "
                + ", ".join(PROXY_VERSIONS[:-1])
                + f" or {PROXY_VERSIONS[-1]}"
            )
        self["health"] = self._healthSettings()
        if not self["listen"] and not self["listen-tls"]:
            self["listen"] = [DEFAULT_LISTEN]
        for option in ("listen", "listen-tls"):
            for description in self[option]:
                tls = option == "listen-tls"
                _checked(f"--{option}", description, checkListen, tls)
        for description in self["backend"]:
            _checked("--backend", description, checkBackend)
        if self["metrics"] == "none":
            self["metrics"] = None
        else:
            _checked("--metrics", self["metrics"], checkMetrics)
        reactor = _reactor()
        for option in ("listen", "listen-tls"):
            for description in self[option]:
                _parsed(f"--{option}", description, serverEndpoint, reactor)
        for description in self["backend"]:
            _parsed("--backend", description, clientFromString, reactor)
        if self["metrics"] is not None:
            _parsed("--metrics", self["metrics"], serverFromString, reactor)
        self["tls"] = None
        if not self["listen-tls"]:
            for option in TLS_OPTIONS:
                if option in self.given:
                    raise usage.UsageError(
                        f"--{option}: there is no --listen-tls listener for it"
                        " to apply to: add one (--listen-tls tcp:7443) or leave"
                        f" --{option} out"
                    )
        else:
            if not self["tls-cert"]:
                raise usage.UsageError("--listen-tls: needs at least one --tls-cert")
            if self["tls-client-name"] and self["tls-client-ca"] is None:
                raise usage.UsageError(
                    "--tls-client-name: needs --tls-client-ca (client"
                    " certificates are only asked for with a client CA)"
                )
            try:
                clientNames = parseClientNames(self["tls-client-name"])
            except InvalidClientName as error:
                raise usage.UsageError(str(error))
            try:
                self["tls"] = ReloadableServerTLS(
                    self["tls-cert"],
                    self["tls-key"],
                    self["tls-client-ca"],
                    self["tls-min-version"],
                    self["tls-alpn"],
                    clientNames,
                )
            except TLSError as error:
                raise usage.UsageError(str(error))

    def _admission(self) -> AdmissionSettings:
        """
        The admission rules of SPEC section 9, checked.
        """
        perSource = "max-connections-per-source"
        self[perSource] = _number(self, perSource, int, minimum=0)
        rate = "max-connection-rate-per-source"
        self[rate] = _number(self, rate, float, minimum=0)
        try:
            return AdmissionSettings(
                allow=parseNetworks("--allow", self["allow"]),
                deny=parseNetworks("--deny", self["deny"]),
                maxConnectionsPerSource=self[perSource],
                maxConnectionRatePerSource=self[rate],
            )
        except InvalidRule as error:
            raise usage.UsageError(str(error))

    def _webSocket(self) -> None:
        """
        The C{--websocket-*} options: checked, and refused without
        C{--client-framing websocket}, for which they would do nothing.
        """
        if self["client-framing"] != WEBSOCKET:
            for option in WEBSOCKET_OPTIONS:
                if option in self.given:
                    raise usage.UsageError(
                        f"--{option}: only WebSocket clients have it: add"
                        f" --client-framing websocket or leave --{option} out"
                    )
            return
        problem = checkPath(self["websocket-path"])
        if problem is not None:
            raise usage.UsageError(
                f"--websocket-path {self['websocket-path']!r}: {problem}"
            )
        for origin in self["websocket-origin"]:
            problem = checkOrigin(origin)
            if problem is not None:
                raise usage.UsageError(f"--websocket-origin {origin!r}: {problem}")
        if self["websocket-message-type"] not in MESSAGE_TYPES:
            raise usage.UsageError(
                f"--websocket-message-type: {self['websocket-message-type']!r}"
                f" is not {' or '.join(MESSAGE_TYPES)}"
            )

    def _healthSettings(self) -> HealthSettings:
        """
        The C{--health-check*} options as L{HealthSettings} (SPEC section 8).
        """
        interval = _number(self, "health-check-interval", float, above=0)
        timeout = _number(self, "health-check-timeout", float, above=0)
        rise = _number(self, "health-check-rise", int, minimum=1)
        fall = _number(self, "health-check-fall", int, minimum=1)
        try:
            send = self["health-check-send"]
            expect = self["health-check-expect"]
            return HealthSettings(
                mode=self["health-check"],
                interval=interval,
                timeout=timeout,
                rise=rise,
                fall=fall,
                send=None if send is None else parseSend(send),
                expect=None if expect is None else compileExpect(expect),
                backendFraming=self["backend-framing"],
                maxMessageSize=self["max-message-size"],
            )
        except HealthSettingsError as error:
            raise usage.UsageError(str(error))

    def _framingsCarry(self) -> None:
        """
        A length-prefixed framing whose prefix cannot express
        C{--max-message-size} could never carry the messages it promises.
        """
        size = self["max-message-size"]
        for option in ("client-framing", "backend-framing"):
            limit = FRAMING_LIMITS.get(self[option])
            if limit is not None and size > limit:
                given = "" if "max-message-size" in self.given else " (its default)"
                raise usage.UsageError(
                    f"--{option} {self[option]} carries at most {limit} bytes"
                    f" per message, but --max-message-size is {size}{given}:"
                    f" give --max-message-size {limit} or less, or a wider framing"
                )


def _number(
    options: Options,
    option: str,
    kind: type,
    minimum: float | None = None,
    above: float | None = None,
) -> Any:
    text = options[option]
    try:
        value = kind(text)
    except (TypeError, ValueError):
        value = None
    if (
        value is None
        or value != value  # NaN
        or value in (float("inf"), float("-inf"))
        or (minimum is not None and value < minimum)
        or (above is not None and value <= above)
    ):
        noun = "an integer" if kind is int else "a number"
        if minimum is not None:
            bound = f"{minimum:g} or more"
        else:
            bound = f"more than {above:g}"
        raise usage.UsageError(f"--{option}: {text!r} is not {noun} of {bound}")
    return value


def _checked(option: str, description: str, check: Any, *args: Any) -> None:
    try:
        check(description, *args)
    except EndpointError as error:
        raise usage.UsageError(f"{option} {description!r}: {error}")


def _parsed(option: str, description: str, parse: Any, reactor: Any) -> Any:
    """
    Build the endpoint with Twisted's parser. The string was checked before,
    so what Twisted may still refuse is told in the kind's own form: its
    exception text names Python's internals, not the operator's mistake.
    """
    try:
        return parse(reactor, description)
    except KeyError as error:
        # What Twisted's systemd: parser raises for a name it was not given.
        raise usage.UsageError(
            f"{option} {description!r}: no socket named {error.args[0]!r}"
            " was passed by systemd (LISTEN_FDNAMES)"
        )
    except IndexError:
        raise usage.UsageError(
            f"{option} {description!r}: systemd passed no socket with that"
            " index (LISTEN_FDS); name it with name= instead"
        )
    except Exception:
        kind = split(description).kind
        if option == "--backend":
            form = clientForm(kind)
        else:
            if kind == "haproxy":
                kind = split(description.split(":", 1)[1]).kind
            form = serverForm(kind)
        raise usage.UsageError(
            f"{option} {description!r}: Twisted cannot use this endpoint string:"
            f" write it as {form}"
        )


def _getoptError(error: getopt.GetoptError) -> str:
    """
    getopt's error, as a sentence naming the option.
    """
    option = f"--{error.opt}" if len(error.opt) > 1 else f"-{error.opt}"
    message = error.msg
    if "not recognized" in message:
        return f"{option}: no such gateway option (twistd gateway --help lists them)"
    if "requires argument" in message:
        return f"{option}: needs a value"
    if "must not have an argument" in message:
        return f"{option}: takes no value"
    if "not a unique prefix" in message:
        return f"{option}: could be several options: write its whole name"
    return f"{option}: {message}"


def versionLine() -> str:
    """
    C{gateway X.Y.Z (Twisted A.B.C, Python D.E.F, OpenSSL G.H.I)}: what
    C{twistd gateway --version} prints.
    """
    import platform

    from OpenSSL import SSL

    from twisted import version as twistedVersion

    openssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode("ascii", "replace")
    # "OpenSSL 3.0.11 19 Sep 2023": the name and number, without the date.
    openssl = " ".join(openssl.split()[:2])
    return (
        f"gateway {__version__} (Twisted {twistedVersion.short()},"
        f" Python {platform.python_version()}, {openssl})"
    )


def makeService(
    options: Options, reactor: Any = None, recorder: Recorder | None = None
) -> IService:
    """
    Compose the gateway: its listeners, its backends, its metrics, and its
    conversation with systemd.
    """
    if reactor is None:
        reactor = _reactor()
    registry = None
    if recorder is None:
        if options["metrics"] is None:
            recorder = NoRecorder()
        else:
            from prometheus_client import CollectorRegistry, disable_created_metrics

            from gateway.metrics import GatewayMetrics

            # Process-wide, and the gateway owns its process: no *_created
            # series (docs/metrics.rst says why).
            disable_created_metrics()
            registry = CollectorRegistry()
            recorder = GatewayMetrics(registry, __version__)
    connections = Connections(options["max-connections"])
    gateway = GatewayService(connections, reactor, options["drain-timeout"])
    # twistd's own options, when twistd runs the gateway: where its status
    # pipe and pid file are, for a start-up failure to be told and cleaned
    # up in daemon mode too.
    twistdConfig = getattr(options, "parent", None)
    report = StartupReport(twistdConfig)
    gateway.startingHooks.append(report.claim)
    gateway.startFailed = report.fail
    gateway.lateFailureHooks.append(report.failLate)
    if twistdConfig is not None:
        installParentWait()
    pool = BackendPool(
        _backends(options, reactor, recorder, gateway),
        reactor,
        options["connect-timeout"],
    )
    health = serviceHealth(
        DEFAULT_SERVICE,
        pool,
        options["health"],
        reactor,
        options["backend-proxy-protocol"],
    )
    health.setServiceParent(gateway)
    gateway.readinessChecks.append(healthProblems({DEFAULT_SERVICE: health.checker}))
    listeners: list[ListenerService] = []
    maxSize = options["max-message-size"]
    webSocket = None
    if options["client-framing"] == WEBSOCKET:
        clientFraming = None
        webSocket = WebSocketSettings(
            options["websocket-path"],
            tuple(options["websocket-origin"]),
            options["websocket-message-type"],
            maxSize,
        )
    else:
        clientFraming = framing(options["client-framing"], maxSize)
    backendFraming = framing(options["backend-framing"], maxSize)
    tls = options["tls"]
    proxyVersion = options["backend-proxy-protocol"]
    sendProxySSL = proxyVersion == PROXY_V2_SSL
    if sendProxySSL:
        proxyVersion = "v2"
    sendProxyHeader = HEADERS[proxyVersion] if proxyVersion else None
    # The service's admission state (rules and per-source tables), shared
    # by its listeners; the refusal log likewise.
    admission = Admission(options["admission"], reactor)
    refusals = RefusalLog(ProxyFactory.log, reactor)
    gateway.drainingHooks.append(refusals.stop)
    for option, tlsOn in (("listen", False), ("listen-tls", True)):
        for description in options[option]:
            name = listenerName(description, tls=tlsOn)
            factory = ProxyFactory(
                name,
                clientFraming,
                backendFraming,
                pool.connect,
                connections,
                reactor,
                recorder.listener(name),
                idleTimeout=options["idle-timeout"],
                tls=tlsOn,
                proxyHeader=isBehindProxy(description),
                sendProxyHeader=sendProxyHeader,
                refusals=refusals,
                admission=admission,
                handshakeTimeout=options["handshake-timeout"],
                sendProxySSL=sendProxySSL,
                websocket=webSocket,
            )
            listener = ListenerService(
                name,
                f"--{option}",
                description,
                serverEndpoint(reactor, withBacklog(description)),
                wrapFactory(tls, factory, reactor) if tlsOn else factory,
            )
            listener.setServiceParent(gateway)
            listeners.append(listener)
    if registry is not None:
        from gateway.metrics import metricsSite

        status = StatusSource(
            __version__,
            gateway,
            connections,
            recorder,
            {DEFAULT_SERVICE: ServiceView(listeners, pool, health.checker)},
            reactor,
        )
        gateway.readyHooks.append(status.markStarted)
        ListenerService(
            "metrics",
            "--metrics",
            options["metrics"],
            serverFromString(reactor, withBacklog(options["metrics"])),
            metricsSite(
                registry,
                gateway.ready,
                reactor,
                problems=gateway.notReady,
                snapshot=status,
            ),
            drains=False,
        ).setServiceParent(gateway)
        gateway.drainingHooks.append(lambda: recorder.setDraining(True))
    _systemd(gateway, connections, tls, reactor, report)
    return gateway


def _backends(
    options: Options, reactor: Any, recorder: Recorder, gateway: GatewayService
) -> list[Backend]:
    proxyHeaders = bool(options["backend-proxy-protocol"])
    if not options["backend"]:
        demo = DemoBackendService(reactor)
        demo.setServiceParent(gateway)
        endpoint = demo.endpoint()
        if proxyHeaders:
            endpoint = wrapEndpoint(endpoint, tls=False)
        return [Backend("demo", endpoint, recorder.backend("demo"))]
    backends = []
    for description in options["backend"]:
        name = backendName(description)
        endpoint = backendEndpoint(reactor, description, proxyHeaders)
        backends.append(Backend(name, endpoint, recorder.backend(name)))
    return backends


def _systemd(
    gateway: GatewayService,
    connections: Connections,
    tls: ReloadableServerTLS | None,
    reactor: Any,
    report: StartupReport,
) -> None:
    """
    READY=1 once every listener is bound, STATUS=, the watchdog, STOPPING=1
    when draining starts, and a SIGHUP reload of the TLS files.
    """
    notifier = Notifier.fromEnvironment()

    def status() -> str:
        state = "draining, " if gateway.draining else ""
        return f"{state}{len(connections)} active connections"

    notify = NotifyService(notifier, status, reactor)
    notify.setServiceParent(gateway)
    gateway.readyHooks.append(notify.markReady)
    gateway.readyHooks.append(report.ready)
    gateway.drainingHooks.append(notify.stopService)

    def reload() -> None:
        notifier.reloading()
        if tls is None:
            log.info("SIGHUP: no TLS files to reload")
        else:
            try:
                tls.reload()
            except TLSError as error:
                log.error(
                    "TLS reload failed, keeping the files loaded before: {error}",
                    error=str(error),
                )
            else:
                log.info("TLS reload: certificates, keys and CA files re-read")
        notifier.ready(status())

    SignalService(signal.SIGHUP, reload, reactor).setServiceParent(gateway)
    StopSignals(gateway, reactor).setServiceParent(gateway)
    LogReopenService(reactor).setServiceParent(gateway)
