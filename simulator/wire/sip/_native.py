"""Whether this package's modules run compiled (mypyc, built by setup.py) or from their ``.py`` sources.

The sources are the reference; the compiled modules are the same code, faster (``benchmarks/sip.py``), and
``tests/wire/test_sip_native.py`` checks the two give the same bytes. The build records the SHA-256 of every
source it compiled in ``_compiled.json``. The compiled modules run only when all of them are there and every
source is unchanged since that build, since compiled modules call each other directly and one stale module
would run old code from a fresh one. Otherwise, and always with ``EDGESIM_PURE=1``, a finder placed first
on ``sys.meta_path`` imports each of them from its ``.py``: an edit takes effect without a rebuild (``make``
rebuilds when a source is newer than the install).

This module is never compiled, and imports nothing from the package.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).resolve().parent
_PACKAGE = __name__.rpartition(".")[0]
MANIFEST = _HERE / "_compiled.json"


def _has_extension(stem: str) -> bool:
    return any((_HERE / f"{stem}{suffix}").exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _digest(stem: str) -> str | None:
    try:
        return hashlib.sha256((_HERE / f"{stem}.py").read_bytes()).hexdigest()
    except OSError:
        return None


def _decide() -> tuple[bool, frozenset[str]]:
    """(the compiled modules run, the modules to import from source although an extension sits beside them)."""
    built = frozenset(path.stem for path in _HERE.glob("*.py") if _has_extension(path.stem))
    if not built:
        return False, frozenset()
    try:
        recorded = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        recorded = {}
    fresh = (isinstance(recorded, dict) and set(recorded) == built
             and all(recorded[stem] == _digest(stem) for stem in built))
    if fresh and os.environ.get("EDGESIM_PURE") != "1":
        return True, frozenset()
    return False, built


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the listed modules of this package as their ``.py`` files, ahead of the extension beside them."""

    def __init__(self, stems: frozenset[str]) -> None:
        self.stems = stems

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        package, _, stem = fullname.rpartition(".")
        if package != _PACKAGE or stem not in self.stems:
            return None
        return importlib.util.spec_from_file_location(fullname, _HERE / f"{stem}.py")


COMPILED, _FROM_SOURCE = _decide()
if _FROM_SOURCE and not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _SourceFinder(_FROM_SOURCE))
