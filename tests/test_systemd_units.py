"""
Tests for the systemd units in systemd/: what they promise, and what
systemd-analyze says of them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from gateway.tap import Options

ROOT = Path(__file__).parent.parent
UNITS = ROOT / "systemd"
OPTIONS_FILE = ROOT / "etc" / "default" / "gateway"
README = ROOT / "README.md"
# The manual's pages: installation and scaling hold GATEWAY_OPTS examples.
MANUAL = sorted((ROOT / "docs").glob("*.rst"))
SERVICE = UNITS / "gateway.service"
SOCKET = UNITS / "gateway.socket"
TLS_SOCKET = UNITS / "gateway-tls.socket"

# Where the service expects the gateway's virtualenv.
TWISTD = "/opt/gateway/bin/twistd"

# SPEC §2 defaults the unit has to make room for.
DEFAULT_DRAIN_TIMEOUT = 30
DEFAULT_MAX_CONNECTIONS = 10000
FDS_PER_CONNECTION = 2  # the client's socket and its backend's

# The worst `systemd-analyze security` exposure the unit may have (0 is best,
# 10 worst); systemd calls up to 2.x "OK".
EXPOSURE_LIMIT = 2.5

# prctl(2) constants from linux/prctl.h (Linux 6.3 and later).
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def readUnit(path: Path) -> dict[str, dict[str, list[str]]]:
    """
    Parse a unit file into C{{section: {key: [values in order]}}}.

    Enough for these files: no line continuations, keys may repeat.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """
    A systemd time span such as C{45s}, C{2min} or C{1min 30s}, in seconds.
    """
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


class UnitContentTests(SynchronousTestCase):
    """
    The units promise what SPEC §6 asks of them.
    """

    def setUp(self) -> None:
        self.service = readUnit(SERVICE)["Service"]

    def test_notify(self) -> None:
        """
        The gateway tells systemd when it is ready, and only its main process
        may; it has a watchdog.
        """
        self.assertEqual(self.service["Type"], ["notify"])
        self.assertEqual(self.service["NotifyAccess"], ["main"])
        self.assertGreater(seconds(self.service["WatchdogSec"][-1]), 0)

    def test_execStart(self) -> None:
        """
        twistd runs in the foreground, writes no pid file, and takes the
        gateway options from the environment file.
        """
        [execStart] = self.service["ExecStart"]
        self.assertTrue(
            execStart.startswith(
                f"{TWISTD} --nodaemon --pidfile= gateway $GATEWAY_OPTS"
            ),
            execStart,
        )
        self.assertEqual(self.service["EnvironmentFile"], ["-/etc/default/gateway"])
        self.assertEqual(self.service["ExecReload"], ["/bin/kill -HUP $MAINPID"])

    def test_stopTimeoutOutlastsDrain(self) -> None:
        """
        systemd waits longer than the default drain before it kills.
        """
        [timeout] = self.service["TimeoutStopSec"]
        self.assertGreater(seconds(timeout), DEFAULT_DRAIN_TIMEOUT)

    def test_fileLimit(self) -> None:
        """
        The descriptor limit has room for the default connection limit.
        """
        [limit] = self.service["LimitNOFILE"]
        self.assertGreater(int(limit), DEFAULT_MAX_CONNECTIONS * FDS_PER_CONNECTION)

    def test_socketsOptional(self) -> None:
        """
        The service neither pulls in nor requires the socket units, so that
        it can bind its own ports when socket activation is not used.
        """
        unit = readUnit(SERVICE)["Unit"]
        for key in ["Requires", "Wants", "BindsTo"]:
            for value in unit.get(key, []):
                self.assertNotIn(".socket", value)
        self.assertNotIn("Sockets", self.service)

    def test_socketNames(self) -> None:
        """
        The socket units pass their sockets under the names the gateway's
        C{systemd:} endpoints look for, to gateway.service, one process for
        all connections.
        """
        plain = readUnit(SOCKET)["Socket"]
        tls = readUnit(TLS_SOCKET)["Socket"]
        self.assertEqual(plain["FileDescriptorName"], ["gateway"])
        self.assertEqual(tls["FileDescriptorName"], ["gateway-tls"])
        self.assertEqual(tls["Service"], ["gateway.service"])
        for socket in [plain, tls]:
            self.assertNotIn("yes", socket.get("Accept", []))

    def test_socketBacklog(self) -> None:
        """
        The socket units queue as many connections as the gateway's own
        listeners do (SPEC §2).
        """
        from gateway.endpoints import LISTEN_BACKLOG

        for path in [SOCKET, TLS_SOCKET]:
            self.assertEqual(readUnit(path)["Socket"]["Backlog"], [str(LISTEN_BACKLOG)])

    def test_memoryDenyWriteExecute(self) -> None:
        """
        C{MemoryDenyWriteExecute=yes} is only set if Twisted's TLS works under
        it: pyOpenSSL's callbacks go through cffi, whose trampolines need
        writable and executable memory. Checked with the kernel's own W^X
        switch, C{PR_SET_MDWE}, which refuses the same mappings.
        """
        if self.service.get("MemoryDenyWriteExecute", ["no"])[-1] != "yes":
            return
        probe = f"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit(77)
