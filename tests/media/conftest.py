"""Helpers for the media tests: loopback addresses on this helper's 127.92.0.0/16, one /24 per run."""

from __future__ import annotations

import itertools
import os

_THIRD_OCTET = 1 + os.getpid() % 250
_fourth = itertools.count(1)


def loopback_ip() -> str:
    """A fresh 127.92.x.y address for this test run (wraps after 254 calls)."""
    return f"127.92.{_THIRD_OCTET}.{1 + next(_fourth) % 254}"
