"""What a run says on the console: a line per event, and the phases of a run, timed."""

from __future__ import annotations

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
