"""
The gateway's twistd options, and the service they describe.

This is the only module that reads options; everything else is handed
objects.
"""

from __future__ import annotations

import getopt
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import reflect, usage

from gateway import __version__
from gateway import reactor as gatewayReactor
from gateway.config import (
    DEFAULT_LISTEN,
    DEFAULT_METRICS,
    DEFAULT_SERVICE,
    SETTINGS,
    SETTINGS_TABLE,
    ConfigError,
    Setting,
    SettingError,
    fromCommandLine,
    loadFile,
)
from gateway.daemon import StartupReport, installParentWait
from gateway.endpoints import withBacklog
from gateway.healthservice import StatusSource, healthProblems
from gateway.notify import Notifier, NotifyService
from gateway.proxy import Connections
from gateway.service import (
    GatewayService,
    ListenerService,
    LogReopenService,
    SignalService,
    StopSignals,
)
from gateway.services import ReloadFailed, Services
from gateway.stats import NoRecorder, Recorder
from gateway.tls import TLSError

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_METRICS",
    "DEFAULT_SERVICE",
    "Options",
    "makeService",
]

log = Logger(namespace="gateway.tap")


def _reactor() -> Any:
    # Imported late: twistd installs the reactor it was asked for with
    # --reactor before the gateway's options are parsed. Asked for none,
    # the gateway installs its own rather than Twisted's default.
    if gatewayReactor.canInstall():
        gatewayReactor.install()
    from twisted.internet import reactor

    return reactor


def _repeatable(setting: Setting) -> Callable[[Options, str], None]:
    def opt(self: Options, value: str) -> None:
        self[setting.name].append(value)

    opt.__doc__ = setting.help
    opt.__name__ = "opt_" + setting.name.replace("-", "_")
    return opt


