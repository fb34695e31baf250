"""Real peers (tshark, coturn, SIPp, dig, libnice …) for interop tests.

On a user's machine a missing peer skips the test with the reason; in CI (``CI=true``) it fails it,
because CI installs every peer (.ci/run) and a skipped interop test must never pass for a real one.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """Return the path of executable ``name``, or skip (fail in CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"peer {name!r} is not installed (Debian package list in .ci/run)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path
