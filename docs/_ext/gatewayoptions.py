"""
The configuration reference, rendered from the gateway's own option
definitions so that the manual and the man page cannot drift from the code.

C{.. gateway-options::} renders every option as a definition list entry:
its argument, whether it repeats, its default, its unit, its help text, and
what a bad value gets, the last one by running the real option parser on a
bad value (L{BAD_VALUES}) and quoting its error line.

Where the definitions come from is one function, L{optionDefinitions}: point
it at another table (a settings table of a configuration module, say) and
the rest stays as it is.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

# "[default: ...]" at the end of a help text: how Twisted's usage.Options
# help states a default that its tables cannot hold (a repeatable option's,
# or one whose absence means something).
_DEFAULT = re.compile(r"\s*\[default:\s*(?P<default>[^\]]*)\]\s*$")

# An argument for each option that the parser refuses, to show the line an
# operator gets. An option missing here shows no such line; the test suite
# checks that every option taking a value has one (tests/test_docs.py).
BAD_VALUES: dict[str, list[str]] = {
    "listen": ["--listen", "tcp:seven"],
    "listen-tls": ["--listen-tls", "ssl:7443", "--tls-cert", "gw.pem"],
    "tls-cert": ["--listen-tls", "tcp:7443", "--tls-cert", "/nonexistent/gw.pem"],
    "tls-key": ["--tls-key", "gw.key"],
    "tls-client-ca": ["--tls-client-ca", "ca.pem"],
    "tls-min-version": ["--tls-min-version", "1.1"],
    "tls-alpn": ["--tls-alpn", "http/1.1"],
    "backend": ["--backend", "tcp:host=10.0.0.5"],
    "backend-proxy-protocol": ["--backend-proxy-protocol", "v3"],
    "client-framing": ["--client-framing", "int64"],
    "backend-framing": ["--backend-framing", "int16"],
    "max-message-size": ["--max-message-size", "64k"],
    "max-connections": ["--max-connections", "0"],
    "connect-timeout": ["--connect-timeout", "0"],
    "idle-timeout": ["--idle-timeout", "-1"],
    "drain-timeout": ["--drain-timeout", "soon"],
    "metrics": ["--metrics", "9180"],
    "config": ["--config", "/nonexistent/gateway.toml"],
    "handshake-timeout": ["--handshake-timeout", "-1"],
    "max-connections-per-source": ["--max-connections-per-source", "-1"],
    "max-connection-rate-per-source": ["--max-connection-rate-per-source", "-1"],
    "allow": ["--allow", "10.0.0.0/33"],
    "deny": ["--deny", "10.0.0.0/33"],
    "tls-client-name": ["--tls-client-name", "client.example"],
    "health-check": ["--health-check", "ping"],
    "health-check-interval": ["--health-check-interval", "0"],
    "health-check-timeout": ["--health-check-timeout", "0"],
    "health-check-rise": ["--health-check-rise", "0"],
    "health-check-fall": ["--health-check-fall", "0"],
    "health-check-send": ["--health-check-send", "\\xZZ"],
    "health-check-expect": ["--health-check-expect", "("],
    "websocket-path": ["--client-framing", "websocket", "--websocket-path", "echo"],
    "websocket-origin": [
        "--client-framing",
        "websocket",
        "--websocket-origin",
        "example.com",
    ],
    "websocket-message-type": [
        "--client-framing",
        "websocket",
        "--websocket-message-type",
        "json",
    ],
}

# Options left out of the reference: twistd's usual --help.
_LEFT_OUT = ("help",)


@dataclass(frozen=True)
class OptionDoc:
    """
    One option as the reference shows it.

    @ivar name: the long name without C{--}, also the configuration key.
    @ivar takesValue: whether the option takes an argument.
    @ivar repeatable: whether it may be given several times (an array as a
        configuration key).
    @ivar default: the default as the operator writes it, or C{None}.
    @ivar help: the help text, one paragraph, without its C{[default: ...]}.
    @ivar unit: of a number (C{seconds}, C{bytes}), when the definitions say.
    @ivar metavar: the argument's placeholder, when the definitions say.
    @ivar scope: where the key goes in a configuration file (C{service},
        C{process}, C{both}), or C{None} for an option that is no key.
    """

    name: str
    takesValue: bool
    repeatable: bool
    default: str | None
    help: str
    unit: str | None = None
    metavar: str | None = None
    scope: str | None = None


def optionDefinitions() -> list[OptionDoc]:
    """
    Every option of C{twistd gateway}, in the order C{--help} lists them,
    read from L{gateway.tap.Options} (its C{optParameters}, C{optFlags} and
    C{opt_*} methods, as Twisted's L{usage.Options} gathers them).

    When the settings table of L{gateway.config} exists (every service
    setting as an option and a key of the same name), its units, argument
    names and scopes are added.

    This is the only function that knows where the definitions live.
    """
    from gateway.tap import Options

    try:
        from gateway.config import SETTINGS_TABLE  # type: ignore[attr-defined]
    except ImportError:
        SETTINGS_TABLE = ()
    settings = {setting.name: setting for setting in SETTINGS_TABLE}

    options = Options()
    found = []
    for entry in sorted(options.longOpt, key=lambda entry: entry.rstrip("=")):
        name = entry.rstrip("=")
        if name in _LEFT_OUT:
            continue
        text = " ".join((options.docs.get(name) or "").split())
        default = options.defaults.get(name)
        stated = _DEFAULT.search(text)
        if stated is not None:
            text = text[: stated.start()]
            default = default if default is not None else stated.group("default")
        found.append(
            OptionDoc(
                name=name,
                takesValue=entry.endswith("="),
                repeatable=isinstance(options.get(name), list),
                default=None if default is None else str(default),
                help=text,
                unit=getattr(settings.get(name), "unit", None),
                metavar=getattr(settings.get(name), "metavar", None),
                scope=getattr(settings.get(name), "scope", None),
            )
        )
    return found


def unitOf(option: OptionDoc) -> str | None:
    """
    The unit an option's value is in, as the definitions or its help text
    say.
    """
    if option.unit is not None:
        return option.unit
    text = option.help.lower()
    for unit in ("seconds", "bytes"):
        if unit in text:
            return unit
    return None


def badValueLine(option: OptionDoc) -> tuple[str, str] | None:
    """
    C{(command line, error line)} for the option's bad value, from the real
    parser; C{None} without one in L{BAD_VALUES}, or when the parser takes
    it (tests/test_docs.py fails then: the reference would show nothing).
    """
    from twisted.python import usage

    from gateway.tap import Options

    arguments = BAD_VALUES.get(option.name)
    if arguments is None:
        return None
    try:
        Options().parseOptions(arguments)
    except usage.UsageError as error:
        return " ".join(arguments), str(error)
    return None


# How the argument is shown after the option's name; an option missing here
# shows its last word, upper-cased.
METAVARS = {
    "listen": "ENDPOINT",
    "listen-tls": "ENDPOINT",
    "backend": "ENDPOINT",
    "metrics": "ENDPOINT",
    "tls-cert": "FILE",
    "tls-key": "FILE",
    "tls-client-ca": "FILE",
    "tls-alpn": "NAME",
    "backend-proxy-protocol": "VERSION",
    "max-connections": "N",
    "config": "FILE",
}


def metavarOf(option: OptionDoc) -> str:
    """
    The argument's placeholder: C{ENDPOINT}, C{FILE}, C{SECONDS}, ...
    """
    if option.metavar is not None:
        return option.metavar
    if option.name in METAVARS:
        return METAVARS[option.name]
    unit = unitOf(option)
    if unit is not None:
        return unit.upper()
    return option.name.rsplit("-", 1)[-1].upper()


def renderOption(option: OptionDoc) -> nodes.definition_list_item:
    """
    One option as a definition list item. The help texts are plain text
    (they are C{--help}'s), so they become text nodes, never markup.
    """
    term = nodes.term()
    name = f"--{option.name}"
    if option.takesValue:
        name += f" {metavarOf(option)}"
    term += nodes.literal(name, name)
    if option.repeatable:
        term += nodes.Text(" (repeatable)")
    definition = nodes.definition()
    definition += nodes.paragraph("", option.help or "No description.")
    facts = nodes.paragraph()
    if option.takesValue:
        facts += nodes.Text("Default: ")
        if option.default is None:
            facts += nodes.Text("none.")
        elif " " in option.default:
            # Words, not a value to type.
            facts += nodes.Text(f"{option.default}.")
        else:
            facts += nodes.literal(option.default, option.default)
            facts += nodes.Text(".")
    unit = unitOf(option)
    if unit is not None:
        facts += nodes.Text(f" Unit: {unit}.")
    places = {"service": "in a service", "process": "at the top level"}
    if option.scope is not None:
        facts += nodes.Text(" Configuration file: ")
        facts += nodes.literal(option.name, option.name)
        where = places.get(option.scope, "in a service or at the top level")
        facts += nodes.Text(f", {where}.")
    if facts.children:
        definition += facts
    bad = badValueLine(option)
    if bad is not None:
        command, error = bad
        line = nodes.paragraph()
        line += nodes.Text("A bad value: ")
        line += nodes.literal(command, command)
        line += nodes.Text(" ends start-up with ")
        line += nodes.literal(error, error)
        line += nodes.Text(".")
        definition += line
    return nodes.definition_list_item("", term, definition)


class GatewayOptions(SphinxDirective):
    """
    C{.. gateway-options::}: the whole reference, one entry per option.
    """

    has_content = False

    def run(self) -> list:
        self.env.note_dependency(__file__)
        found = nodes.definition_list()
        for option in optionDefinitions():
            found += renderOption(option)
        return [found]


_ROOT = Path(__file__).resolve().parent.parent.parent
_EPYTEXT = re.compile(r"[CLIB]\{([^}]*)\}")


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


class GatewayModules(SphinxDirective):
    """
    C{.. gateway-modules::}: each module of the package with the first
    paragraph of its docstring, so that the layout the manual describes is
    the one the checkout has.
    """

    has_content = False

    def run(self) -> list:
        found = nodes.definition_list()
        package = _ROOT / "gateway"
        paths = sorted(package.glob("*.py")) + sorted(package.glob("codec/*.py"))
        for path in paths:
            self.env.note_dependency(str(path))
            summary = " ".join(_docstring(path).split("\n\n")[0].split())
            # Docstrings are pydoctor's epytext: C{x} and L{x} are just x here.
            summary = _EPYTEXT.sub(r"\1", summary) or "No docstring."
            name = str(path.relative_to(_ROOT))
            term = nodes.term("", "", nodes.literal(name, name))
            definition = nodes.definition("", nodes.paragraph("", summary))
            found += nodes.definition_list_item("", term, definition)
        return [found]


class GatewayDocstring(SphinxDirective):
    """
    C{.. gateway-docstring:: gateway/pair.py}: a module's docstring, as a
    literal block (it is written for pydoctor, not reStructuredText).
    """

    required_arguments = 1
    has_content = False

    def run(self) -> list:
        path = _ROOT / self.arguments[0]
        self.env.note_dependency(str(path))
        text = _docstring(path)
        return [nodes.literal_block(text, text)]


class ManUnhyphenated(SphinxDirective):
    """
    C{.. man-unhyphenated::}: in the man page, no hyphenation and a ragged
    right edge from here on (C{.nh}, C{.ad l}), so that options and endpoint
    strings are never split. A raw node of our own, since C{.. raw::}
    drops the newline that must end a roff request.
    """

    has_content = False

    def run(self) -> list:
        return [nodes.raw("", ".nh\n.ad l\n", format="manpage")]


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("man-unhyphenated", ManUnhyphenated)
    app.add_directive("gateway-options", GatewayOptions)
    app.add_directive("gateway-modules", GatewayModules)
    app.add_directive("gateway-docstring", GatewayDocstring)
    return {"parallel_read_safe": True, "version": "1"}
