"""The exit-code contract of every ``edgesim`` command, and the one-line errors that carry a code.

======  =====================================================================================
code    meaning
======  =====================================================================================
0       every verdict (and load expectation) matches the scenario's expectations
1       some do not: the run worked and found a difference
2       usage or scenario error: a bad option value, an unreadable or invalid scenario file
3       environment error: an address or port in use, a folder that cannot be written, a missing
        privilege or tool
130     interrupted (Ctrl-C)
======  =====================================================================================

A handler raises :class:`UsageError` or :class:`EnvironmentFault`; ``edgesim``'s ``main`` prints its one line
on stderr (``edgesim: …``) and exits with its code, never with a traceback.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130

EXIT_CODES_EPILOG = """exit codes:
  0  every verdict and load expectation matches the scenario's expectations
  1  some do not (the run itself worked)
  2  usage or scenario error (bad option value, invalid scenario file)
  3  environment error (address or port in use, folder not writable,
     missing privilege or tool)"""


class CliError(Exception):
    """One line for the user and the exit code it carries."""

    code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CliError):
    """A nonsense option value or combination, or a scenario that cannot be used (exit 2)."""

    code = EXIT_USAGE


class EnvironmentFault(CliError):
    """Something on this host stops the run: an address in use, an unwritable folder … (exit 3)."""

    code = EXIT_ENVIRONMENT


def positive(value: float | None, option: str) -> None:
    """Raise UsageError unless ``value`` is None or above 0."""
    if value is not None and not value > 0:
        raise UsageError(f"{option} must be above 0 (got {value:g})")


def os_error_text(error: OSError) -> str:
    """An OSError as words: its strerror ('Address already in use'), never its repr."""
    if error.strerror:
        return error.strerror
    if error.errno is not None:
        return os.strerror(error.errno)
    return str(error) or type(error).__name__


def environment_fault(error: OSError, what: str) -> EnvironmentFault:
    """``what``: e.g. 'cannot bind 127.77.0.53:40053'; the error's words follow."""
    return EnvironmentFault(f"{what}: {os_error_text(error)}")


def check_writable_folder(folder: Path) -> None:
    """Create ``folder`` (and parents) and prove a file can be written there; EnvironmentFault otherwise."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise EnvironmentFault(f"cannot write to {folder}: {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".edgesim-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise environment_fault(error, f"cannot write to {folder}") from None


def check_writable_file(path: Path) -> None:
    """The folder of ``path`` exists or can be made and takes files; ``path`` is not a folder."""
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a file")
    check_writable_folder(path.parent if str(path.parent) else Path("."))


def busy_address(addresses: list[tuple[str, int, str]]) -> str | None:
    """The first ``(host, port, transport)`` that cannot be bound, as 'host:port/transport: reason'; None when all
    can. Only 'in use' counts as busy; a host address that does not exist is reported too."""
    for host, port, transport in addresses:
        kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers do
            try:
                probe.bind((host, port))
            except OSError as error:
                if error.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                    return f"{host}:{port}/{transport}: {os_error_text(error)}"
                raise
    return None
