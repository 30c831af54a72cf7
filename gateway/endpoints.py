"""
Endpoint strings as an operator writes them: read, checked, and given the
gateway's listen backlog.

Twisted's own parsers turn a mistake in an endpoint string into whatever
Python raises on the way (C{missing 1 required positional argument},
C{invalid literal for int()}, C{UnlistableError}); an operator cannot act on
those. Every string the gateway is given is checked here first, in Twisted's
own syntax (colons separate arguments, C{key=value} names one, a backslash
escapes the next character), and each mistake is one sentence saying what
is wrong and how to write it instead. Twisted's parser still builds the
endpoint afterwards; should it refuse something these checks let through,
the caller reports the kind's usual form, never the exception's text.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

# The accept queue of every listener the gateway binds, unless the endpoint
# string sets backlog=. Twisted's default of 50 overflows under a burst of
# connections (128 TLS clients at once dropped SYNs: p99 connect time over
# 1 s against 166 ms with 1024); HAProxy and stunnel listen with 4096 too.
# Linux caps it at net.core.somaxconn (4096 since Linux 5.4).
LISTEN_BACKLOG = 4096

_PORT_MAX = 65535


class EndpointError(ValueError):
    """
    An endpoint string an operator has to rewrite; C{str()} is one sentence
    saying what is wrong and, where it helps, how to write it.
    """


@dataclass(frozen=True)
class Endpoint:
    """
    An endpoint string split as Twisted splits it.

    @ivar kind: the part before the first colon, lower case (C{tcp}).
    @ivar args: the positional arguments, unescaped.
    @ivar kwargs: the C{key=value} arguments, unescaped.
    @ivar raw: the arguments as written (escapes kept), in order, for
        writing a corrected string back.
    """

    kind: str
    args: tuple[str, ...]
    kwargs: dict[str, str]
    raw: tuple[str, ...]


def split(description: str) -> Endpoint:
    """
    Split C{description} the way C{twisted.internet.endpoints} does: C{:}
    separates arguments, the first C{=} of an argument separates its key
    from its value, a backslash escapes the character after it.
    """
    pieces: list[list[str]] = [[""]]
    raws: list[str] = [""]
    afterEquals = False
    chars = iter(description)
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            pieces[-1][-1] += escaped
            raws[-1] += char + escaped
        elif char == ":":
            pieces.append([""])
            raws.append("")
            afterEquals = False
        elif char == "=" and not afterEquals:
            pieces[-1].append("")
            raws[-1] += char
            afterEquals = True
        else:
            pieces[-1][-1] += char
            raws[-1] += char
    kind = pieces[0][0].strip().lower()
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for piece in pieces[1:]:
        if len(piece) == 1:
            args.append(piece[0])
        else:
            kwargs[piece[0]] = piece[1]
    return Endpoint(kind, tuple(args), kwargs, tuple(raws[1:]))


def join(kind: str, raw: list[str] | tuple[str, ...]) -> str:
    return ":".join([kind, *raw])


def escape(value: str) -> str:
    """
    C{value} with its colons, equals signs and backslashes escaped.
    """
    return re.sub(r"([\\:=])", r"\\\1", value)


# Server kinds: the positional arguments in Twisted's order, and every key.
_SERVER_FORMS = {
    "tcp": (("port", "interface", "backlog"), "tcp:PORT[:interface=ADDRESS]"),
    "tcp6": (("port", "backlog", "interface"), r"tcp6:PORT[:interface=\:\:1]"),
    "unix": (
        ("address", "mode", "backlog", "lockfile"),
        "unix:/PATH/TO/SOCKET[:mode=660]",
    ),
    "systemd": (("domain", "index", "name"), "systemd:domain=INET:name=NAME"),
}
_CLIENT_FORMS = {
    "tcp": (("host", "port", "timeout", "bindAddress"), "tcp:host=HOST:port=PORT"),
    "tls": (
        (
            "host",
            "port",
            "timeout",
            "bindAddress",
            "certificate",
            "privateKey",
            "trustRoots",
            "endpoint",
        ),
        "tls:HOST:PORT[:trustRoots=/DIR/OF/PEM/FILES]",
    ),
    "unix": (("path", "timeout", "lockfile"), "unix:path=/PATH/TO/SOCKET"),
}

_LISTEN_KINDS = "tcp:, tcp6:, unix:, systemd: or haproxy: before one of those"
_BACKEND_KINDS = "tcp:host=HOST:port=PORT, tls:HOST:PORT or unix:path=PATH"


def serverForm(kind: str) -> str:
    """
    How a server endpoint of C{kind} is written, for error messages.
    """
    return _SERVER_FORMS.get(kind, ((), "tcp:PORT[:interface=ADDRESS]"))[1]


def clientForm(kind: str) -> str:
    """
    How a client endpoint of C{kind} is written, for error messages.
    """
    return _CLIENT_FORMS.get(kind, ((), "tcp:host=HOST:port=PORT"))[1]


def checkListen(description: str, tlsOption: bool = False) -> None:
    """
    Check a C{--listen} or C{--listen-tls} endpoint string.

    @raise EndpointError: with the sentence to show.
    """
    endpoint = split(description)
    if endpoint.kind == "haproxy":
        inner = description.split(":", 1)[1] if ":" in description else ""
        if not inner:
            raise EndpointError(
                "haproxy: wraps another endpoint: write haproxy:tcp:PORT"
            )
        _checkServer(split(inner), inner, tlsOption, behindProxy=True)
        return
    _checkServer(endpoint, description, tlsOption)


def checkMetrics(description: str) -> None:
    """
    Check a C{--metrics} endpoint string (any Twisted server endpoint; the
    usual kinds are checked closely).

    @raise EndpointError: with the sentence to show.
    """
    endpoint = split(description)
    if endpoint.kind in _SERVER_FORMS:
        _checkServer(endpoint, description, tlsOption=False, metrics=True)
    elif not endpoint.kind:
        raise EndpointError(
            "empty endpoint kind: write tcp:9180:interface=127.0.0.1, or none"
        )


def _checkServer(
    endpoint: Endpoint,
    description: str,
    tlsOption: bool,
    behindProxy: bool = False,
    metrics: bool = False,
) -> None:
    kind = endpoint.kind
    if kind == "ssl" and not metrics:
        raise EndpointError(
            "Twisted's ssl: endpoint bypasses the gateway's TLS handling"
            " (certificates, client CAs, SIGHUP reload): use --listen-tls"
            " with a tcp: endpoint and --tls-cert instead"
            + ("" if tlsOption else ", e.g. --listen-tls tcp:7443")
        )
    if kind == "haproxy":
        raise EndpointError("haproxy: wraps one endpoint, once: haproxy:tcp:PORT")
    if kind not in _SERVER_FORMS:
        raise EndpointError(
            f"unknown endpoint kind {kind + ':'!r}: use {_LISTEN_KINDS}"
            if kind
            else f"empty endpoint kind: use {_LISTEN_KINDS}"
        )
    names, form = _SERVER_FORMS[kind]
    values = _arguments(endpoint, description, names, form)
    if kind in ("tcp", "tcp6"):
        _checkPort(values, form, description)
        interface = values.get("interface", "")
        if interface:
            _checkAddress("interface", interface, form)
    elif kind == "unix":
        _checkSocketPath(values.get("address", ""), form)
        mode = values.get("mode", "666")
        if not re.fullmatch(r"0?[0-7]{3}", mode):
            raise EndpointError(
                f"mode={mode!r} is not an octal file mode: write mode=660"
            )
        lockfile = values.get("lockfile", "1")
        if lockfile not in ("0", "1"):
            raise EndpointError(f"lockfile={lockfile!r} is not 0 or 1")
    elif kind == "systemd":
        domain = values.get("domain", "")
        if domain not in ("INET", "INET6", "UNIX"):
            raise EndpointError(
                f"domain={domain!r} is not INET, INET6 or UNIX: write {form}"
            )
        if ("index" in values) == ("name" in values):
            raise EndpointError(f"give the socket's name= (or index=), once: {form}")
        if "index" in values and not values["index"].isdigit():
            raise EndpointError(
                f"index={values['index']!r} is not a number: use name= as in {form}"
            )
    if "backlog" in values:
        backlog = values["backlog"]
        if not backlog.isdigit() or int(backlog) < 1:
            raise EndpointError(
                f"backlog={backlog!r} is not a whole number of 1 or more"
            )


def checkBackend(description: str) -> None:
    """
    Check a C{--backend} endpoint string, and a C{tls:} backend's files.

    @raise EndpointError: with the sentence to show.
    """
    endpoint = split(description)
    kind = endpoint.kind
    if kind not in _CLIENT_FORMS:
        hint = ""
        if kind == "ssl":
            hint = " (Twisted's ssl: does not check the backend's host name)"
        raise EndpointError(
            (f"unknown endpoint kind {kind + ':'!r}" if kind else "empty endpoint kind")
            + f"{hint}: use {_BACKEND_KINDS}"
        )
    names, form = _CLIENT_FORMS[kind]
    values = _arguments(endpoint, description, names, form)
    if kind in ("tcp", "tls"):
        host = values.get("host", "")
        if not host:
            raise EndpointError(f"no host: write {form}")
        _checkAddress("host", host, form, hostname=True)
        if "port" not in values:
            raise EndpointError(f"no port: write {form}")
        _checkPort(values, form, description, zero=False)
        if "bindAddress" in values:
            _checkAddress("bindAddress", values["bindAddress"], form)
    if kind == "unix" and not values.get("path"):
        raise EndpointError(f"no path: write {form}")
    if "timeout" in values:
        timeout = values["timeout"]
        if not timeout.isdigit() or int(timeout) < 1:
            raise EndpointError(
                f"timeout={timeout!r} is not a whole number of seconds of 1 or more"
            )
    if "lockfile" in values and values["lockfile"] not in ("0", "1"):
        raise EndpointError(f"lockfile={values['lockfile']!r} is not 0 or 1")
    if kind == "tls":
        if "endpoint" in values:
            raise EndpointError(
                "endpoint= is not supported for a backend: write " + form
            )
        if "trustRoots" in values:
            _checkTrustRoots(values["trustRoots"])
        for key in ("certificate", "privateKey"):
            if key in values:
                _checkReadable(key, values[key])
        if "privateKey" in values and "certificate" not in values:
            raise EndpointError("privateKey= needs certificate= beside it")
        if "certificate" in values:
            _checkClientCertificate(values["certificate"], values.get("privateKey"))


def _arguments(
    endpoint: Endpoint, description: str, names: tuple[str, ...], form: str
) -> dict[str, str]:
    """
    Map positional and keyword arguments onto Twisted's parameter names, as
    Python would call the parser, refusing what it would refuse.
    """
    _checkUnescapedIPv6(endpoint, description)
    positional = names
    if names[0] == "host" and len(endpoint.args) == 1 and "host" in endpoint.kwargs:
        # Twisted reads tcp:host=HOST:PORT's lone positional as the port.
        positional = ("port",)
    if len(endpoint.args) > len(positional):
        raise EndpointError(
            f"too many arguments ({len(endpoint.args) + 1} parts between"
            f" colons): write {form}"
        )
    values = dict(zip(positional, endpoint.args))
    for key, value in endpoint.kwargs.items():
        if key not in names:
            raise EndpointError(
                f"unknown key {key!r} for {endpoint.kind}: (keys: "
                + ", ".join(names)
                + f"): write {form}"
            )
        if key in values:
            raise EndpointError(
                f"{key} given twice (by position and as {key}=): write {form}"
            )
        values[key] = value
    return values


def _checkPort(
    values: dict[str, str], form: str, description: str, zero: bool = True
) -> None:
    port = values.get("port", "")
    if not port:
        raise EndpointError(f"no port: write {form}")
    if port.isdigit() and int(port) <= _PORT_MAX and (zero or int(port) > 0):
        return
    lowest = 0 if zero else 1
    message = f"port {port!r} is not a number from {lowest} to {_PORT_MAX}"
    if _isAddress(port) and values.get("interface", "").isdigit():
        message += (
            ": the port comes first, then the address:"
            f" tcp:{values['interface']}:interface={escape(port)}"
        )
    else:
        message += f": write {form}"
    raise EndpointError(message)


def _isAddress(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?"
)


def _checkAddress(key: str, value: str, form: str, hostname: bool = True) -> None:
    if _isAddress(value.split("%", 1)[0]) or (hostname and _HOSTNAME.fullmatch(value)):
        return
    raise EndpointError(
        f"{key}={value!r} is neither an IP address nor a host name: write {form}"
    )


def _checkUnescapedIPv6(endpoint: Endpoint, description: str) -> None:
    """
    Refuse an IPv6 address whose colons were not escaped, naming the
    string as it should have been written.
    """
    raw = list(endpoint.raw)
    for index, part in enumerate(raw):
        key, equals, value = part.partition("=")
        if not equals:
            continue
        # The longest run of the following parts that, joined back with
        # colons, makes an IPv6 address.
        for end in range(len(raw), index + 1, -1):
            candidate = ":".join([value, *raw[index + 1 : end]])
            address = candidate.strip("[]")
            if "\\" in address or not _isIPv6(address):
                continue
            fixed = [*raw[:index], f"{key}={escape(address)}", *raw[end:]]
            raise EndpointError(
                "the colons of an IPv6 address must be escaped with a"
                f" backslash: write {join(endpoint.kind, fixed)}"
            )


def _isIPv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _checkSocketPath(path: str, form: str) -> None:
    if not path:
        raise EndpointError(f"no socket path: write {form}")
    if path.startswith("@"):
        return  # Linux's abstract namespace: no file.
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise EndpointError(
            f"directory {directory} does not exist: create it first, or"
            " choose a socket path in an existing directory"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise EndpointError(
            f"directory {directory} is not writable by this user:"
            " the socket (and its .lock file) are created there"
        )


def _checkReadable(key: str, path: str) -> None:
    if not os.path.isfile(path):
        raise EndpointError(f"{key}={path}: no such file")
    if not os.access(path, os.R_OK):
        raise EndpointError(f"{key}={path}: not readable by this user")


def _checkClientCertificate(certificate: str, privateKey: str | None) -> None:
    """
    The certificate a C{tls:} backend is shown, and its key (in the
    certificate's file unless C{privateKey=} names another), must load and
    match.
    """
    from OpenSSL.crypto import (
        FILETYPE_PEM,
        Error,
        load_certificate,
        load_privatekey,
    )
    from OpenSSL.SSL import TLS_METHOD, Context
    from OpenSSL.SSL import Error as SSLError

    with open(certificate, "rb") as file:
        certificateData = file.read()
    keyFile = privateKey or certificate
    with open(keyFile, "rb") as file:
        keyData = file.read()
    try:
        cert = load_certificate(FILETYPE_PEM, certificateData)
    except Error:
        raise EndpointError(f"certificate={certificate}: no PEM certificate in it")
    try:
        key = load_privatekey(FILETYPE_PEM, keyData)
    except Error:
        where = "privateKey=" if privateKey else "certificate="
        raise EndpointError(
            f"{where}{keyFile}: no unencrypted PEM private key in it"
            + ("" if privateKey else " (or give privateKey=)")
        )
    context = Context(TLS_METHOD)
    try:
        context.use_certificate(cert)
        context.use_privatekey(key)
        context.check_privatekey()
    except (Error, SSLError):
        raise EndpointError(
            f"privateKey={keyFile} does not match certificate={certificate}"
        )


def _checkTrustRoots(directory: str) -> None:
    """
    A C{trustRoots=} directory must hold at least one certificate Twisted
    will load: a C{*.pem} file starting with a PEM certificate (what
    C{twisted.internet.endpoints._loadCAsFromDir} reads; it skips the
    rest in silence, and with none every handshake fails).
    """
    from OpenSSL.crypto import FILETYPE_PEM, Error, load_certificate

    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise EndpointError(
            f"trustRoots={directory} {what}: give a directory of PEM (*.pem)"
            " CA certificates"
        )
    try:
        names = sorted(os.listdir(directory))
    except OSError as error:
        raise EndpointError(f"trustRoots={directory} cannot be read: {_reason(error)}")
    for name in names:
        if name.split(".")[-1].lower() != "pem":
            continue
        try:
            with open(os.path.join(directory, name), "rb") as file:
                load_certificate(FILETYPE_PEM, file.read())
        except (OSError, Error, ValueError):
            continue
        return
    raise EndpointError(
        f"trustRoots={directory} holds no certificate (Twisted reads only"
        " *.pem files holding a PEM certificate), so every backend"
        " handshake would fail"
    )


def _reason(error: OSError) -> str:
    return (error.strerror or "error").lower()


def withBacklog(description: str, backlog: int = LISTEN_BACKLOG) -> str:
    """
    C{description} with C{backlog=} set to C{backlog}, for the kinds that
    take one (C{tcp}, C{tcp6}, C{unix}, each also behind C{haproxy:}),
    unless it sets one itself, by key or by position.
    """
    endpoint = split(description)
    if endpoint.kind == "haproxy" and ":" in description:
        prefix, inner = description.split(":", 1)
        return f"{prefix}:{withBacklog(inner, backlog)}"
    if endpoint.kind not in ("tcp", "tcp6", "unix"):
        return description
    names = _SERVER_FORMS[endpoint.kind][0]
    if "backlog" in endpoint.kwargs or "backlog" in names[: len(endpoint.args)]:
        return description
    return f"{description}:backlog={backlog}"
