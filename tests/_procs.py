"""Processes a test starts in the background while it does work of its own: each writes its
output to a log, is waited for with a limit, and is killed if the test ends first."""

import subprocess
from collections.abc import Iterable
from pathlib import Path


def start(cmd: list, log: Path, **popen) -> subprocess.Popen:
    """``cmd`` in the background, its stdout and stderr in ``log``."""
    with log.open("w") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, **popen)


def succeeded(proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait for ``proc`` (at most ``timeout`` s): it must exit 0, else the test fails with the
    end of ``log``."""
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-6000:]


def kill_running(procs: Iterable[subprocess.Popen]) -> None:
    """Kill those of ``procs`` still running (a test that failed or timed out leaves none)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
