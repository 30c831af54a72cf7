"""
Sphinx configuration: the manual (HTML) and the gateway(8) man page.

Built by `make docs` with warnings as errors. The version is the package's
own (gateway/__init__.py); the man page's date is the date of the latest
release in NEWS.rst, so that building it twice gives the same page.
"""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "_ext"))

from gateway import __version__  # noqa: E402


def _releaseDate() -> str:
    """
    The date of the newest release heading in NEWS.rst ("0.2.0 (2026-12-01)"),
    or "unreleased" before the first one.
    """
    try:
        with open(os.path.join(os.path.dirname(HERE), "NEWS.rst")) as news:
            found = re.search(r"^\S+ \((\d{4}-\d\d-\d\d)\)$", news.read(), re.M)
    except OSError:
        found = None
    return found.group(1) if found else "unreleased"


project = "gateway"
author = "the gateway authors"
copyright = "the gateway authors, MIT licence"
version = release = __version__
today = _releaseDate()

extensions = ["gatewayoptions"]
exclude_patterns = ["_build"]
templates_path: list[str] = []
html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"gateway {__version__}"
highlight_language = "none"
# Option names are full of "--", which smart quotes would turn into dashes.
smartquotes = False

# gateway(8): built from manpage.rst; `make docs` compares it with the copy
# shipped in the package (gateway/gateway.8).
man_pages = [
    (
        "manpage",
        "gateway",
        "translate between message framings, as a twistd service",
        [],
        8,
    )
]
man_make_section_directory = False
man_show_urls = False
