"""The code sandbox against hostile programs: each gets a verdict and leaves the host untouched.

Limits are small so the file runs in seconds on two cores. ``_run_sandboxed(...,
audit_hook=False)`` checks that the kernel walls (namespaces, nobody, rlimits) hold on their
own; those tests skip where the kernel grants no namespaces or we are not root.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import psutil
import pytest

from ray_s3ft.verifiers.sandbox import (
    SandboxLimits,
    SandboxResult,
    _run_sandboxed,
    run_python_tests,
)

LIMITS = SandboxLimits(
    wall_timeout_s=3.0, cpu_time_s=1, memory_mb=256, max_processes=16, max_output_bytes=10_000
)
PRINT_CWD = "import os\nprint(os.getcwd(), flush=True)\n"


def run(program: str, tests: str | list[str] = "assert True", **limits) -> SandboxResult:
    return run_python_tests(program, tests, LIMITS.__class__(**{**LIMITS.__dict__, **limits}))


def processes_in(workdir: str) -> list[psutil.Process]:
    """Live processes whose working directory is (or was) the run's directory."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.cwd().startswith(workdir) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def listener() -> socket.socket:
    """A listening socket on an ephemeral port outside 10002-19999 (used by other services)."""
    while True:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        if not 10002 <= server.getsockname()[1] <= 19999:
            server.listen()
            server.setblocking(False)
            return server
        server.close()


def assert_no_connection(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        server.accept()


def test_correct_program_passes():
    result = run("def add(a, b):\n    print('adding')\n    return a + b", ["assert add(1, 2) == 3"])
    assert (result.passed, result.status, result.returncode) == (True, "pass", 0)
    assert result.stdout == "adding\n"


def test_wrong_program_fails():
    result = run("def add(a, b):\n    return a - b", ["assert add(1, 2) == 3"])
    assert (result.passed, result.status) == (False, "fail")
    assert "tests line 1: AssertionError" in result.stderr


def test_other_exceptions_are_errors():
    result = run("def f():\n    return 1 / 0", "assert f() == 1")
    assert result.status == "error"
    assert "ZeroDivisionError" in result.stderr


def test_infinite_loop_times_out_on_cpu():
    result = run("while True:\n    pass")
    assert result.status == "timeout"
    assert result.duration_s < LIMITS.wall_timeout_s + 1.0


def test_sleeping_program_times_out_on_wall_clock():
    result = run(PRINT_CWD + "import time\ntime.sleep(60)", wall_timeout_s=1.0)
    assert result.status == "timeout"
    assert result.duration_s < 2.0
    assert processes_in(result.stdout.strip()) == []


def test_fork_bomb_is_contained():
    result = run(PRINT_CWD + "while True:\n    os.fork()")
    assert result.status == "error"
    assert "os.fork is not allowed" in result.stderr
    assert processes_in(result.stdout.strip()) == []


def test_fork_bomb_without_audit_hook_leaves_nothing_behind():
    program = PRINT_CWD + "while True:\n    os.fork()"
    result, isolation = _run_sandboxed(program, "assert True", LIMITS, audit_hook=False)
    assert result.status in ("error", "timeout")  # fork fails at RLIMIT_NPROC, or time runs out
    assert not result.passed
    time.sleep(0.1)
    workdir = result.stdout.splitlines()[0]
    assert processes_in(workdir) == [], isolation


def test_memory_hog_is_refused():
    before = psutil.Process().memory_info().rss
    result = run("buffer = bytearray(8 * 1024**3)")
    assert result.status == "error"
    assert "MemoryError" in result.stderr
    assert psutil.Process().memory_info().rss - before < 100 * 1024**2


@pytest.mark.parametrize("audit_hook", [True, False])
def test_network_is_unreachable(audit_hook):
    server = listener()
    port = server.getsockname()[1]
    program = (
        f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))"
    )
    try:
        result, isolation = _run_sandboxed(program, "assert True", LIMITS, audit_hook=audit_hook)
        if not audit_hook and "netns" not in isolation:
            pytest.skip(f"no network namespace here (isolation={isolation})")
        assert result.status == "error"
        assert_no_connection(server)
    finally:
        server.close()


@pytest.mark.parametrize("audit_hook", [True, False])
def test_writing_outside_the_working_directory_is_refused(tmp_path, audit_hook):
    if not audit_hook and os.geteuid() != 0:
        pytest.skip("without the audit hook only uid nobody (root hosts) protects the host")
    target = tmp_path / "pwned.txt"
    program = f"open({str(target)!r}, 'w').write('owned')"
    result, _ = _run_sandboxed(program, "assert True", LIMITS, audit_hook=audit_hook)
    assert result.status == "error"
    assert "PermissionError" in result.stderr
    assert not target.exists()


