"""Compiles the SIP codec (``simulator/wire/sip``) with mypyc; everything else is metadata in pyproject.toml.

The pure-Python sources stay the reference: ``EDGESIM_PURE=1`` at build time builds nothing, and at run time
imports the ``.py`` files even where a compiled module sits beside them (``simulator/wire/sip/_native.py``).
A build records the SHA-256 of every source it compiled in ``simulator/wire/sip/_compiled.json`` (shipped in
the wheel); when any of them changed since, every module is imported from its ``.py`` (a stale ``.so`` never
runs). The extensions are optional: without a C compiler the install goes on, pure Python.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
PACKAGE = Path("simulator/wire/sip")
# framer.py stays interpreted: the Access Edge's SipConnection subclasses SipStreamFramer; _native.py decides,
# at import, whether the compiled modules run.
NOT_COMPILED = {"__init__.py", "_native.py", "framer.py"}
MANIFEST = PACKAGE / "_compiled.json"


def sources() -> list[Path]:
    return sorted(path for path in PACKAGE.glob("*.py") if path.name not in NOT_COMPILED)


def extensions() -> list[object]:
    if os.environ.get("EDGESIM_PURE") == "1":
        return []
    from mypyc.build import mypycify

    os.chdir(HERE)  # mypyc names modules from paths relative to here
    compiled = sources()
    # mypyc type-checks what it compiles; --config-file keeps pyproject's [tool.mypy] (and its pydantic plugin,
    # which the isolated build does not have) out of it.
    modules = mypycify(["--config-file", str(Path("setup_mypyc.ini")), *map(str, compiled)], opt_level="3")
    for module in modules:
        module.optional = True  # no compiler: build on, pure Python
    MANIFEST.write_text(json.dumps({path.stem: hashlib.sha256(path.read_bytes()).hexdigest()
                                    for path in compiled}, indent=1, sort_keys=True) + "\n")
    return list(modules)


setup(ext_modules=extensions())
