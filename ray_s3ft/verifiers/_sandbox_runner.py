"""Child side of the code sandbox: ``python -I _sandbox_runner.py CONFIG_FD VERDICT_FD``.

The host (``sandbox.py``) imports this module only for its constants; everything below runs in
the sandboxed process, in this order, before any candidate code:

1. read the run's config (nonce, program, tests, limits) from the config pipe, then close it;
2. leave the host's network and pid namespaces when the kernel allows it;
3. fork: the parent only waits for the child and reports how it ended (no candidate code);
4. in the child: preload the stdlib, rlimits, drop to ``nobody`` when root, arm the audit hook;
5. run the program, then the tests; write ``<nonce> PASS|FAIL|ERROR`` to the verdict pipe.

Only the nonce makes a verdict line count. The audit hook (``_sandbox_policy.py``) denies the
ways we know to read it back out of this process, and what a test has no business doing.
Before the hook is armed the runner also writes ``<nonce> READY``: a run without it failed
in the runner, not in candidate code, and the host raises instead of scoring it.
"""

import builtins
import contextlib
import json
import os
import sys

CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NOBODY = 65534
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
SIGKILL = 9
# The supervisor's exit status when the child was killed for using up its CPU time.
CPU_LIMIT_EXIT = 152
# What a solution commonly imports. Loaded while still privileged: once the child runs as
# nobody, a stdlib under an unreadable home (e.g. pyenv in /root) cannot be read any more.
PRELOAD = (  # noqa: SIM905
    "array bisect cmath collections collections.abc contextlib contextvars copy dataclasses "
    "datetime decimal encodings.idna enum fractions functools hashlib heapq inspect io "
    "itertools json math numbers operator pprint queue random re shutil signal socket "
    "statistics string struct tempfile textwrap threading time typing unicodedata unittest "
    "weakref"
).split()


def main() -> None:
    config_fd, verdict_fd = int(sys.argv[1]), int(sys.argv[2])
    with os.fdopen(config_fd, "rb") as f:
        config = json.loads(f.read())
    del sys.argv[1:]
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # the host died: so do we
    isolation = _unshare(libc)
    if os.geteuid() == 0 and not _world_readable(os.path.dirname(os.__file__)):
        isolation.append("stdlib-hidden")  # from nobody: only PRELOAD modules will import
    os.write(verdict_fd, f"{config['nonce']} ISOLATION {','.join(isolation) or 'none'}\n".encode())
    pid = os.fork()  # in a new pid namespace the child is its pid 1: when it ends, all end
    if pid:
        os.write(verdict_fd, f"{config['nonce']} CHILD {pid}\n".encode())
        _supervise(pid, verdict_fd, config["limits"]["cpu_time_s"])
    _child(config, verdict_fd, libc)


def _unshare(libc) -> list[str]:
    """Enter new network + pid namespaces; the ones we got ([] when the kernel refused)."""
    if os.geteuid() == 0:
        # No user namespace for root: uid 0 inside one still owns root's files outside it.
        flags, tags = CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC, ["netns", "pidns"]
    else:
        flags = CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
        tags = ["userns", "netns", "pidns"]
    return tags if libc.unshare(flags) == 0 else []


def _world_readable(path: str) -> bool:
    """Whether any user may reach ``path``: every directory on the way is o+x."""
    while path not in ("/", ""):
        if not os.stat(path).st_mode & 0o001:
            return False
        path = os.path.dirname(path)
    return True


def _supervise(pid: int, verdict_fd: int, cpu_time_s: int) -> None:
    """Wait for the child; exit with its status, 128 + N for signal N, or CPU_LIMIT_EXIT."""
    os.close(verdict_fd)
    _, status, usage = os.wait4(pid, 0)
    if os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    if usage.ru_utime + usage.ru_stime >= cpu_time_s - 0.05:
        os._exit(CPU_LIMIT_EXIT)
    os._exit(128 + os.WTERMSIG(status))


def _host_uid_of_root() -> int | None:
    """The host uid that uid 0 of our user namespace maps to (0 in the initial namespace)."""
    with open("/proc/self/uid_map") as f:
        for line in f:
            inside, outside, count = (int(x) for x in line.split())
            if inside == 0 and count > 0:
                return outside
    return None


