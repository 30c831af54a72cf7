"""
The README and the manual: their tested shell examples run against a real
gateway, the configuration reference covers every option, the shipped man
page is the one the manual's sources build, and the README stays a front
page.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.docexamples import (
    ROOT,
    SOURCES,
    Command,
    Session,
    allSessions,
    consoleBlocks,
    matches,
    sessions,
)
from tests.e2e import DEADLINE, TWISTD, GatewayProcess, freePort, spawn
from tests.wheel import buildWheel

BIN = os.path.dirname(TWISTD)
MAN_PAGE = ROOT / "gateway" / "gateway.8"
DOCS = ROOT / "docs"

# The ports the examples use; each run gets free ones in their place, in the
# commands and in the output alike, so that examples can run side by side
# (trial --jobs) and next to a gateway a developer has running.
EXAMPLE_PORTS = ("7000", "7001", "7443", "9180")

# The tools examples call, skipped (with the name) only when one is missing:
# .ci/run installs them all.
TOOLS = ("nc", "curl", "socat", "openssl")

# What `make run` runs (the Makefile's run target, checked below).
MAKE_RUN = "twistd -n --pidfile= gateway"

# Sessions that show a feature arriving with an option of its own: until
# the option exists, the session runs and is expected to fail (trial's
# todo); once it exists, the session must pass like any other.
PENDING: dict[str, str] = {
    "README.md:status": "health-check",
    "health.rst:status": "health-check",
    "README.md:websocket": "websocket-path",
    "websocket.rst:ws": "websocket-path",
    "services.rst:config": "config",
    "admission.rst:deny": "deny",
}


def _hasOption(name: str) -> bool:
    from gateway.tap import Options

    return any(entry.rstrip("=") == name for entry in Options().longOpt)


_GATEWAY_START = re.compile(r"^(?:\S*/)?twistd\b.*\bgateway\b|^make run\b", re.S)


def _substitute(text: str, ports: dict[str, str]) -> str:
    return re.sub(
        r"(?<![\d.])(" + "|".join(EXAMPLE_PORTS) + r")(?!\d)",
        lambda match: ports[match.group(1)],
        text,
    )


def _gatewayCommand(text: str, ports: dict[str, str]) -> str:
    """
    The command that starts a gateway in an example, with the listeners it
    leaves to their defaults (127.0.0.1:7000, metrics on 127.0.0.1:9180)
    given as free ports instead.
    """
    if text.startswith("make run"):
        text = MAKE_RUN + text[len("make run") :]
    words = shlex.split(text.replace("\\\n", " "))
    extra = []
    if "--config" not in words:
        if not {"--listen", "--listen-tls"} & set(words):
            extra += ["--listen", f"tcp:{ports['7000']}:interface=127.0.0.1"]
        if "--metrics" not in words:
            extra += ["--metrics", f"tcp:{ports['9180']}:interface=127.0.0.1"]
    return text + "".join(" " + shlex.quote(word) for word in extra)


async def runSession(testCase: TestCase, session: Session) -> None:
    """
    Run C{session}'s commands in order in a scratch directory, with the
    checkout's twistd first on C{PATH}.

    A command that starts a gateway (C{twistd ... gateway ...} or C{make
    run}) and shows no output runs in the background until the session
    ends, and the next command waits until it has logged C{gateway ready}.
    Every other command must exit 0 and print what the example shows.
    """
    for tool in TOOLS:
        used = any(
            re.search(rf"(?<![\w-]){tool}\b", command.text)
            for command in session.commands
        )
        if used and shutil.which(tool) is None:
            raise SkipTest(f"{tool} is not installed")
    directory = testCase.mktemp()
    os.makedirs(directory)
    ports = {port: str(freePort()) for port in EXAMPLE_PORTS}
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    for command in session.commands:
        where = f"{session.source.name}, line {command.line}"
        text = _substitute(command.text, ports)
        expected = [_substitute(line, ports) for line in command.expected]
        if _GATEWAY_START.match(text) and not expected:
            await _startGateway(testCase, _gatewayCommand(text, ports), env, directory)
            continue
        out, err, code = await getProcessOutputAndValue(
            "/bin/bash",
            ["-c", "exec 2>&1\n" + text],
            env=env,
            path=directory,
        ).addTimeout(DEADLINE, reactor)
        output = out.decode("utf-8", "replace")
        testCase.assertEqual(
            code, 0, f"{where}: {command.text!r} exited {code}:\n{output}"
        )
        testCase.assertTrue(
            matches(expected, output),
            f"{where}: {command.text!r} printed:\n{output}\n"
            f"the example shows:\n" + "\n".join(expected),
        )


async def _startGateway(
    testCase: TestCase, text: str, env: dict[str, str], directory: str
) -> None:
    process = GatewayProcess()
    # exec: SIGTERM reaches twistd itself, not a shell around it.
    spawn(testCase, process, ["/bin/bash", "-c", "exec " + text], env, path=directory)
    await process.whenReady()


def _exampleTest(session: Session):
    def test(self: TestCase) -> Deferred[None]:
        return Deferred.fromCoroutine(runSession(self, session))

    test.__doc__ = f"The tested examples of {session.label} do what they show."
    needed = PENDING.get(session.label)
    if needed is not None and not _hasOption(needed):
        test.todo = f"needs --{needed}, not in this tree yet"  # type: ignore[attr-defined]
    return test


class ExampleTests(TestCase):
    """
    Every tested session of the README and the manual, one test each.
    """

    timeout = 120


for _session in allSessions():
    _name = re.sub(r"\W", "_", f"test_{_session.source.stem}_{_session.name}")
    setattr(ExampleTests, _name, _exampleTest(_session))


class ExtractorTests(SynchronousTestCase):
    """
    The examples are found where they are marked, and only there.
    """

    def test_marked(self) -> None:
        """
        Every console block of the README and the manual that starts a
        gateway or talks to one is marked as tested: console blocks are
        kept for those, and other shell text uses other block kinds.
        """
        for source in SOURCES:
            tested = sum(
                1
                for line in source.read_text().splitlines()
                if re.match(r"^(?:\.\. tested: |<!-- tested: )", line)
            )
            self.assertEqual(tested, consoleBlocks(source), source.name)

    def test_sessionsFound(self) -> None:
        """
        The README's tour and the manual's pages have tested sessions, each
        with commands.
        """
        found = allSessions()
        labels = {session.label for session in found}
        self.assertIn("README.md:tour", labels)
        self.assertGreater(len(found), 5)
        for session in found:
            self.assertTrue(session.commands, session.label)

    def test_parse(self) -> None:
        """
        Commands, continuation lines and expected output are told apart.
        """
        path = self.mktemp() + ".rst"
        with open(path, "w") as f:
            f.write(
                "Text\n\n.. tested: one\n\n.. code-block:: console\n\n"
                "   $ printf 'a\\n' \\\n   'b'\n   > >/dev/stdout\n   a\n"
                "   $ true\n\nAfter.\n"
            )
        [session] = sessions(Path(path))
        self.assertEqual(session.name, "one")
        first, second = session.commands
        self.assertEqual(first.text, "printf 'a\\n' \\\n'b'\n>/dev/stdout")
        self.assertEqual(first.expected, ["a"])
        self.assertEqual((second.text, second.expected), ("true", []))

    def test_matches(self) -> None:
        """
        C{...} matches any lines, or any text inside a line; nothing else
        is loose.
        """
        self.assertTrue(matches(["a", "...", "c"], "a\nb\nb\nc\n"))
        self.assertTrue(matches(["a", "...", "c"], "a\nc\n"))
        self.assertTrue(matches(["x{...} 3.0"], 'x{a="b"} 3.0\n'))
        self.assertFalse(matches(["x{...} 3.0"], 'x{a="b"} 4.0\n'))
        self.assertFalse(matches(["a"], "a\nb\n"))
        self.assertTrue(matches([], ""))

    def test_makeRun(self) -> None:
        """
        C{make run}, which the README's tour starts with, runs what the
        examples' runner runs in its place.
        """
        makefile = (ROOT / "Makefile").read_text()
        self.assertIn(f"$(BIN)/{MAKE_RUN} $(RUN_ARGS)", makefile)

    def test_ports(self) -> None:
        """
        The example ports are replaced as whole numbers only.
        """
        ports = {"7000": "1", "7001": "2", "7443": "3", "9180": "4"}
        self.assertEqual(
            _substitute("tcp:7000 :9180/x 17000 70001 10.0.7.0", ports),
            "tcp:1 :4/x 17000 70001 10.0.7.0",
        )


class RunnerTests(TestCase):
    """
    The runner fails a wrong example.
    """

    def test_wrongExampleFails(self) -> Deferred[None]:
        """
        A session whose command prints something other than what its
        example shows fails, naming the file and the line.
        """
        session = Session(Path("x.rst"), "wrong", [Command(3, "echo hello", ["bye"])])
        failed = self.assertFailure(
            Deferred.fromCoroutine(runSession(self, session)), self.failureException
        )
        return failed.addCallback(
            lambda error: self.assertIn("x.rst, line 3", str(error))
        )

    def test_failingCommandFails(self) -> Deferred[None]:
        """
        A command that exits non-zero fails its session, whatever it prints.
        """
        session = Session(Path("x.rst"), "exit", [Command(5, "echo a; false", ["a"])])
        failed = self.assertFailure(
            Deferred.fromCoroutine(runSession(self, session)), self.failureException
        )
        return failed.addCallback(lambda error: self.assertIn("exited 1", str(error)))


class ReferenceTests(SynchronousTestCase):
    """
    The configuration reference is generated from the option definitions.
    """

    def setUp(self) -> None:
        sys.path.insert(0, str(DOCS / "_ext"))
        self.addCleanup(sys.path.remove, str(DOCS / "_ext"))
        try:
            import gatewayoptions
        except ImportError as error:
            raise SkipTest(f"Sphinx is not installed ({error}): make docs installs it")
        self.module = gatewayoptions

    def test_everyOption(self) -> None:
        """
        Every option C{twistd gateway} accepts is in the reference, with
        the help text C{--help} shows.
        """
        from gateway.tap import Options

        options = Options()
        names = {entry.rstrip("=") for entry in options.longOpt} - {"help"}
        documented = {option.name for option in self.module.optionDefinitions()}
        self.assertEqual(documented, names)
        for option in self.module.optionDefinitions():
            self.assertTrue(option.help, option.name)

    def test_badValues(self) -> None:
        """
        Every option taking a value shows the error line a bad value gets,
        from the real parser.
        """
        for option in self.module.optionDefinitions():
            if option.takesValue:
                bad = self.module.badValueLine(option)
                self.assertIsNotNone(bad, f"--{option.name}: no bad value shown")
                command, error = bad
                self.assertIn(f"--{option.name}", command)
                self.assertNotIn("Traceback", error)

    def test_defaults(self) -> None:
        """
        Defaults come from the definitions, or from a help text's
        C{[default: ...]}.
        """
        found = {o.name: o for o in self.module.optionDefinitions()}
        self.assertEqual(found["max-message-size"].default, "65536")
        self.assertEqual(found["listen"].default, "tcp:7000:interface=127.0.0.1")
        self.assertTrue(found["listen"].repeatable)
        self.assertFalse(found["metrics"].repeatable)
        self.assertEqual(self.module.unitOf(found["connect-timeout"]), "seconds")
        self.assertEqual(self.module.unitOf(found["max-message-size"]), "bytes")


class ManPageTests(TestCase):
    """
    gateway(8) as shipped: up to date, readable, installed.
    """

    def test_upToDate(self) -> None:
        """
        The page shipped in the package is the one Sphinx builds from the
        manual's sources now (C{make docs} copies it when it changes).
        """
        try:
            from sphinx.cmd.build import build_main
        except ImportError:
            raise SkipTest("Sphinx is not installed: make docs installs it")
        out = self.mktemp()
        code = build_main(["-b", "man", "-W", "-q", str(DOCS), out])
        self.assertEqual(code, 0)
        with open(os.path.join(out, "gateway.8")) as built:
            self.assertEqual(
                built.read(),
                MAN_PAGE.read_text(),
                "gateway/gateway.8 is out of date: run make docs",
            )

    def test_manRenders(self) -> None:
        """
        C{man -l} renders the page without a warning, with its sections.
        """
        if shutil.which("man") is None:
            raise SkipTest("man (man-db) is not installed")
        result = subprocess.run(
            ["man", "-l", str(MAN_PAGE)],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat"),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")
        for heading in ("NAME", "SYNOPSIS", "OPTIONS", "SIGNALS", "SEE ALSO"):
            self.assertIn(f"\n{heading}\n", result.stdout)
        self.assertIn("--max-message-size", result.stdout)
        # Lines fit the width man was given.
        self.assertLessEqual(max(map(len, result.stdout.splitlines())), 80)

    def test_helpPointsToIt(self) -> None:
        """
        C{twistd gateway --help} names the manual page.
        """
        result = subprocess.run(
            [TWISTD, "gateway", "--help"], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("gateway(8)", " ".join(result.stdout.split()))

    def test_wheel(self) -> None:
        """
        A wheel installs the page with the package (gateway/gateway.8) and
        where man finds it (share/man/man8/gateway.8 under the prefix).
        """
        names = set(buildWheel(self.mktemp())[1])
        self.assertIn("gateway/gateway.8", names)
        manPath = ".data/data/share/man/man8/gateway.8"
        self.assertTrue(any(name.endswith(manPath) for name in names), names)


class ReadmeTests(SynchronousTestCase):
    """
    The README is a front page.
    """

    def test_short(self) -> None:
        """
        At most about 1,500 words outside code blocks.
        """
        text = re.sub(r"```.*?```", "", (ROOT / "README.md").read_text(), flags=re.S)
        text = re.sub(r"<!--.*?-->", "", text)
        self.assertLessEqual(len(text.split()), 1600)

    def test_linksResolve(self) -> None:
        """
        Every relative link of the README names a file of the checkout.
        """
        text = (ROOT / "README.md").read_text()
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            self.assertTrue((ROOT / target).exists(), target)


_LEVELS = ("info", "warn", "error", "critical", "failure")


def _logFormats(path: Path) -> list[tuple[int, str]]:
    """
    The format strings of the log calls an operator sees (info and above)
    in one module: C{log.warn("...")}, C{self.factory.log.info("...")}, ...
    """
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        functions = [node.func]
        if isinstance(node.func, ast.IfExp):
            functions = [node.func.body, node.func.orelse]
        levels = [
            function.attr
            for function in functions
            if isinstance(function, ast.Attribute)
            and "log" in ast.unparse(function.value).lower()
        ]
        first = node.args[0]
        if (
            any(level in _LEVELS for level in levels)
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
        ):
            found.append((node.lineno, first.value))
    return found


class TroubleshootingTests(SynchronousTestCase):
    """
    The troubleshooting page explains every line the gateway logs.
    """

    def test_everyLogLine(self) -> None:
        """
        The fixed text of every info-or-above log call in the package (its
        longest part between two fields) is on the troubleshooting page.
        """
        page = " ".join((DOCS / "troubleshooting.rst").read_text().split())
        formats = [
            (path, line, text)
            for path in sorted((ROOT / "gateway").rglob("*.py"))
            for line, text in _logFormats(path)
        ]
        self.assertGreater(len(formats), 20, "the log calls were found")
        for path, line, text in formats:
            self.assertExplained(page, f"{path.relative_to(ROOT)}:{line}", text)

    def test_closeLine(self):
        """
        The close line, whose text is rendered before it is logged (see
        L{gateway.proxy.prerendered}), is on the page as well.
        """
        from gateway.proxy import CLOSED_FORMAT

        page = " ".join((DOCS / "troubleshooting.rst").read_text().split())
        self.assertExplained(page, "gateway.proxy.CLOSED_FORMAT", CLOSED_FORMAT)
        # The page shows it whole, without the format spec and the details
        # only some pairs have.
        shown = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", CLOSED_FORMAT)
        self.assertIn(shown.removesuffix("{closeCodeText}{tls}"), page)

    def assertExplained(self, page: str, where: str, text: str) -> None:
        """
        The longest fixed part of the log format C{text} (between two
        fields) is on the troubleshooting C{page}.
        """
        parts = [part.strip() for part in re.split(r"\{[^}]*\}", text)]
        longest = max(parts, key=len)
        if longest:
            self.assertIn(
                " ".join(longest.split()),
                page,
                f"{where}: {text!r} is not explained in docs/troubleshooting.rst",
            )
