"""
Building the project's wheel offline, for the tests of what it ships.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from twisted.trial.unittest import SkipTest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def buildWheel(
    out: str, source: str = ROOT, env: dict[str, str] | None = None
) -> tuple[str, list[str]]:
    """
    C{pip wheel} C{source} into the directory C{out} (made if missing), with
    no dependencies and no build isolation, so that nothing is downloaded.

    @return: the wheel's path and the names of the files it holds.
    @raise SkipTest: when setuptools, which builds it, is not installed.
    @raise AssertionError: with pip's errors, when the build fails.
    """
    try:
        import setuptools  # noqa: F401
    except ImportError:
        raise SkipTest("setuptools is needed to build the wheel offline")
    os.makedirs(out, exist_ok=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            out,
            source,
        ],
        capture_output=True,
        text=True,
        # Compiling the optional accelerator takes most of it.
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = [name for name in os.listdir(out) if name.endswith(".whl")]
    path = os.path.join(out, wheel)
    return path, zipfile.ZipFile(path).namelist()