def test_reading_host_files_is_refused(tmp_path):
    secret = tmp_path / "gold_answers.txt"
    secret.write_text("answer = 42")
    secret.chmod(0o644)
    result = run(f"print(open({str(secret)!r}).read())")
    assert result.status == "error"
    assert "42" not in result.stdout
    assert "reading" in result.stderr and "not allowed" in result.stderr


def test_program_that_does_not_compile_is_an_error():
    result = run("def broken(:\n    pass")
    assert (result.status, result.returncode) == ("error", 1)
    assert "program does not compile: SyntaxError" in result.stderr


def test_flood_of_output_is_cut_off_quickly():
    start = time.monotonic()
    result = run("print('x' * 100_000_000)")
    assert result.status == "error"
    assert len(result.stdout) <= LIMITS.max_output_bytes
    assert time.monotonic() - start < 3.0


def test_killing_the_parent_does_not_reach_the_host():
    result = run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert result.status == "error"
    assert "os.kill is not allowed" in result.stderr
    assert psutil.Process().is_running()


def test_sys_exit_before_the_asserts_is_not_a_pass():
    result = run("import sys\nsys.exit(0)", "assert False")
    assert result.status == "error"
    assert "SystemExit" in result.stderr


def test_os_exit_before_the_asserts_is_not_a_pass():
    result = run("import os\nos._exit(0)", "assert False")
    assert (result.status, result.returncode) == ("error", 0)  # a clean exit, yet no verdict


def test_tampering_with_builtins_does_not_reach_the_tests():
    program = "import builtins\nbuiltins.sorted = lambda xs: [1, 2, 3]\ndef f(xs):\n    return xs"
    result = run(program, "assert sorted(f([3, 1])) == [1, 2, 3]")
    assert result.status == "fail"


def test_forged_pass_markers_are_not_a_pass():
    program = (
        "import os\nprint('PASS', flush=True)\n"
        "for fd in range(3, 32):\n"
        "    for line in (b'PASS\\n', b'0123456789abcdef0123456789abcdef PASS\\n'):\n"
        "        try:\n            os.write(fd, line)\n        except OSError:\n            pass\n"
        "os._exit(0)"
    )
    result = run(program, "assert False")
    assert result.status == "error"
    assert result.stdout == "PASS\n"


@pytest.mark.parametrize(
    "program, denied",
    [
        ("try:\n    1 / 0\nexcept Exception as e:\n    e.__traceback__.tb_frame", "tb_frame"),
        ("def g():\n    yield\ng().gi_frame", "gi_frame"),
        ("import sys\nsys._getframe(0)", "sys._getframe"),
        ("import gc\ngc.get_objects()", "gc.get_objects"),
        ("import sys\nsys.settrace(lambda *a: None)", "sys.settrace"),
        ("import signal\nsignal.signal(signal.SIGALRM, print)", "signal handlers"),
        ("import ctypes", "ctypes"),
        ("open('/proc/self/mem', 'rb')", "/proc/self/mem"),
        ("import os\nos.symlink('/', 'root')", "os.symlink"),
        ("import os\nos.open('/tmp', os.O_RDONLY)", "outside the working directory"),
    ],
)
def test_introspection_and_escape_hatches_are_denied(program, denied):
    result = run(program)
    assert result.status == "error"
    assert denied in result.stderr and "not allowed" in result.stderr


def test_ordinary_code_still_works():
    program = """
import collections, dataclasses, enum, heapq, typing, tempfile, os

Point = collections.namedtuple("Point", "x y")
Color = enum.Enum("Color", "RED GREEN")

@dataclasses.dataclass
class Box:
    items: typing.List[int]

def solve(values):
    with open("scratch.txt", "w") as f:
        f.write(",".join(map(str, values)))
    with tempfile.TemporaryFile() as f:
        f.write(b"x")
    return heapq.nsmallest(2, Box(values).items)
"""
    result = run(program, ["assert solve([5, 1, 3]) == [1, 3]", "assert Point(1, 2).y == 2"])
    assert result.status == "pass", result.stderr


def test_environment_is_scrubbed_and_directory_removed(monkeypatch):
    monkeypatch.setenv("S3FT_HOST_SECRET", "hunter2")
    result = run(PRINT_CWD + "print(sorted(os.environ))")
    workdir, environ = result.stdout.splitlines()
    assert result.status == "pass"
    assert "S3FT_HOST_SECRET" not in environ
    assert not os.path.exists(workdir)


def test_concurrent_calls_from_threads():
    statuses: dict[int, str] = {}

    def judge(i: int) -> None:
        expected = i if i % 2 else -1  # odd ones pass, even ones fail
        statuses[i] = run(f"def f():\n    return {i}", f"assert f() == {expected}").status

    threads = [threading.Thread(target=judge, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == {i: "pass" if i % 2 else "fail" for i in range(6)}


def test_limits_are_validated():
    with pytest.raises(ValueError, match="cpu_time_s"):
        SandboxLimits(cpu_time_s=0)