class Options(usage.Options):
    """
    C{twistd gateway} options. Every value is checked before anything listens.

    The settings' options are made from L{gateway.config.SETTINGS_TABLE}, so
    that each is the key of the same name in a configuration file.
    """

    synopsis = "[options]"
    longdesc = (
        "Translate newline-delimited client messages into length-prefixed "
        "backend frames and back. With no --backend, a built-in echo backend "
        "is started for trying the gateway out. With --config FILE, a TOML "
        "file describes any number of services, and SIGHUP reloads it."
        " See gateway(8) (man gateway) and the manual in docs/ for every"
        " option, signal and log line."
    )

    optParameters = [
        [setting.name, None, setting.default, setting.help]
        for setting in SETTINGS_TABLE
        if not setting.repeatable
    ] + [
        [
            "config",
            None,
            None,
            "TOML file describing the services (no other gateway option may be"
            " given with it, but --check); SIGHUP reloads it.",
        ],
    ]
    optFlags = [
        [
            "check",
            None,
            "Check the configuration (file, endpoints, framings, TLS files) and"
            " exit: 0 and 'FILE: ok', or 1 and one line saying what is wrong.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        for setting in SETTINGS_TABLE:
            if setting.repeatable:
                self[setting.name] = []
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

    def postOptions(self) -> None:
        check = bool(self["check"])
        reactor = _reactor()
        path = self["config"]
        if path is not None:
            others = sorted(self.given - {"config", "check"})
            if others:
                raise usage.UsageError(
                    f"--{others[0]}: not with --config: the file describes every"
                    f" service; write it there ({others[0]} = ...)"
                )
            try:
                configuration = loadFile(path, reactor, binding=not check)
            except ConfigError as error:
                raise usage.UsageError(str(error))
        else:
            raw = {key: self[key] for key in self.given if key in SETTINGS}
            try:
                configuration = fromCommandLine(raw, reactor, binding=not check)
            except SettingError as error:
                raise usage.UsageError(error.onCommandLine())
        if check:
            print(f"{path}: ok" if path is not None else "configuration ok")
            raise SystemExit(0)
        self["configuration"] = configuration
        # The checked values, where code and tests that read the options of
        # the one service the command line describes find them.
        service = next(iter(configuration.services.values()))
        for key, value in service.values.items():
            self[key] = list(value) if SETTINGS[key].repeatable else value
        self.update(configuration.process)
        self["tls"] = service.tls
        self["health"] = service.health
        self["admission"] = service.admission


# A repeatable setting is an opt_ method (usage.Options collects each value),
# its docstring the table's help.
for _setting in SETTINGS_TABLE:
    if _setting.repeatable:
        _method = _repeatable(_setting)
        setattr(Options, _method.__name__, _method)
del _setting, _method


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
    Compose the gateway: its services (listeners, backends), its metrics,
    and its conversation with systemd.
    """
    if reactor is None:
        reactor = _reactor()
    configuration = options["configuration"]
    registry = None
    if recorder is None:
        if configuration.process["metrics"] is None:
            recorder = NoRecorder()
        else:
            from prometheus_client import CollectorRegistry, disable_created_metrics

            from gateway.metrics import GatewayMetrics

            # Process-wide, and the gateway owns its process: no *_created
            # series (docs/metrics.rst says why).
            disable_created_metrics()
            registry = CollectorRegistry()
            recorder = GatewayMetrics(registry, __version__)
    connections = Connections(configuration.process["max-connections"])
    gateway = GatewayService(
        connections, reactor, configuration.process["drain-timeout"]
    )
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
    services = Services(gateway, reactor, recorder, connections)
    services.start(configuration)
    gateway.readinessChecks.append(healthProblems(services.checkers))
    if registry is not None:
        from gateway.metrics import metricsSite

        status = StatusSource(
            __version__, gateway, connections, recorder, services.views, reactor
        )
        gateway.readyHooks.append(status.markStarted)
        metrics = configuration.process["metrics"]
        ListenerService(
            "metrics",
            "--metrics" if configuration.path is None else "metrics",
            metrics,
            serverFromString(reactor, withBacklog(metrics)),
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
    _systemd(gateway, connections, services, recorder, reactor, report)
    return gateway


def _systemd(
    gateway: GatewayService,
    connections: Connections,
    services: Services,
    recorder: Recorder,
    reactor: Any,
    report: StartupReport,
) -> None:
    """
    READY=1 once every listener is bound, STATUS=, the watchdog, STOPPING=1
    when draining starts, and the SIGHUP reload.
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
    reloader = Reloader(services, recorder, reactor)

    async def reload() -> None:
        notifier.reloading()
        try:
            await reloader.reload()
        finally:
            notifier.ready(status())

    def signalled() -> None:
        Deferred.fromCoroutine(reload()).addErrback(
            lambda failure: log.failure("reload failed unexpectedly", failure)
        )

    SignalService(signal.SIGHUP, signalled, reactor).setServiceParent(gateway)
    StopSignals(gateway, reactor).setServiceParent(gateway)
    LogReopenService(reactor).setServiceParent(gateway)


class Reloader:
    """
    What SIGHUP does (SPEC section 7): re-read the configuration file and
    apply it as one step, or, without one, re-read the TLS files.

    Reloads run one at a time: a SIGHUP arriving during one runs another
    once it is done.
    """

    def __init__(self, services: Services, recorder: Recorder, reactor: Any) -> None:
        self.services = services
        self.recorder = recorder
        self.reactor = reactor
        self._running = False
        self._again = False

    async def reload(self) -> None:
        if self._running:
            self._again = True
            return
        self._running = True
        try:
            while True:
                self._again = False
                self.recorder.reloaded(await self._once(), time.time())
                if not self._again:
                    break
        finally:
            self._running = False

    async def _once(self) -> bool:
        """
        One reload; whether it succeeded.
        """
        configuration = self.services.configuration
        assert configuration is not None
        if self.services.gateway.draining:
            # Its listeners are closed, and it is about to end.
            log.info("SIGHUP while draining: not reloaded")
            return False
        if configuration.path is None:
            return self._reloadTLS()
        try:
            new = loadFile(configuration.path, self.reactor)
            summary = await self.services.reload(new)
        except (ConfigError, ReloadFailed) as error:
            log.error("reload failed, nothing changed: {error}", error=str(error))
            return False
        log.info("reloaded {path}: {summary}", path=new.path, summary=summary)
        return True

    def _reloadTLS(self) -> bool:
        try:
            reloaded = self.services.reloadTLS()
        except TLSError as error:
            log.error(
                "TLS reload failed, keeping the files loaded before: {error}",
                error=str(error),
            )
            return False
        if reloaded:
            log.info("TLS reload: certificates, keys and CA files re-read")
        else:
            log.info("SIGHUP: no TLS files to reload")
        return True