from twisted.internet.ssl import CertificateOptions
CertificateOptions().getContext()
"""
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True
        )
        if result.returncode == 77:
            raise SkipTest("this kernel has no PR_SET_MDWE (Linux 6.3 or later)")
        self.assertEqual(result.returncode, 0, result.stderr)


def systemdAnalyze(*arguments: str) -> subprocess.CompletedProcess[str]:
    """
    Run systemd-analyze, or skip the test when it is not installed.
    """
    executable = shutil.which("systemd-analyze")
    if executable is None:
        raise SkipTest("systemd-analyze is not installed (package systemd)")
    return subprocess.run(
        [executable, *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""},
    )


class SystemdAnalyzeTests(SynchronousTestCase):
    """
    systemd-analyze finds nothing wrong with the units, and rates the
    service's sandbox as well exposed as SPEC §6 allows.
    """

    def test_verifyService(self) -> None:
        """
        C{systemd-analyze verify gateway.service} reports nothing but, where
        the gateway is not installed, the missing twistd.
        """
        result = systemdAnalyze("verify", str(SERVICE))
        if os.access(TWISTD, os.X_OK):
            expected = []
        else:
            expected = [
                f"gateway.service: Command {TWISTD} is not executable:"
                " No such file or directory"
            ]
        self.assertEqual(
            result.stderr.splitlines() + result.stdout.splitlines(), expected
        )

    def test_verifyWithTwistd(self) -> None:
        """
        With an executable where twistd will be, C{systemd-analyze verify}
        passes all three units without a word.
        """
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        twistd = directory / "twistd"
        twistd.write_text("#!/bin/sh\n")
        twistd.chmod(0o755)
        for unit in [SERVICE, SOCKET, TLS_SOCKET]:
            text = unit.read_text().replace(TWISTD, str(twistd))
            (directory / unit.name).write_text(text)
        result = systemdAnalyze(
            "verify",
            *(str(directory / unit.name) for unit in [SERVICE, SOCKET, TLS_SOCKET]),
        )
        self.assertEqual((result.returncode, result.stderr, result.stdout), (0, "", ""))

    def test_verifySockets(self) -> None:
        """
        C{systemd-analyze verify} passes the socket units as they are.
        """
        result = systemdAnalyze("verify", str(SOCKET), str(TLS_SOCKET))
        self.assertEqual((result.returncode, result.stderr, result.stdout), (0, "", ""))

    def test_securityExposure(self) -> None:
        """
        C{systemd-analyze security --offline=yes} rates the service's
        exposure at L{EXPOSURE_LIMIT} or better.
        """
        result = systemdAnalyze("security", "--offline=yes", str(SERVICE))
        if "--offline" in result.stderr:
            raise SkipTest("systemd-analyze is older than systemd 250 (no --offline)")
        match = re.search(
            r"Overall exposure level for gateway\.service: (\d+\.\d+)", result.stdout
        )
        self.assertIsNotNone(match, result.stdout + result.stderr)
        assert match is not None
        self.assertLessEqual(float(match.group(1)), EXPOSURE_LIMIT, result.stdout)


class _NamesOnly(Options):
    """
    The gateway's options without the checks of their values, which need
    the files and sockets the examples name.
    """

    def postOptions(self) -> None:
        pass


def exampleOptions(path: Path) -> list[tuple[int, list[str]]]:
    """
    Every value given to C{GATEWAY_OPTS} or C{GATEWAY_TLS_OPTS} in C{path},
    commented-out examples included, split into arguments: (line, arguments).
    """
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = re.search(r"GATEWAY(?:_TLS)?_OPTS=", line)
        if match is None:
            continue
        # What systemd reads: the assignment, its quotes removed.
        words = shlex.split(line.lstrip("#; "))
        [assignment] = [word for word in words if match.group() in word]
        value = assignment.partition(match.group())[2]
        found.append((number, shlex.split(value)))
    return found


class OptionNamesTests(SynchronousTestCase):
    """
    The unit, the options file and the README use only options twistd and
    the gateway have, with the arguments they take.
    """

    def test_execStart(self) -> None:
        """
        The unit's command line, with the options file as shipped (nothing
        set), is one twistd accepts: it parses, gateway options and all.
        """
        from twisted.scripts.twistd import ServerOptions

        [execStart] = readUnit(SERVICE)["Service"]["ExecStart"]
        arguments = execStart.split()
        self.assertEqual(arguments[0], TWISTD)
        shipped = dict(exampleOptions(OPTIONS_FILE))
        self.assertIn([], shipped.values(), "GATEWAY_OPTS is empty as shipped")
        arguments = [
            argument
            for argument in arguments[1:]
            if argument not in ("$GATEWAY_OPTS", "$GATEWAY_TLS_OPTS")
        ]
        config = ServerOptions()
        config.parseOptions(arguments)
        self.assertEqual(config.subCommand, "gateway")
        self.assertTrue(config["nodaemon"])
        self.assertEqual(config["pidfile"], "")

    def test_examples(self) -> None:
        """
        Every example in etc/default/gateway, the unit's comments, the
        README and the manual names real gateway options, each with its
        argument.
        """
        examples = [
            (path.name, number, arguments)
            for path in (OPTIONS_FILE, SERVICE, README, *MANUAL)
            for number, arguments in exampleOptions(path)
        ]
        self.assertGreater(len(examples), 8, "the examples were found")
        for name, number, arguments in examples:
            try:
                _NamesOnly().parseOptions(arguments)
            except usage.UsageError as error:
                self.fail(f"{name}, line {number}: {error}")
