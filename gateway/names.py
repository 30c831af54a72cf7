"""
Short stable names for listeners and backends, as metrics and logs show them.

A name says what kind of endpoint it is and which port, socket name or file
it uses: never a directory, key material or a client's address.
"""

import os

from gateway.endpoints import split


def _split(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    Split an endpoint description into its kind, positional and keyword
    arguments, as Twisted does (L{gateway.endpoints.split}).
    """
    endpoint = split(description)
    return endpoint.kind, list(endpoint.args), endpoint.kwargs


def _noPath(value: str) -> str:
    """
    C{value} without any directory part.

    A port, a host name or a socket name has none; this keeps the promise
    for endpoint kinds a plugin adds, whose first argument may be a path.
    """
    return os.path.basename(value)


def listenerName(description: str, tls: bool = False) -> str:
    """
    The name of a listener: C{tcp:7000}, C{tls:7443}, C{systemd:gateway},
    C{tls+systemd:gateway-tls}, C{unix:gateway.sock}, C{proxy+tcp:7000}.
    """
    kind, args, kwargs = _split(description)
    prefix = ""
    if kind == "haproxy":
        prefix = "proxy+"
        inner = description.split(":", 1)[1] if ":" in description else ""
        kind, args, kwargs = _split(inner)
    if kind == "systemd":
        where = kwargs.get("name") or kwargs.get("index", "0")
    elif kind == "unix":
        where = args[0] if args else kwargs.get("address", "")
    else:
        where = args[0] if args else kwargs.get("port", "")
    if tls:
        kind = "tls" if kind in ("tcp", "tcp6") else f"tls+{kind}"
    return f"{prefix}{kind}:{_noPath(where)}"


def backendName(description: str) -> str:
    """
    The name of a backend: C{tcp:HOST:PORT}, C{tls:HOST:PORT}, C{unix:FILE}.
    """
    kind, args, kwargs = _split(description)
    if kind == "unix":
        return "unix:" + _noPath(args[0] if args else kwargs.get("path", ""))
    host = kwargs.get("host", args[0] if args else "")
    port = kwargs.get("port", args[1] if len(args) > 1 else "")
    return f"{kind}:{_noPath(host)}:{_noPath(port)}"
