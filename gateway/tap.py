"""
The gateway's twistd options, and the service they describe.

This is the only module that reads options; everything else is handed
objects.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger
from twisted.python import usage

from gateway import __version__
from gateway import reactor as gatewayReactor
from gateway.backends import Backend, BackendPool
from gateway.codec import FRAMINGS, framing
from gateway.demo import DemoBackendService
from gateway.headerfirst import backendEndpoint, wrapEndpoint
from gateway.names import backendName, listenerName
from gateway.notify import Notifier, NotifyService
from gateway.proxy import Connections, ProxyFactory
from gateway.proxyprotocol import HEADERS, isBehindProxy, serverEndpoint
from gateway.service import GatewayService, ListenerService, SignalService
from gateway.stats import NoRecorder, Recorder
from gateway.tls import ReloadableServerTLS, TLSError, wrapFactory

DEFAULT_LISTEN = "tcp:7000:interface=127.0.0.1"
DEFAULT_METRICS = "tcp:9180:interface=127.0.0.1"
TLS_VERSIONS = ("1.2", "1.3")

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
            "v1 or v2: send the client's original address to the backend"
            " (PROXY protocol) before the first frame. [default: none]",
        ],
        [
            "metrics",
            None,
            DEFAULT_METRICS,
            "Server endpoint for /metrics, /healthz and /readyz, or none.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["listen-tls"] = []
        self["tls-cert"] = []
        self["tls-key"] = []
        self["backend"] = []

    def opt_listen(self, description: str) -> None:
        """
        Listen on this Twisted server endpoint (repeatable), e.g.
        tcp:7000:interface=127.0.0.1, tcp6:7000, unix:/run/gateway.sock,
        systemd:domain=INET:name=gateway, haproxy:tcp:7000.
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

    def opt_tls_key(self, path: str) -> None:
        """
        PEM private key of the --tls-cert in the same position (repeatable).
        [default: the key inside the certificate file]
        """
        self["tls-key"].append(path)

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
        if self["tls-min-version"] not in TLS_VERSIONS:
            raise usage.UsageError(
                f"--tls-min-version: {self['tls-min-version']!r} is not 1.2 or 1.3"
            )
        proxyVersion = self["backend-proxy-protocol"]
        if proxyVersion is not None and proxyVersion not in HEADERS:
            raise usage.UsageError(
                f"--backend-proxy-protocol: {proxyVersion!r} is not v1 or v2"
            )
        if not self["listen"] and not self["listen-tls"]:
            self["listen"] = [DEFAULT_LISTEN]
        reactor = _reactor()
        for option in ("listen", "listen-tls"):
            for description in self[option]:
                _parsed(f"--{option}", description, serverEndpoint, reactor)
        for description in self["backend"]:
            _parsed("--backend", description, clientFromString, reactor)
        if self["metrics"] == "none":
            self["metrics"] = None
        else:
            _parsed("--metrics", self["metrics"], serverFromString, reactor)
        self["tls"] = None
        if self["listen-tls"]:
            if not self["tls-cert"]:
                raise usage.UsageError("--listen-tls: needs at least one --tls-cert")
            try:
                self["tls"] = ReloadableServerTLS(
                    self["tls-cert"],
                    self["tls-key"],
                    self["tls-client-ca"],
                    self["tls-min-version"],
                )
            except TLSError as error:
                raise usage.UsageError(str(error))


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
    except KeyError as error:
        # What Twisted's systemd: parser raises for a name it was not given.
        raise usage.UsageError(
            f"{option} {description!r}: no socket named {error.args[0]!r}"
            " was passed by systemd (LISTEN_FDNAMES)"
        )
    except Exception as error:
        reason = str(error) or type(error).__name__
        raise usage.UsageError(f"{option} {description!r}: {reason}")


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
            # series (the README's "Metrics and health" says why).
            disable_created_metrics()
            registry = CollectorRegistry()
            recorder = GatewayMetrics(registry, __version__)
    connections = Connections(options["max-connections"])
    gateway = GatewayService(connections, reactor, options["drain-timeout"])
    pool = BackendPool(
        _backends(options, reactor, recorder, gateway),
        reactor,
        options["connect-timeout"],
    )
    maxSize = options["max-message-size"]
    clientFraming = framing(options["client-framing"], maxSize)
    backendFraming = framing(options["backend-framing"], maxSize)
    tls = options["tls"]
    proxyVersion = options["backend-proxy-protocol"]
    sendProxyHeader = HEADERS[proxyVersion] if proxyVersion else None
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
            )
            ListenerService(
                name,
                f"--{option}",
                description,
                serverEndpoint(reactor, description),
                wrapFactory(tls, factory, reactor) if tlsOn else factory,
            ).setServiceParent(gateway)
    if registry is not None:
        from gateway.metrics import metricsSite

        ListenerService(
            "metrics",
            "--metrics",
            options["metrics"],
            serverFromString(reactor, options["metrics"]),
            metricsSite(registry, gateway.ready, reactor),
            drains=False,
        ).setServiceParent(gateway)
        gateway.drainingHooks.append(lambda: recorder.setDraining(True))
    _systemd(gateway, connections, tls, reactor)
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
