"""What a run says on the console: a line per event, and the phases of a run, timed."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from ray_s3ft.timing import Timer


def say(text: str) -> None:
    """One ``ray-s3ft ...`` line on the console (rich markup)."""
    from rich.console import Console

    Console().print(f"[bold]ray-s3ft[/bold] {text}", highlight=False)


class Phases(Timer):
    """Wall time per phase of the run, in order, announced on the console."""

    def run(self, name: str, fn, *args, **kw):
        say(f"{name} ...")
        out = super().run(name, fn, *args, **kw)
        say(f"{name} done in {self.s[name]:.1f} s")
        return out


@contextlib.contextmanager
def output_to_log(path: Path, verbose: bool = False):
    """Everything written to this process's stdout and stderr inside, at the file-descriptor
    level, goes to ``path``: an in-process engine's logs, warnings and loading bars (vLLM's
    engine-core subprocess inherits the descriptors), as ``train`` keeps them in the actors'
    logs. Yields a rich Console on the real terminal for what the command itself says;
    ray_s3ft's own warnings go there too. ``verbose`` (``--verbose``): nothing is redirected."""
    from rich.console import Console

    if verbose:
        yield Console()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    ours = logging.StreamHandler(os.fdopen(os.dup(saved[1]), "w", buffering=1))
    ours.setLevel(logging.WARNING)
    ours.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("ray_s3ft").addHandler(ours)
    try:
        with open(path, "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield Console(file=terminal)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        logging.getLogger("ray_s3ft").removeHandler(ours)
        ours.stream.close()
        terminal.close()
        for fd in saved:
            os.close(fd)
