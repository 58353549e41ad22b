"""Errors the command line turns into one message and an exit status, never a traceback."""

from __future__ import annotations


class RunFailed(RuntimeError):
    """The run cannot go on; the message says why and how to resume it (exit status 1)."""


class OutOfMemory(RunFailed):
    """A worker of ``group`` was killed for memory (Ray's memory monitor, or the kernel's OOM
    killer). What Ray said of it, where it did: ``task`` (the call it ran), ``pid``, ``used``
    (its memory, GiB) and the node's memory in use and its total (GiB, as Ray's "GB")."""

    def __init__(
        self,
        group: str,
        task: str | None = None,
        pid: int | None = None,
        used: float | None = None,
        node: tuple[float, float] | None = None,
    ) -> None:
        self.group, self.task, self.pid, self.used, self.node = group, task, pid, used, node
        what = ", ".join(x for x in (task, f"pid {pid}" if pid else None) if x)
        line = f"{group}: a worker{f' ({what})' if what else ''} was killed for memory"
        if used is not None:
            line += f"; it held {used:.1f} GiB"
        if node is not None:
            line += f"; its node had {node[0]:.1f} of {node[1]:.1f} GiB in use"
        super().__init__(line)
