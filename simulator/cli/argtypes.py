"""Argument types the commands share (argparse ``type=``): one spelling of each error."""

from __future__ import annotations

import argparse


def port_range(text: str) -> tuple[int, int]:
    """``FIRST-LAST`` (or one port): 1 <= FIRST <= LAST <= 65535."""
    first, sep, last = text.partition("-")
    try:
        low, high = int(first), int(last if sep else first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port range {text!r} (want FIRST-LAST)") from None
    if not 0 < low <= high <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"bad port range {text!r} (want 1 <= FIRST <= LAST <= 65535)")
    return low, high


def user_password(text: str) -> tuple[str, str]:
    """``USER:PASSWORD`` (the password may be empty or hold colons)."""
    name, sep, password = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"bad user {text!r} (want USER:PASSWORD)")
    return name, password
