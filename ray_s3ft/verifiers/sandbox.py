"""Run model-generated Python against test asserts. The only place candidate code ever runs.

Candidate code is hostile input: under RL a policy finds any way to a reward that is cheaper
than solving the task. Each run gets a fresh ``python -I`` process (``_sandbox_runner.py``) in
a throwaway directory, with a scrubbed environment, its own session, rlimits, new network and
pid namespaces when the kernel allows, uid ``nobody`` when we are root, and an audit hook.

A pass is never read from the candidate's output: the runner receives a random nonce over a
pipe before any candidate code runs and, only after the program and every assert completed,
writes ``<nonce> PASS`` to a second pipe. ``sys.exit(0)``, ``os._exit(0)`` or printing "PASS"
before the asserts therefore score as errors.

Host-side failures (no process could be started) raise; everything the candidate does ends
in a ``SandboxResult``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from ray_s3ft.verifiers import _sandbox_runner as runner

logger = logging.getLogger(__name__)

_VERDICT_CAP = 4096  # bytes; the runner writes a few short lines
_EXIT_GRACE_S = 0.2  # to collect output still in the pipes once the process has exited
_warned: set[str] = set()  # warnings already logged by _warn_once


@dataclass(frozen=True)
class SandboxLimits:
    wall_timeout_s: float = 10.0
    cpu_time_s: int = 5  # RLIMIT_CPU
    memory_mb: int = 512  # RLIMIT_AS
    max_processes: int = 32  # RLIMIT_NPROC: per real uid, shared by concurrent runs as nobody
    max_file_mb: int = 10  # RLIMIT_FSIZE
    max_output_bytes: int = 64_000  # per stream; printing more ends the run as an error

    def __post_init__(self) -> None:
        for name in ("wall_timeout_s", "cpu_time_s", "memory_mb", "max_processes"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"SandboxLimits.{name} must be positive, got {getattr(self, name)}"
                )
        if self.max_file_mb < 0 or self.max_output_bytes < 0:
            raise ValueError("SandboxLimits.max_file_mb and max_output_bytes must be >= 0")


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    # "pass": program and every assert ran to completion. "fail": an assert failed.
    # "timeout": wall or CPU time ran out. "error": anything else (an exception other than
    # AssertionError, SystemExit, os._exit, a resource limit, too much output, a crash).
    status: str
    # Exit status: 128 + N when signal N ended the program inside the sandbox, negative when
    # the host killed the process (timeout, output limit).
    returncode: int | None
    stdout: str  # both truncated to max_output_bytes
    stderr: str
    duration_s: float


def run_python_tests(
    program: str, tests: str | list[str], limits: SandboxLimits = SandboxLimits()
) -> SandboxResult:
    """Run ``program`` and then ``tests`` (assert statements) in a fresh sandboxed process.

    The program runs as a module named ``solution``: its ``if __name__ == "__main__":`` block
    does not run. Safe to call from several threads at once.
    """
    return _run_sandboxed(program, tests, limits)[0]


def _run_sandboxed(
    program: str, tests: str | list[str], limits: SandboxLimits, audit_hook: bool = True
) -> tuple[SandboxResult, str]:
    """The result and the isolation the kernel granted ("netns,pidns", "none", ...).

    ``audit_hook=False`` exists for tests only: it shows what the kernel walls hold alone.
    """
    tests_source = tests if isinstance(tests, str) else "\n".join(tests)
    nonce = secrets.token_hex(16)
    config = {"nonce": nonce, "program": program, "tests": tests_source}
    config |= {"limits": dataclasses.asdict(limits), "audit_hook": audit_hook}
    workdir = tempfile.mkdtemp(prefix="s3ft-sandbox-")
    try:
        if os.geteuid() == 0:  # the runner drops to nobody; not possible in some user namespaces
            with contextlib.suppress(OSError):
                os.chown(workdir, runner.NOBODY, runner.NOBODY)
        return _execute(json.dumps(config).encode(), nonce, workdir, limits)
    finally:
        _remove_tree(workdir)


def _execute(
    config: bytes, nonce: str, workdir: str, limits: SandboxLimits
) -> tuple[SandboxResult, str]:
    config_r, config_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", runner.__file__, str(config_r), str(verdict_w)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            start_new_session=True,  # its own process group, killed as one below
            pass_fds=(config_r, verdict_w),
        )
    except BaseException:
        os.close(config_w)
        os.close(verdict_r)
        raise
    finally:
        os.close(config_r)
        os.close(verdict_w)
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    streams = {out_fd: bytearray(), err_fd: bytearray(), verdict_r: bytearray()}
    caps = {out_fd: limits.max_output_bytes, err_fd: limits.max_output_bytes}
    caps[verdict_r] = _VERDICT_CAP
    try:
        deadline = start + limits.wall_timeout_s
        timed_out, overflow = _pump(proc.pid, config, config_w, streams, caps, deadline)
    finally:
        with contextlib.suppress(OSError):  # the runner's lines may still sit in the pipe
            os.set_blocking(verdict_r, False)
            streams[verdict_r] += os.read(verdict_r, _VERDICT_CAP)
        lines = _read_runner_lines(bytes(streams[verdict_r]), nonce)
        _stop(proc, lines.get("CHILD"))
        proc.stdout.close()
        proc.stderr.close()
        os.close(verdict_r)
    duration = time.monotonic() - start
    stdout, stderr = (streams[fd].decode("utf-8", "replace") for fd in (out_fd, err_fd))
    if "READY" not in lines and "VERDICT" not in lines and not (timed_out or overflow):
        raise RuntimeError(f"code sandbox: the runner failed before the candidate ran:\n{stderr}")
    isolation = lines.get("ISOLATION", "unknown")
    _warn_once(isolation)
    status = _status(lines.get("VERDICT"), proc.returncode, timed_out, overflow)
    result = SandboxResult(status == "pass", status, proc.returncode, stdout, stderr, duration)
    return result, isolation


def _status(verdict: str | None, returncode: int, timed_out: bool, overflow: bool) -> str:
    if overflow:
        return "error"
    if verdict == "PASS" and returncode == 0 and not timed_out:
        return "pass"
    if verdict in ("FAIL", "ERROR"):
        return verdict.lower()
    if timed_out or returncode == runner.CPU_LIMIT_EXIT:
        return "timeout"
    return "error"  # no verdict: the process left early (os._exit) or was killed


def _pump(
    pid: int,
    config: bytes,
    config_fd: int,
    streams: dict[int, bytearray],
    caps: dict[int, int],
    deadline: float,
) -> tuple[bool, bool]:
    """Feed the config, drain the pipes; stop at exit, deadline or overflow.

    Returns (timed_out, overflow). Output past a cap is not stored and ends the run at once, so
    neither host memory nor a blocked pipe is at stake. Closes ``config_fd``.
    """
    pending = memoryview(config)
    selector = selectors.DefaultSelector()
    try:
        for fd in (config_fd, *streams):
            os.set_blocking(fd, False)
        selector.register(config_fd, selectors.EVENT_WRITE)
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        exited = False
        while selector.get_map():
            now = time.monotonic()
            if not exited and _has_exited(pid):
                exited, deadline = True, min(deadline, now + _EXIT_GRACE_S)
            if now >= deadline:
                return not exited, False
            for key, _ in selector.select(timeout=min(deadline - now, 0.05)):
                if key.fd == config_fd:
                    try:
                        pending = pending[os.write(config_fd, pending[:65536]) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the runner is gone: nothing more to send
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(config_fd)
                        os.close(config_fd)
                        config_fd = -1
                    continue
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer, room = streams[key.fd], caps[key.fd] - len(streams[key.fd])
                buffer += chunk[:room]
                if len(chunk) > room:
                    return False, True
        return False, False
    finally:
        selector.close()
        if config_fd != -1:
            os.close(config_fd)


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` has exited, leaving it unreaped so its process group stays ours."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped behind our back (SIGCHLD ignored): gone all the same
        return True


def _stop(proc: subprocess.Popen, child_pid: int | None) -> None:
    """Kill what is left of the run and reap it.

    The candidate is killed first so that the supervisor, its parent, reaps it and exits on its
    own; killing both at once would orphan the candidate's zombie to an init that may never
    reap it. Then the whole process group goes, for whatever the candidate left behind.
    """
    if child_pid is not None and not _has_exited(proc.pid):
        # The supervisor is alive, so the candidate is not yet reaped: its pid is still its.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child_pid, signal.SIGKILL)
        for _ in range(100):
            if _has_exited(proc.pid):
                break
            time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _read_runner_lines(data: bytes, nonce: str) -> dict:
    """The runner's lines from the verdict pipe: ISOLATION, CHILD (pid), READY and VERDICT.

    Lines without the nonce are the candidate's and are ignored. VERDICT is set only if there
    is exactly one: a second one (from a forked copy of the runner, say) voids both.
    """
    lines, verdicts = {}, []
    for line in data.decode("ascii", "replace").splitlines():
        words = line.split(" ")
        if words[0] != nonce or len(words) > 3:
            continue
        if words[1:] == ["READY"]:
            lines["READY"] = True
        elif len(words) == 3 and words[1] == "ISOLATION":
            lines["ISOLATION"] = words[2]
        elif len(words) == 3 and words[1] == "CHILD" and words[2].isdigit():
            lines.setdefault("CHILD", int(words[2]))
        elif len(words) == 2 and words[1] in ("PASS", "FAIL", "ERROR"):
            verdicts.append(words[1])
    if len(verdicts) == 1:
        lines["VERDICT"] = verdicts[0]
    return lines


def _warn_once(isolation: str) -> None:
    """Say once per process where the kernel walls are weaker than designed."""
    if "netns" not in isolation and "netns" not in _warned:
        _warned.add("netns")
        logger.warning(
            "code sandbox: no network/pid namespaces (isolation=%s): network and stray "
            "processes are held only by the audit hook and the process-group kill",
            isolation,
        )
    if "stdlib-hidden" in isolation and "stdlib" not in _warned:
        _warned.add("stdlib")
        logger.warning(
            "code sandbox: uid nobody cannot read Python's library (%s): candidate code can "
            "import only the preloaded modules; make its directories world-traversable",
            os.path.dirname(os.__file__),
        )


def _remove_tree(path: str) -> None:
    """Remove the run's directory, even where the candidate took permissions away."""
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):
        for parent, dirs, _ in os.walk(path):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(parent, name), 0o700)
        shutil.rmtree(path, ignore_errors=True)
