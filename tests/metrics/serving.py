"""``edgesim serve …`` as a child process for the metrics and capture tests: its stdout read line by line."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence


class Served:
    """One ``edgesim serve`` child in its own session; stdout lines collected by a thread."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = [sys.executable, "-m", "simulator.cli", "serve", *argv]
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first stdout line matching ``pattern`` (fails with the output if none comes in time)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = regex.search(line)
                if match:
                    return match
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        code, stderr = self.stop()
        raise AssertionError(f"no line matching {pattern!r} (exit {code}); stdout: {self.lines}; stderr: {stderr}")

    @property
    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None or self.process.stderr.closed:
            return ""
        return self.process.stderr.read()

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """``sig`` (SIGTERM), wait; returns (exit code, stderr). SIGKILL (and a failed test) if it does not stop."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
                raise AssertionError(f"serve did not stop within {timeout} s: {self.lines}") from None
        self._reader.join(5)
        err = self.process.stderr
        stderr = err.read() if err is not None and not err.closed else ""
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return self.process.returncode, stderr

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(AssertionError):
                self.stop()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def run_serve(argv: Sequence[str], timeout: float = 30.0, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    """``edgesim serve …`` run to its end (for commands that must fail at once); ``env`` adds variables."""
    return subprocess.run([sys.executable, "-m", "simulator.cli", "serve", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def scrape(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200
        body: bytes = response.read()
        return body.decode()


def sample(exposition: str, name: str, /, **labels: str) -> float:
    """The value of one sample in a text exposition (0 when absent), parsed with prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def promtool_ok(promtool: str, exposition: str) -> None:
    """``promtool check metrics`` (Prometheus's own exposition linter) accepts ``exposition``."""
    done = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, f"promtool check metrics: {done.stdout}{done.stderr}"
