"""
A real browser for tests: headless Chromium (Debian's C{chromium} package),
run as a child process of the test's reactor so that the pages it loads can
be served by that same reactor.
"""

from __future__ import annotations

import os
import shutil
from html.parser import HTMLParser

from tests.e2e import ChildProcess, runChildToEnd

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Chromium's first start on a loaded 2-core machine takes seconds: a
# deadline, not an expected time.
BROWSER_DEADLINE = 90.0

# No sandbox: tests run as root in CI containers, where Chromium's sandbox
# cannot start. Everything that would reach the network on its own is off.
_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
]


def chromiumMissing() -> str | None:
    """
    Why the browser tests cannot run here, or C{None} when they can.
    """
    if not os.access(CHROMIUM, os.X_OK):
        return (
            f"{CHROMIUM} not found: install Debian's chromium package"
            " (apt-get install chromium), as .ci/run does"
        )
    return None


async def runChromium(profile: str, args: list[str]) -> tuple[int | None, bytes, bytes]:
    """
    Run headless Chromium with C{args} and a fresh profile directory
    C{profile}; returns its exit code, standard output and standard error.
    Past L{BROWSER_DEADLINE} it is killed and the wait fails.
    """
    os.makedirs(profile, exist_ok=True)
    process = ChildProcess()
    code = await runChildToEnd(
        process,
        [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", *args],
        env={"HOME": profile},
        timeout=BROWSER_DEADLINE,
    )
    return code, process.output, process.errors


async def dumpDOM(profile: str, url: str) -> str:
    """
    The DOM of C{url} once loaded, serialized by the browser (C{--dump-dom}).
    """
    code, out, err = await runChromium(profile, ["--dump-dom", url])
    if code != 0 or not out:
        raise RuntimeError(
            f"chromium --dump-dom {url} failed ({code}): {err[-2000:]!r}"
        )
    return out.decode("utf-8")


async def screenshot(profile: str, url: str, path: str, size: str) -> None:
    """
    Save a PNG of C{url} at window size C{size} (C{"1280,900"}) to C{path}.
    """
    code, out, err = await runChromium(
        profile, [f"--screenshot={path}", f"--window-size={size}", url]
    )
    if code != 0 or not os.path.exists(path):
        raise RuntimeError(
            f"chromium --screenshot {url} failed ({code}): {err[-2000:]!r}"
        )


class DOMText(HTMLParser):
    """
    What a serialized DOM shows: its text (entities decoded, whitespace
    collapsed) and the names of its elements.
    """

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self._chunks: list[str] = []
        self.tags: list[str] = []
        self._skip = 0
        self.feed(document)
        self.close()
        self.text = " ".join(" ".join(self._chunks).split())

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag in ("style", "script", "title"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "title"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._chunks.append(data)
