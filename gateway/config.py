"""
The gateway's settings: one table, read from the command line or a TOML file.

L{SETTINGS} is the vocabulary (SPEC sections 2 and 7): each L{Setting} is
both a twistd option (C{--NAME}) and a key of the configuration file
(C{NAME}), with one default, one check and one help text, so that an option
and a key can never disagree. L{gateway.tap.Options} builds its options from
it, L{loadFile} reads a file with it, and both hand the raw values of each
service to L{checkService}, the one validation path. A documentation
generator can import this module: it imports no reactor.

The result is a L{Configuration}: the process-wide settings and one
L{ServiceSettings} per service (C{default} for the one the command line
describes). Errors are L{SettingError} (one setting) and L{ConfigError}
(one line naming the file, the service and the key:
C{gateway.toml: services.orders: backend-framing: unknown framing 'int64'}).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.admission import AdmissionSettings, InvalidRule, parseNetworks
from gateway.certnames import InvalidClientName, parseClientNames
from gateway.codec import FRAMINGS
from gateway.endpoints import (
    EndpointError,
    checkBackend,
    checkListen,
    checkMetrics,
    clientForm,
    serverForm,
    split,
)
from gateway.health import (
    CONNECT,
    DEFAULT_FALL,
    DEFAULT_INTERVAL,
    DEFAULT_RISE,
    DEFAULT_TIMEOUT,
    MODES,
    HealthSettings,
    HealthSettingsError,
    compileExpect,
    parseSend,
)
from gateway.proxyprotocol import HEADERS
from gateway.tls import ReloadableServerTLS, TLSError
from gateway.websocketclient import (
    MESSAGE_TYPES,
    WebSocketSettings,
    checkOrigin,
    checkPath,
)

DEFAULT_SERVICE = "default"
DEFAULT_LISTEN = "tcp:7000:interface=127.0.0.1"
DEFAULT_METRICS = "tcp:9180:interface=127.0.0.1"
TLS_VERSIONS = ("1.2", "1.3")
# The longest payload each length-prefixed framing can carry, in bytes.
FRAMING_LIMITS = {"int8": 2**8 - 1, "int16": 2**16 - 1, "int32": 2**32 - 1}
# The client framing of WebSocket clients (SPEC section 10): not a framing
# of a byte stream, so not one of FRAMINGS, and a client framing only.
WEBSOCKET = "websocket"
CLIENT_FRAMINGS = (*FRAMINGS, WEBSOCKET)
# Settings that only mean something to WebSocket clients.
WEBSOCKET_OPTIONS = ("websocket-path", "websocket-origin", "websocket-message-type")
# --backend-proxy-protocol's values: the headers, and v2 with the client's
# TLS details (SPEC section 9).
PROXY_V2_SSL = "v2-ssl"
PROXY_VERSIONS = (*HEADERS, PROXY_V2_SSL)
# SPEC section 7: a service's name in the file, in metrics and in logs.
SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

# Where a setting applies.
SERVICE = "service"
PROCESS = "process"
# max-connections: in a service it caps the service, at the top of the file
# the process; on the command line it is both.
BOTH = "both"


class SettingError(Exception):
    """
    One setting's value cannot be used.

    @ivar key: the setting's name (C{backend-framing}).
    @ivar rest: the rest of the line as the command line says it, after
        C{--KEY}: C{": unknown framing 'x'; ..."} or C{" 'tcp:x': ..."}.
        Other options it names are written C{--NAME}; L{inFile} says them
        as keys.
    """

    def __init__(self, key: str, rest: str) -> None:
        super().__init__(f"--{key}{rest}")
        self.key = key
        self.rest = rest

    def onCommandLine(self) -> str:
        """
        C{--client-framing: unknown framing 'x'; choose one of ...}
        """
        return f"--{self.key}{self.rest}"

    def inFile(self, where: str) -> str:
        """
        C{FILE: services.NAME: client-framing: unknown framing 'x'; ...}

        @param where: the file and the table (C{gateway.toml: services.x}).
        """
        rest = _OPTION_NAME.sub(_asKey, self.rest)
        if not rest.startswith(":"):
            rest = ":" + rest
        return f"{where}: {self.key}{rest}"


class ConfigError(Exception):
    """
    A configuration file cannot be used; C{str()} is the one line to show.
    """


_OPTION_NAME = re.compile(r"--([a-z][a-z0-9-]*)")


def _asKey(match: re.Match[str]) -> str:
    name = match.group(1)
    return name if name in SETTINGS else match.group(0)


# Coercions: the raw value (a string from the command line; a string,
# number or array from TOML) to the setting's value, or SettingError.


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise SettingError(name, f": {value!r} is not a string; write it in quotes")
    return value


def _clientFraming(name: str, value: object) -> str:
    value = _text(name, value)
    if value not in CLIENT_FRAMINGS:
        raise SettingError(
            name,
            f": unknown framing {value!r}; choose one of {', '.join(CLIENT_FRAMINGS)}",
        )
    return value


def _framing(name: str, value: object) -> str:
    value = _text(name, value)
    if value == WEBSOCKET:
        raise SettingError(
            name,
            " websocket: WebSocket is a client framing only; choose one of"
            f" {', '.join(FRAMINGS)} for the backend",
        )
    if value not in FRAMINGS:
        raise SettingError(
            name, f": unknown framing {value!r}; choose one of {', '.join(FRAMINGS)}"
        )
    return value


def _number(
    kind: type, minimum: float | None = None, above: float | None = None
) -> Callable[[str, object], Any]:
    def coerce(name: str, raw: object) -> Any:
        value: Any = None
        if isinstance(raw, str) or (
            isinstance(raw, int | float) and not isinstance(raw, bool)
        ):
            if not (kind is int and isinstance(raw, float)):
                try:
                    value = kind(raw)
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
            raise SettingError(name, f": {raw!r} is not {noun} of {bound}")
        return value

    return coerce


def _choice(choices: Iterable[str]) -> Callable[[str, object], str]:
    options = tuple(choices)

    def coerce(name: str, raw: object) -> str:
        value = _text(name, raw)
        if value not in options:
            listed = ", ".join(options[:-1]) + f" or {options[-1]}"
            raise SettingError(name, f": {value!r} is not {listed}")
        return value

    return coerce


def _optionalChoice(choices: Iterable[str]) -> Callable[[str, object], str | None]:
    check = _choice(choices)

    def coerce(name: str, raw: object) -> str | None:
        return None if raw is None else check(name, raw)

    return coerce


def _healthMode(name: str, raw: object) -> str:
    value = _text(name, raw)
    if value not in MODES:
        raise SettingError(
            name, f": unknown mode {value!r} (choose {', '.join(MODES)})"
        )
    return value


def _optionalText(name: str, raw: object) -> str | None:
    return None if raw is None else _text(name, raw)


def _endpoint(check: Callable[..., None], *args: Any) -> Callable[[str, object], str]:
    def coerce(name: str, raw: object) -> str:
        value = _text(name, raw)
        try:
            check(value, *args)
        except EndpointError as error:
            raise SettingError(name, f" {value!r}: {error}")
        return value

    return coerce


def _metrics(name: str, raw: object) -> str | None:
    value = _text(name, raw)
    if value == "none":
        return None
    return _endpoint(checkMetrics)(name, value)


@dataclass(frozen=True)
class Setting:
    """
    One setting: the option C{--NAME} and the configuration key C{NAME}.

    @ivar default: the value when none is given, written as on the command
        line (a string, or None; C{()} for a repeatable setting).
    @ivar coerce: C{coerce(name, raw)} turns one given value (a string from
        the command line, a TOML value from the file) into the setting's
        value, or raises L{SettingError}.
    @ivar repeatable: given several times on the command line, an array in
        the file (a single string is taken as an array of one).
    @ivar unit: of a number, for the documentation (C{seconds}, C{bytes}).
    @ivar scope: L{SERVICE}, L{PROCESS} or L{BOTH}.
    @ivar metavar: what the help calls the value.
    """

    name: str
    default: Any
    coerce: Callable[[str, object], Any]
    help: str
    repeatable: bool = False
    unit: str | None = None
    scope: str = SERVICE
    metavar: str | None = None

    def value(self, raw: object) -> Any:
        """
        The setting's value for C{raw}, a value as given (a list of them
        for a repeatable setting; None or C{()} for its default).

        @raise SettingError: a value cannot be used.
        """
        if self.repeatable:
            items = [raw] if isinstance(raw, str) else (raw or ())
            if not isinstance(items, list | tuple):
                raise SettingError(
                    self.name, f": {raw!r} is not a string or an array of strings"
                )
            return tuple(self.coerce(self.name, item) for item in items)
        if raw is None:
            raw = self.default
        if raw is None:
            return None
        return self.coerce(self.name, raw)


SETTINGS_TABLE: tuple[Setting, ...] = (
    Setting(
        "listen",
        (),
        _endpoint(checkListen, False),
        "Listen on this Twisted server endpoint (repeatable), e.g."
        " tcp:7000:interface=127.0.0.1, tcp6:7000, unix:/run/gateway.sock,"
        " systemd:domain=INET:name=gateway, haproxy:tcp:7000. Listens with a"
        " backlog of 4096 unless the string sets backlog=."
        f" [default: {DEFAULT_LISTEN}]",
        repeatable=True,
        metavar="ENDPOINT",
    ),
    Setting(
        "listen-tls",
        (),
        _endpoint(checkListen, True),
        "Listen with TLS on this server endpoint (repeatable): tcp:7443,"
        " systemd:domain=INET:name=gateway-tls, haproxy:tcp:7443, ...",
        repeatable=True,
        metavar="ENDPOINT",
    ),
    Setting(
        "tls-cert",
        (),
        _text,
        "PEM certificate, then its chain (repeatable: chosen by SNI, the first"
        " is the default).",
        repeatable=True,
        metavar="FILE",
    ),
    Setting(
        "tls-key",
        (),
        _text,
        "PEM private key of the --tls-cert in the same position (repeatable)."
        " [default: the key inside the certificate file]",
        repeatable=True,
        metavar="FILE",
    ),
    Setting(
        "tls-client-ca",
        None,
        _optionalText,
        "PEM file of the CA that must have signed every client's certificate"
        " (mTLS). [default: no client certificates]",
        metavar="FILE",
    ),
    Setting(
        "tls-min-version",
        "1.2",
        _choice(TLS_VERSIONS),
        "Lowest TLS version accepted: 1.2 or 1.3.",
    ),
    Setting(
        "tls-alpn",
        (),
        _text,
        "ALPN protocol to select when a TLS client offers it (repeatable), e.g."
        " http/1.1; a client offering others only is refused."
        " [default: an ALPN offer is ignored]",
        repeatable=True,
        metavar="NAME",
    ),
    Setting(
        "tls-client-name",
        (),
        _text,
        "With --tls-client-ca: a name the client certificate must carry as its"
        " subject CN or a DNS or URI SAN (repeatable; *.example.com matches one"
        " label). [default: any certificate the CA signed]",
        repeatable=True,
        metavar="NAME",
    ),
    Setting(
        "backend",
        (),
        _endpoint(checkBackend),
        "Connect to this Twisted client endpoint (repeatable: round robin,"
        " skipping backends that fail), e.g. tcp:host=10.0.0.5:port=9000,"
        " unix:path=/run/backend.sock. [default: a built-in echo backend]",
        repeatable=True,
        metavar="ENDPOINT",
    ),
    Setting(
        "backend-proxy-protocol",
        None,
        _optionalChoice(PROXY_VERSIONS),
        "v1, v2 or v2-ssl: send the client's original address to the"
        " backend (PROXY protocol) before the first frame; v2-ssl adds the"
        " client's TLS version, cipher, certificate CN and SNI."
        " [default: none]",
    ),
    Setting(
        "handshake-timeout",
        "10",
        _number(float, minimum=0),
        "Seconds a connection may take before its first byte can reach a"
        " backend: TLS handshake, incoming PROXY header, WebSocket upgrade"
        " (0: no limit).",
        unit="seconds",
    ),
    Setting(
        "max-connections-per-source",
        "0",
        _number(int, minimum=0),
        "Concurrent connections of one client address (IPv6: its /64);"
        " more are closed at once (0: no limit).",
    ),
    Setting(
        "max-connection-rate-per-source",
        "0",
        _number(float, minimum=0),
        "New connections per second from one client address (a token"
        " bucket holding that many); more are closed at once (0: no limit).",
    ),
    Setting(
        "allow",
        (),
        _text,
        "Only client addresses inside this network may connect (repeatable),"
        " e.g. 10.0.0.0/8, 2001:db8::/32. [default: every address]",
        repeatable=True,
        metavar="CIDR",
    ),
    Setting(
        "deny",
        (),
        _text,
        "Client addresses inside this network may not connect (repeatable;"
        " wins over --allow). [default: none]",
        repeatable=True,
        metavar="CIDR",
    ),
    Setting(
        "websocket-path",
        "/",
        _text,
        "With --client-framing websocket: the request path that is"
        " upgraded (others get 404).",
        metavar="PATH",
    ),
    Setting(
        "websocket-origin",
        (),
        _text,
        "With --client-framing websocket: an Origin allowed to upgrade"
        " (repeatable), e.g. https://app.example.com; others get 403."
        " [default: any origin]",
        repeatable=True,
        metavar="ORIGIN",
    ),
    Setting(
        "websocket-message-type",
        "binary",
        _choice(MESSAGE_TYPES),
        "With --client-framing websocket: the type of the messages sent"
        " to clients, binary or text.",
    ),
    Setting(
        "client-framing",
        "lf",
        _clientFraming,
        "Framing on the client side: " + ", ".join(CLIENT_FRAMINGS) + ".",
    ),
    Setting("backend-framing", "int32", _framing, "Framing on the backend side."),
    Setting(
        "max-message-size",
        "65536",
        _number(int, minimum=1),
        "Longest payload accepted from either side, in bytes.",
        unit="bytes",
    ),
    Setting(
        "max-connections",
        "10000",
        _number(int, minimum=1),
        "Concurrent client connections; more are accepted and closed at once.",
        scope=BOTH,
    ),
    Setting(
        "connect-timeout",
        "10",
        _number(float, above=0),
        "Backend connect timeout, in seconds.",
        unit="seconds",
    ),
    Setting(
        "idle-timeout",
        "300",
        _number(float, minimum=0),
        "Seconds without a byte either way before a pair is closed (0: never).",
        unit="seconds",
    ),
    Setting(
        "health-check",
        CONNECT,
        _healthMode,
        "Active checks of each backend: none, connect (the connection,"
        " TLS included, completes) or probe (connect, send"
        " --health-check-send, match the reply with --health-check-expect).",
    ),
    Setting(
        "health-check-interval",
        f"{DEFAULT_INTERVAL:g}",
        _number(float, above=0),
        "Seconds between two checks of one backend.",
        unit="seconds",
    ),
    Setting(
        "health-check-timeout",
        f"{DEFAULT_TIMEOUT:g}",
        _number(float, above=0),
        "Seconds a check may take before it fails.",
        unit="seconds",
    ),
    Setting(
        "health-check-rise",
        str(DEFAULT_RISE),
        _number(int, minimum=1),
        "Checks passed in a row that bring a down backend up.",
    ),
    Setting(
        "health-check-fall",
        str(DEFAULT_FALL),
        _number(int, minimum=1),
        "Checks failed in a row that take an up backend down.",
    ),
    Setting(
        "health-check-send",
        None,
        _optionalText,
        "The probe's message, in the backend framing (UTF-8; escapes \\n"
        " \\r \\t \\\\ \\xHH). [default: none]",
        metavar="TEXT",
    ),
    Setting(
        "health-check-expect",
        None,
        _optionalText,
        "Python regular expression the probe's first reply must contain."
        " [default: any reply]",
        metavar="REGEX",
    ),
    Setting(
        "drain-timeout",
        "30",
        _number(float, minimum=0),
        "On SIGTERM, seconds open connections may take to finish"
        " (a second SIGTERM ends the drain at once).",
        unit="seconds",
        scope=PROCESS,
    ),
    Setting(
        "metrics",
        DEFAULT_METRICS,
        _metrics,
        "Server endpoint for /metrics, /healthz, /readyz and the status"
        " page (/ and /status.json), or none.",
        scope=PROCESS,
    ),
)

SETTINGS: dict[str, Setting] = {setting.name: setting for setting in SETTINGS_TABLE}
SERVICE_KEYS = tuple(s.name for s in SETTINGS_TABLE if s.scope in (SERVICE, BOTH))
PROCESS_KEYS = tuple(s.name for s in SETTINGS_TABLE if s.scope in (PROCESS, BOTH))
# Options that only mean something to a TLS listener.
TLS_OPTIONS = (
    "tls-cert",
    "tls-key",
    "tls-client-ca",
    "tls-min-version",
    "tls-alpn",
    "tls-client-name",
)


@dataclass(eq=False)
class ServiceSettings:
    """
    Everything that decides how one service's connections are handled.

    @ivar name: the service's name (C{default} on the command line).
    @ivar values: every service key to its checked value (tuples for the
        repeatable ones).
    @ivar given: the keys given (not defaulted), for messages.
    @ivar tls: the TLS material of its TLS listeners, read when checked;
        None without a TLS listener.
    @ivar health: how its backends are checked (SPEC section 8).
    @ivar admission: who may connect, how often (SPEC section 9).
    @ivar websocket: its WebSocket clients' settings, or None when its
        clients are not WebSocket clients (SPEC section 10).
    """

    name: str
    values: dict[str, Any]
    given: frozenset[str] = frozenset()
    tls: ReloadableServerTLS | None = None
    health: HealthSettings = field(default_factory=HealthSettings)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    websocket: WebSocketSettings | None = None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def listeners(self) -> list[tuple[str, bool]]:
        """
        Every listener as (endpoint string, whether it is a TLS listener).
        """
        return [(d, False) for d in self["listen"]] + [
            (d, True) for d in self["listen-tls"]
        ]

    def sameAs(self, other: ServiceSettings) -> bool:
        """
        Whether C{other} has the same values (TLS files are re-read anyway).
        """
        return self.name == other.name and self.values == other.values


@dataclass(eq=False)
class Configuration:
    """
    The process-wide settings and the services.

    @ivar path: the file it was read from, or None for the command line.
    """

    process: dict[str, Any]
    services: dict[str, ServiceSettings] = field(default_factory=dict)
    path: str | None = None


def checkService(
    name: str,
    raw: Mapping[str, Any],
    defaultListener: bool = False,
    reactor: Any = None,
    binding: bool = True,
) -> ServiceSettings:
    """
    Check the raw values of one service: every value, how they fit
    together, and the TLS files (which are read).

    @param raw: the given keys to their raw values; a key missing takes the
        table's default.
    @param defaultListener: give the default listener when none is given
        (the command line); otherwise a service without one is an error.
    @param reactor: when given, Twisted's own parsers build each endpoint
        too, so what they refuse is found now.
    @param binding: False for C{--check}, which runs outside the process
        systemd hands its sockets to: C{systemd:} listeners are then not
        built.
    @raise SettingError: the first problem.
    """
    values = {key: SETTINGS[key].value(raw.get(key)) for key in SERVICE_KEYS}
    given = frozenset(raw)
    websocket = _webSocket(values, given)
    admission = _admission(values)
    _framingsCarry(values, given)
    if not values["listen"] and not values["listen-tls"]:
        if not defaultListener:
            raise SettingError(
                "listen",
                ": the service has no listener: give listen or listen-tls",
            )
        values["listen"] = (DEFAULT_LISTEN,)
    health = _healthSettings(values)
    if reactor is not None:
        _parseEndpoints(values, reactor, binding)
    tls = None
    if not values["listen-tls"]:
        for option in TLS_OPTIONS:
            if option in given:
                raise SettingError(
                    option,
                    ": there is no --listen-tls listener for it to apply to:"
                    " add one (--listen-tls tcp:7443) or leave"
                    f" --{option} out",
                )
    else:
        if not values["tls-cert"]:
            raise SettingError("listen-tls", ": needs at least one --tls-cert")
        if values["tls-client-name"] and values["tls-client-ca"] is None:
            raise SettingError(
                "tls-client-name",
                ": needs --tls-client-ca (client certificates are only asked"
                " for with a client CA)",
            )
        try:
            clientNames = parseClientNames(values["tls-client-name"])
            tls = ReloadableServerTLS(
                values["tls-cert"],
                values["tls-key"],
                values["tls-client-ca"],
                values["tls-min-version"],
                values["tls-alpn"],
                clientNames,
            )
        except (TLSError, InvalidClientName) as error:
            raise _named(error, "tls-cert")
    return ServiceSettings(name, values, given, tls, health, admission, websocket)


def _named(error: Exception, default: str) -> SettingError:
    """
    A L{SettingError} from an error whose message starts with the option it
    is about (C{--tls-key FILE: ...}), or is about C{default}.
    """
    text = str(error)
    match = _OPTION_NAME.match(text)
    if match is not None and match.group(1) in SETTINGS:
        return SettingError(match.group(1), text[match.end() :])
    return SettingError(default, ": " + text)


def _webSocket(
    values: dict[str, Any], given: frozenset[str]
) -> WebSocketSettings | None:
    """
    The C{websocket-*} settings, checked, and refused without C{client-framing
    websocket}, for which they would do nothing (SPEC section 10).
    """
    if values["client-framing"] != WEBSOCKET:
        for option in WEBSOCKET_OPTIONS:
            if option in given:
                raise SettingError(
                    option,
                    ": only WebSocket clients have it: add --client-framing"
                    f" websocket or leave --{option} out",
                )
        return None
    path = values["websocket-path"]
    problem = checkPath(path)
    if problem is not None:
        raise SettingError("websocket-path", f" {path!r}: {problem}")
    for origin in values["websocket-origin"]:
        problem = checkOrigin(origin)
        if problem is not None:
            raise SettingError("websocket-origin", f" {origin!r}: {problem}")
    return WebSocketSettings(
        path,
        values["websocket-origin"],
        values["websocket-message-type"],
        values["max-message-size"],
    )


def _admission(values: dict[str, Any]) -> AdmissionSettings:
    """
    The admission rules of SPEC section 9, checked.
    """
    try:
        return AdmissionSettings(
            allow=parseNetworks("--allow", values["allow"]),
            deny=parseNetworks("--deny", values["deny"]),
            maxConnectionsPerSource=values["max-connections-per-source"],
            maxConnectionRatePerSource=values["max-connection-rate-per-source"],
        )
    except InvalidRule as error:
        raise _named(error, "allow")


def _healthSettings(values: dict[str, Any]) -> HealthSettings:
    """
    The C{health-check*} settings as L{HealthSettings} (SPEC section 8),
    which checks how they fit together and with the backend framing.
    """
    send = values["health-check-send"]
    expect = values["health-check-expect"]
    try:
        return HealthSettings(
            mode=values["health-check"],
            interval=values["health-check-interval"],
            timeout=values["health-check-timeout"],
            rise=values["health-check-rise"],
            fall=values["health-check-fall"],
            send=None if send is None else parseSend(send),
            expect=None if expect is None else compileExpect(expect),
            backendFraming=values["backend-framing"],
            maxMessageSize=values["max-message-size"],
        )
    except HealthSettingsError as error:
        raise SettingError(error.option, f": {error.problem}")


def _framingsCarry(values: dict[str, Any], given: frozenset[str]) -> None:
    """
    A length-prefixed framing whose prefix cannot express
    C{--max-message-size} could never carry the messages it promises.
    """
    size = values["max-message-size"]
    for option in ("client-framing", "backend-framing"):
        limit = FRAMING_LIMITS.get(values[option])
        if limit is not None and size > limit:
            default = "" if "max-message-size" in given else " (its default)"
            raise SettingError(
                option,
                f" {values[option]} carries at most {limit} bytes"
                f" per message, but --max-message-size is {size}{default}:"
                f" give --max-message-size {limit} or less, or a wider framing",
            )


def _parseEndpoints(values: dict[str, Any], reactor: Any, binding: bool) -> None:
    from twisted.internet.endpoints import clientFromString

    from gateway.proxyprotocol import serverEndpoint

    for option in ("listen", "listen-tls"):
        for description in values[option]:
            if not binding and _innerKind(description) == "systemd":
                continue
            _parsed(option, description, serverEndpoint, reactor)
    for description in values["backend"]:
        _parsed("backend", description, clientFromString, reactor)


def _innerKind(description: str) -> str:
    kind = split(description).kind
    if kind == "haproxy":
        kind = split(description.split(":", 1)[1]).kind
    return kind


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
        raise SettingError(
            option,
            f" {description!r}: no socket named {error.args[0]!r}"
            " was passed by systemd (LISTEN_FDNAMES)",
        )
    except IndexError:
        raise SettingError(
            option,
            f" {description!r}: systemd passed no socket with that"
            " index (LISTEN_FDS); name it with name= instead",
        )
    except Exception:
        if option == "backend":
            form = clientForm(split(description).kind)
        else:
            form = serverForm(_innerKind(description))
        raise SettingError(
            option,
            f" {description!r}: Twisted cannot use this endpoint string:"
            f" write it as {form}",
        )


def checkProcess(raw: Mapping[str, Any], reactor: Any = None) -> dict[str, Any]:
    """
    Check the process-wide settings (C{metrics}, C{max-connections},
    C{drain-timeout}).

    @raise SettingError: the first problem.
    """
    values = {key: SETTINGS[key].value(raw.get(key)) for key in PROCESS_KEYS}
    if reactor is not None and values["metrics"] is not None:
        from twisted.internet.endpoints import serverFromString

        _parsed("metrics", values["metrics"], serverFromString, reactor)
    return values


def fromCommandLine(
    raw: Mapping[str, Any], reactor: Any = None, binding: bool = True
) -> Configuration:
    """
    The configuration the command line describes: one service, C{default}.

    @param raw: the given options (long names) to their raw values.
    @raise SettingError: as L{checkService}.
    """
    service = {key: value for key, value in raw.items() if key in SERVICE_KEYS}
    settings = checkService(DEFAULT_SERVICE, service, True, reactor, binding)
    process = checkProcess(
        {key: value for key, value in raw.items() if key in PROCESS_KEYS}, reactor
    )
    return Configuration(process, {DEFAULT_SERVICE: settings})


def loadFile(path: str, reactor: Any = None, binding: bool = True) -> Configuration:
    """
    Read and check the configuration file at C{path}; TLS files are read.

    @raise ConfigError: one line naming the file, the service and the key.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {(error.strerror or error)}".lower())
    return parseText(data, path, reactor, binding)


