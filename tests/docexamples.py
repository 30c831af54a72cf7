"""
The shell examples of the README and the manual that are marked as tested,
read into sessions a test can run against a real gateway.

Marking, in reStructuredText (docs/*.rst), a comment right before a console
block::

    .. tested: SESSION

    .. code-block:: console

       $ printf 'hello\\n' | nc -N 127.0.0.1 7000
       hello

and in Markdown (README.md), a comment right before a console fence::

    <!-- tested: SESSION -->
    ```console
    $ printf 'hello\\n' | nc -N 127.0.0.1 7000
    hello
    ```

The blocks of one file that name the same SESSION run in order, in one
scratch directory. In a block, C{$ } starts a command (a line ending in a
backslash goes on to the next, and so does a line starting with C{> }
right after a command, the shell's secondary prompt), and the lines up to
the next command are its expected output: stdout and stderr as a terminal
shows them. A line
C{...} stands for any number of lines, and C{...} inside a line for any
text. How a session runs is in L{Session} and tests/test_docs.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Where examples live: the front page and every page of the manual.
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.rst"))]

_RST_MARK = re.compile(r"^\.\. tested: (?P<session>[a-z0-9-]+)\s*$")
_MD_MARK = re.compile(r"^<!-- tested: (?P<session>[a-z0-9-]+) -->\s*$")
_PROMPT = "$ "
_CONTINUED = "> "


@dataclass
class Command:
    """
    One command of an example and what it prints.

    @ivar line: the line number of its C{$ } in the source, for messages.
    @ivar text: the command, its continuation lines joined as the shell
        joins them.
    @ivar expected: the lines it prints, as the example shows them.
    """

    line: int
    text: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Session:
    """
    The tested blocks of one file under one name, in order.
    """

    source: Path
    name: str
    commands: list[Command] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.source.name}:{self.name}"


def _commands(lines: list[tuple[int, str]]) -> list[Command]:
    commands: list[Command] = []
    continued = False
    for number, text in lines:
        if continued:
            commands[-1].text += "\n" + text
            continued = text.endswith("\\")
        elif text.startswith(_CONTINUED) and commands and not commands[-1].expected:
            # The shell's secondary prompt: the command goes on.
            commands[-1].text += "\n" + text[len(_CONTINUED) :]
        elif text.startswith(_PROMPT):
            commands.append(Command(number, text[len(_PROMPT) :]))
            continued = text.endswith("\\")
        elif commands:
            commands[-1].expected.append(text)
        elif text.strip():
            raise ValueError(f"line {number}: output before any command: {text!r}")
    for command in commands:
        while command.expected and not command.expected[-1].strip():
            command.expected.pop()
    return commands


def _rstBlocks(lines: list[str]) -> list[tuple[str, list[tuple[int, str]]]]:
    blocks = []
    index = 0
    while index < len(lines):
        mark = _RST_MARK.match(lines[index])
        index += 1
        if mark is None:
            continue
        while index < len(lines) and not lines[index].strip():
            index += 1
        if index >= len(lines) or lines[index].strip() != ".. code-block:: console":
            raise ValueError(f"line {index}: '.. tested:' not before a console block")
        index += 1
        # Options (":class: ...") and the blank line after them.
        while index < len(lines) and lines[index].strip().startswith(":"):
            index += 1
        body: list[tuple[int, str]] = []
        indent = None
        while index < len(lines):
            text = lines[index]
            if text.strip():
                width = len(text) - len(text.lstrip())
                if indent is None:
                    indent = width
                if width < indent:
                    break
                body.append((index + 1, text[indent:]))
            elif indent is not None:
                body.append((index + 1, ""))
            index += 1
        blocks.append((mark.group("session"), body))
    return blocks


def _markdownBlocks(lines: list[str]) -> list[tuple[str, list[tuple[int, str]]]]:
    blocks = []
    index = 0
    while index < len(lines):
        mark = _MD_MARK.match(lines[index])
        index += 1
        if mark is None:
            continue
        if index >= len(lines) or lines[index].strip() != "```console":
            raise ValueError(f"line {index}: '<!-- tested -->' not before ```console")
        index += 1
        body = []
        while index < len(lines) and lines[index].strip() != "```":
            body.append((index + 1, lines[index]))
            index += 1
        blocks.append((mark.group("session"), body))
    return blocks


def sessions(source: Path) -> list[Session]:
    """
    The tested sessions of one file, in the order they first appear.

    @raise ValueError: a marker not followed by a console block, or a block
        with output before its first command.
    """
    lines = source.read_text().splitlines()
    reader = _markdownBlocks if source.suffix == ".md" else _rstBlocks
    found: dict[str, Session] = {}
    for name, body in reader(lines):
        session = found.setdefault(name, Session(source, name))
        try:
            session.commands += _commands(body)
        except ValueError as error:
            raise ValueError(f"{source.name}: {error}")
    return list(found.values())


def allSessions() -> list[Session]:
    """
    Every tested session of the README and the manual.
    """
    return [session for source in SOURCES for session in sessions(source)]


def consoleBlocks(source: Path) -> int:
    """
    How many console blocks C{source} has, tested or not.
    """
    text = source.read_text()
    if source.suffix == ".md":
        return len(re.findall(r"^```console\s*$", text, re.M))
    return len(re.findall(r"^\s*\.\. code-block:: console\s*$", text, re.M))


def matches(expected: list[str], actual: str) -> bool:
    """
    Whether C{actual} (a command's output) is what C{expected} shows, with
    C{...} as a wildcard (a whole line: any lines; inside a line: any text).
    Trailing spaces are not compared.
    """
    pattern = []
    for line in expected:
        if line.strip() == "...":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            parts = [re.escape(part) for part in line.rstrip().split("...")]
            pattern.append("[^\n]*".join(parts) + r"[ \t]*\n")
    lines = [line.rstrip() for line in actual.splitlines()]
    text = "".join(line + "\n" for line in lines)
    return re.fullmatch("".join(pattern), text) is not None