def _child(config: dict, verdict_fd: int, libc) -> None:
    import _signal
    import posix
    import resource
    import types

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(name)
    policy = _load_policy()  # while still privileged enough to read the repository
    limits, mb = config["limits"], 1024 * 1024
    for resource_id, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, limits["cpu_time_s"]),  # soft == hard: SIGKILL even as pid 1
        (resource.RLIMIT_FSIZE, limits["max_file_mb"] * mb),
        (resource.RLIMIT_NPROC, limits["max_processes"]),
        (resource.RLIMIT_AS, limits["memory_mb"] * mb),
    ):
        resource.setrlimit(resource_id, (value, value))
    if os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        except OSError:
            # Root of a user namespace without nobody in it (a rootless container): fine to
            # stay, it is an unprivileged user outside. Real root that cannot drop must not.
            if _host_uid_of_root() == 0:
                raise
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # cleared by setuid
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # /proc/<pid>/mem etc. become root's

    # Signal handlers receive the interrupted frame, a way to the verdict messages below.
    # Defined in an empty namespace: its __globals__ must not lead back to this module.
    namespace: dict = {}
    exec(
        "def signal(*args):\n    raise PermissionError('sandbox: signal handlers are not allowed')",
        namespace,
    )
    _signal.signal = namespace["signal"]
    for module in (os, posix):  # no audit event for these
        for name in ("mkfifo", "mknod"):
            module.__dict__.pop(name, None)
    for name in [n for n in sys.modules if n.split(".")[0] in {"ctypes", "_ctypes"}]:
        del sys.modules[name]  # so that importing them again raises the denied "import" event
    sys.dont_write_bytecode = True
    sys.pycache_prefix = "/nonexistent"  # imports compile from source: marshal stays denied
    messages = {v: f"{config['nonce']} {v}\n".encode() for v in ("PASS", "FAIL", "ERROR")}
    solution = types.ModuleType("solution")  # a module, so its __main__ guard does not run
    sys.modules["solution"] = sys.modules["__main__"] = solution
    code = {}
    for phase in ("program", "tests"):
        try:
            code[phase] = compile(config[phase], f"<{phase}>", "exec", dont_inherit=True)
        except Exception as e:  # SyntaxError, or nesting too deep for the compiler
            os.write(verdict_fd, messages["ERROR"])
            os.write(2, f"sandbox: {phase} does not compile: {type(e).__name__}\n".encode())
            os._exit(1)
    hook = None
    if config["audit_hook"]:  # False only when the host's tests check the kernel walls alone
        library = [p for p in sys.path if p.startswith("/")] + ["/usr/share/zoneinfo"]
        hook = policy.make_hook(os.getcwd(), library)
    os.write(verdict_fd, f"{config['nonce']} READY\n".encode())  # from here on, it is the candidate
    program, tests, config = code["program"], code["tests"], None
    _run(program, tests, solution.__dict__, messages, verdict_fd, hook)


def _run(program, tests, namespace: dict, messages: dict, verdict_fd: int, hook) -> None:
    """Arm the hook, run program then tests, report. Binds every name it needs before arming.

    AssertionError -> FAIL; any other exception (SystemExit included) -> ERROR; a process that
    ends without reaching the report (os._exit, a signal) writes nothing, which the host also
    scores as an error. The tests see the program's names but a copy of the builtins taken
    now, so ``builtins.sorted = ...`` in the program cannot make an assert pass.
    """
    write, exit_, getpid = os.write, os._exit, os.getpid
    flushes = (sys.stdout.flush, sys.stderr.flush)
    exec_, dict_, assertion_error, base_exception = exec, dict, AssertionError, BaseException
    describe, pristine = _describe, dict(builtins.__dict__)
    me, verdict, failure, phase = getpid(), messages["ERROR"], None, "program"
    if hook is not None:
        sys.addaudithook(hook)
    try:
        exec_(program, namespace)
        phase, namespace = "tests", dict_(namespace)
        namespace["__builtins__"] = pristine
        exec_(tests, namespace)
        verdict = messages["PASS"]
    except assertion_error as e:
        verdict, failure = messages["FAIL"], e
    except base_exception as e:
        failure = e
    if getpid() != me:  # a forked copy of this runner never reports
        exit_(1)
    for flush in flushes:
        try:  # noqa: SIM105  (contextlib is candidate-patchable by now; builtins only)
            flush()
        except base_exception:
            pass
    write(verdict_fd, verdict)
    if failure is not None:
        write(2, describe(failure, phase).encode("utf-8", "replace"))
    exit_(0 if verdict == messages["PASS"] else 1)


def _load_policy():
    """``_sandbox_policy.py`` from beside this file (``-I`` keeps this directory off sys.path)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_policy.py")
    spec = importlib.util.spec_from_file_location("_sandbox_policy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _describe(e: BaseException, phase: str) -> str:
    """'sandbox: tests line 3: AssertionError', read from the traceback without its frames."""
    tb, where = e.__traceback__, ""
    if tb is not None and tb.tb_next is not None:
        where = f" line {tb.tb_next.tb_lineno}"
    message = ""
    if type(e).__module__ == "builtins" and e.args and type(e.args[0]) is str:
        message = f": {e.args[0][:500]}"
    return f"sandbox: {phase}{where}: {type(e).__name__}{message}\n"


if __name__ == "__main__":
    main()