def parseText(
    data: bytes, path: str, reactor: Any = None, binding: bool = True
) -> Configuration:
    """
    Check the TOML text C{data} of the file C{path} (named in errors).

    @raise ConfigError: as L{loadFile}.
    """
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})")
    except tomllib.TOMLDecodeError as error:
        # tomllib says "Invalid value (at line 3, column 8)".
        raise ConfigError(f"{path}: TOML syntax error: {error}")
    process: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    services: dict[str, Any] = {}
    for key, value in document.items():
        if key == "defaults":
            defaults = _table(path, key, value)
        elif key == "services":
            services = _table(path, key, value)
        elif key in PROCESS_KEYS:
            process[key] = value
        elif key in SETTINGS:
            raise ConfigError(
                f"{path}: {key}: a service key: put it in [defaults] or in a"
                " [services.NAME] table"
            )
        else:
            raise ConfigError(f"{path}: {key}: unknown key{_known(key)}")
    _unknownKeys(path, "defaults", defaults)
    try:
        processValues = checkProcess(process, reactor)
    except SettingError as error:
        raise ConfigError(error.inFile(path))
    if not services:
        raise ConfigError(f"{path}: no [services.NAME] table: the file serves nothing")
    configuration = Configuration(processValues, path=path)
    owners: dict[str, str] = {}
    for name, table in services.items():
        where = f"{path}: services.{name}"
        if not SERVICE_NAME.fullmatch(name):
            raise ConfigError(
                f"{where}: not a service name: use 1 to 32 of a-z, 0-9, _ and -,"
                " starting with a letter or a digit"
            )
        table = _table(path, f"services.{name}", table)
        _unknownKeys(path, f"services.{name}", table)
        raw = {**defaults, **table}
        try:
            settings = checkService(name, raw, False, reactor, binding)
        except SettingError as error:
            given = (
                "defaults" if error.key in defaults and error.key not in table else None
            )
            raise ConfigError(error.inFile(f"{path}: {given or f'services.{name}'}"))
        for description, tls in settings.listeners():
            key = "listen-tls" if tls else "listen"
            other = owners.get(description)
            if other is not None:
                raise ConfigError(
                    f"{where}: {key}: {description!r} is a listener of services.{other}"
                    " too: a listener belongs to one service"
                )
            owners[description] = name
        configuration.services[name] = settings
    return configuration


def _table(path: str, key: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: must be a table ([{key}])")
    return value


def _unknownKeys(path: str, where: str, table: Mapping[str, Any]) -> None:
    for key in table:
        if key in SERVICE_KEYS:
            continue
        if key in SETTINGS:
            raise ConfigError(
                f"{path}: {where}: {key}: a process-wide key: put it at the top"
                " of the file"
            )
        raise ConfigError(f"{path}: {where}: {key}: unknown key{_known(key)}")


def _known(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(SETTINGS), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def toTOML(configuration: Mapping[str, Mapping[str, Any]]) -> str:
    """
    Render raw service tables (name to keys and values) as TOML text, for
    tests and examples. Values are strings, numbers or lists of strings.
    """
    lines = []
    for name, table in configuration.items():
        lines.append(f"[services.{name}]")
        for key, value in table.items():
            lines.append(f"{key} = {_tomlValue(value)}")
        lines.append("")
    return "\n".join(lines)


def _tomlValue(value: object) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_tomlValue(item) for item in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
