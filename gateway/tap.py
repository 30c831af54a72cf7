"""
The gateway's twistd options, and the service they describe.

This is the only module that reads options; everything else is handed
objects.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.python import usage

from gateway.backends import Backend, BackendPool
from gateway.codec import FRAMINGS, framing
from gateway.demo import DemoBackendService
from gateway.names import backendName, listenerName
from gateway.proxy import Connections, ProxyFactory
from gateway.service import GatewayService, ListenerService
from gateway.stats import NoRecorder, Recorder

DEFAULT_LISTEN = "tcp:7000:interface=127.0.0.1"


def _reactor() -> Any:
    # Imported late: twistd installs the reactor it was asked for first.
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
        "is started for trying the gateway out."
    )

    optParameters = [
        [
            "client-framing",
            None,
            "lf",
            "Framing on the client side: " + ", ".join(FRAMINGS) + ".",
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
            "On SIGTERM, seconds open connections may take to finish.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["backend"] = []

    def opt_listen(self, description: str) -> None:
        """
        Listen on this Twisted server endpoint (repeatable), e.g.
        tcp:7000:interface=127.0.0.1, tcp6:7000, unix:/run/gateway.sock,
        systemd:domain=INET:name=gateway, haproxy:tcp:7000.
        [default: tcp:7000:interface=127.0.0.1]
        """
        self["listen"].append(description)

    def opt_backend(self, description: str) -> None:
        """
        Connect to this Twisted client endpoint (repeatable: round robin,
        skipping backends that fail), e.g. tcp:host=10.0.0.5:port=9000,
        unix:path=/run/backend.sock. [default: a built-in echo backend]
        """
        self["backend"].append(description)

    def postOptions(self) -> None:
        for option in ("client-framing", "backend-framing"):
            if self[option] not in FRAMINGS:
                raise usage.UsageError(
                    f"--{option}: unknown framing {self[option]!r};"
                    f" choose one of {', '.join(FRAMINGS)}"
                )
        self["max-message-size"] = _number(self, "max-message-size", int, minimum=1)
        self["max-connections"] = _number(self, "max-connections", int, minimum=1)
        self["connect-timeout"] = _number(self, "connect-timeout", float, above=0)
        self["idle-timeout"] = _number(self, "idle-timeout", float, minimum=0)
        self["drain-timeout"] = _number(self, "drain-timeout", float, minimum=0)
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        reactor = _reactor()
        for description in self["listen"]:
            _parsed("--listen", description, serverFromString, reactor)
        for description in self["backend"]:
            _parsed("--backend", description, clientFromString, reactor)


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


def _parsed(option: str, description: str, parse: Any, reactor: Any) -> Any:
    try:
        return parse(reactor, description)
    except Exception as error:
        reason = str(error) or type(error).__name__
        raise usage.UsageError(f"{option} {description!r}: {reason}")


def makeService(
    options: Options, reactor: Any = None, recorder: Recorder | None = None
) -> IService:
    """
    Compose the gateway: its listeners, its backends and its core.
    """
    if reactor is None:
        reactor = _reactor()
    if recorder is None:
        recorder = NoRecorder()
    connections = Connections(options["max-connections"])
    gateway = GatewayService(connections, reactor, options["drain-timeout"])
    if options["backend"]:
        backends = [
            Backend(
                backendName(description),
                clientFromString(reactor, description),
                recorder.backend(backendName(description)),
            )
            for description in options["backend"]
        ]
    else:
        demo = DemoBackendService(reactor)
        demo.setServiceParent(gateway)
        backends = [Backend("demo", demo.endpoint(), recorder.backend("demo"))]
    pool = BackendPool(backends, reactor, options["connect-timeout"])
    maxSize = options["max-message-size"]
    clientFraming = framing(options["client-framing"], maxSize)
    backendFraming = framing(options["backend-framing"], maxSize)
    for description in options["listen"]:
        name = listenerName(description)
        factory = ProxyFactory(
            name,
            clientFraming,
            backendFraming,
            pool.connect,
            connections,
            reactor,
            recorder.listener(name),
            idleTimeout=options["idle-timeout"],
        )
        ListenerService(
            name,
            "--listen",
            description,
            serverFromString(reactor, description),
            factory,
        ).setServiceParent(gateway)
    return gateway
