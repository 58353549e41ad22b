"""The audit hook (PEP 578) of the code sandbox: what candidate code may not do.

Loaded by ``_sandbox_runner.py`` inside the sandboxed process, by file path, and armed just
before the candidate's program runs. It is one layer of several: the kernel walls (network
and pid namespaces, uid nobody, rlimits) hold the network, processes and memory without it,
but not reads, nor writes to world-writable places like /tmp; native extension modules
bypass it. It denies:

- network, processes, signals to other processes, native code (ctypes, cffi);
- writes outside the working directory, and reads outside it, the Python library paths and a
  few devices (so /proc/self/mem, datasets and secrets on the host stay out of reach);
- the ways we know to reach the runner's frames, where the verdict nonce lives: frames of
  tracebacks and generators, ``sys._getframe``, tracing, gc referrers, new code objects.
"""

from __future__ import annotations

import os

DENIED_EVENTS = frozenset(
    "os.system os.fork os.forkpty os.kill os.killpg signal.pthread_kill os.chdir os.symlink "  # noqa: SIM905
    "os.link resource.setrlimit resource.prlimit sys._current_frames sys._current_exceptions "
    "sys.settrace sys.setprofile gc.get_objects gc.get_referrers gc.get_referents "
    "sys.addaudithook code.__new__ marshal.load marshal.loads fcntl.ioctl webbrowser.open "
    "sqlite3.enable_load_extension sqlite3.load_extension".split()
)
DENIED_PREFIXES = (
    "socket.",
    "ctypes.",
    "subprocess.",
    "syslog.",
    "os.exec",
    "os.spawn",
    "os.posix_spawn",
)
# Native escape hatches, and re-imports of the modules the runner patched (_signal, posix).
DENIED_MODULES = frozenset(
    "ctypes _ctypes cffi _cffi_backend _posixsubprocess _signal posix _testcapi "  # noqa: SIM905
    "_testinternalcapi _testbuffer _testmultiphase _testsinglephase _ctypes_test "
    "_xxsubinterpreters _xxinterpchannels".split()
)
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
# File-system events: (positions of path arguments, positions of dir_fd arguments).
PATH_EVENTS = {
    "os.remove": ((0,), (1,)),
    "os.rmdir": ((0,), (1,)),
    "os.mkdir": ((0,), (2,)),
    "os.rename": ((0, 1), (2, 3)),
    "os.chmod": ((0,), (2,)),
    "os.chown": ((0,), (3,)),
    "os.utime": ((0,), (3,)),
    "os.truncate": ((0,), ()),
    "os.setxattr": ((0,), ()),
    "os.removexattr": ((0,), ()),
    "shutil.rmtree": ((0,), (1,)),
    "sqlite3.connect": ((0,), ()),
}
READABLE_DEVICES = frozenset({"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def make_hook(workdir: str, library_paths: list[str]):
    """The hook for a run in ``workdir`` that may read (import from) ``library_paths``.

    Everything it uses is bound now, as locals of this closure: candidate code can replace
    builtins and module attributes, but cannot reach these.
    """
    denied_events, denied_prefixes, denied_modules = DENIED_EVENTS, DENIED_PREFIXES, DENIED_MODULES
    frame_attributes, path_events, devices = FRAME_ATTRIBUTES, PATH_EVENTS, READABLE_DEVICES
    write_flags, str_, bytes_, int_, type_, len_ = WRITE_FLAGS, str, bytes, int, type, len

    def resolve(path, base: str) -> str | None:
        # Lexical only: making symlinks and hard links is denied, so none lead out of workdir.
        if type_(path) is bytes_:
            path = path.decode("utf-8", "surrogateescape")
        if type_(path) is not str_:
            return None
        parts: list[str] = []
        for part in (path if path.startswith("/") else base + "/" + path).split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return "/" + "/".join(parts)

    root = resolve(os.path.realpath(workdir), "/")
    readable = tuple(
        p + "/" for p in (resolve(p, root) for p in [root, *library_paths]) if p and p != "/"
    )

    def inside(path) -> bool:
        resolved = resolve(path, root)
        return resolved is not None and (resolved == root or resolved.startswith(root + "/"))

    def deny(what: str):
        raise PermissionError(f"sandbox: {what} is not allowed")

    def hook(event: str, args: tuple) -> None:
        if event in denied_events or event.startswith(denied_prefixes):
            deny(event)
        elif event == "sys._getframe":
            # ValueError is what namedtuple, typing and enum expect when there is no frame.
            raise ValueError("sandbox: sys._getframe is not allowed")
        elif event == "object.__getattr__":
            if args[1] in frame_attributes:
                deny(f"reading {args[1]}")
        elif event == "import":
            if type_(args[0]) is str_ and args[0].split(".")[0] in denied_modules:
                raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        elif event == "open":
            path, mode, flags = args
            if type_(path) is int_ or inside(path):
                return
            resolved = resolve(path, root)
            if resolved is None or mode is None:  # os.open: a directory fd could be a dir_fd
                deny(f"opening {resolved} outside the working directory")
            if (flags & write_flags) or "w" in mode or "a" in mode or "x" in mode or "+" in mode:
                deny(f"writing {resolved} outside the working directory")
            if resolved not in devices and not (resolved + "/").startswith(readable):
                deny(f"reading {resolved} outside the working directory and library")
        elif event in path_events:
            paths, dir_fds = path_events[event]
            for i in dir_fds:
                if i < len_(args) and type_(args[i]) is int_ and args[i] >= 0:
                    deny(f"{event} relative to a directory descriptor")
            for i in paths:
                if not (inside(args[i]) or (event == "os.truncate" and type_(args[i]) is int_)):
                    deny(f"{event} on {resolve(args[i], root)}")

    return hook
