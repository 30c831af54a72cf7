"""
The compiled translator, C{gateway.codec._speedups}, when there is one.

It is built from C{_speedups.c} when a compiler was there at install time
(an optional extension: without one, the install goes on without it).
L{gateway.codec.translator.translator} is the one place that chooses
between it and the pure-Python L{gateway.codec.translator.Translator}, the
reference; both take the same chunks and give the same
L{gateway.codec._base.Translation}s, byte for byte (tests/test_speedups.py
drives them side by side).

C{GATEWAY_NO_EXTENSIONS=1} in the environment forces the reference (the
accelerator is then not even imported), as a way out should it misbehave.
"""

import os
from types import ModuleType

from gateway.codec._base import FramingError, Translation

__all__ = ["ACCELERATED", "speedups"]


def _forcedOff() -> bool:
    return os.environ.get("GATEWAY_NO_EXTENSIONS", "") not in ("", "0")


def _load() -> ModuleType | None:
    if _forcedOff():
        return None
    try:
        # No stub: the module is C, its API is _speedups.c's docstrings.
        from gateway.codec import _speedups  # type: ignore[attr-defined]
    except ImportError:
        # Installed where no compiler was: the reference does the work.
        return None
    _speedups.configure(Translation, FramingError)
    module: ModuleType = _speedups
    return module


#: The compiled module, or None when it is not built or is switched off.
speedups: ModuleType | None = _load()

#: Whether L{gateway.codec.translator.translator} gives compiled translators.
ACCELERATED = speedups is not None
