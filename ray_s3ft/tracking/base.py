"""What every tracker shares: the ``Tracker`` interface, the run it is told about, and the
flattening of configs and nested scores into what a tracker can draw."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any


class TrackerUnavailable(Exception):
    """A tracker that cannot be used here (a missing package, a server that does not answer)."""


# ------------------------------------------------------------------------------ flattening


def flatten(tree: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2]}`` -> ``{"a.b": 1, "c": [2]}``: dicts are walked, the rest
    (lists included) are leaves."""
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        tree = dataclasses.asdict(tree)
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{sep}{key}" if prefix else str(key), sep))
    return out


def numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of a nested dict, keys joined by ``/`` (bools and strings
    left out): what a tracker can draw."""
    return {
        k: float(v)
        for k, v in flatten(tree, prefix, sep="/").items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def eval_table(before: dict, after: dict) -> list[dict]:
    """One row per (set, metric) with its value before and after training."""
    b, a = numbers(before), numbers(after)
    rows = []
    for key in sorted(set(b) | set(a)):
        name, _, metric = key.partition("/")
        rows.append(
            {"set": name, "metric": metric or name, "before": b.get(key), "after": a.get(key)}
        )
    return rows


def _extra(package: str):
    """The tracker's package, imported; missing: ``TrackerUnavailable`` saying what to install."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise TrackerUnavailable(
            f"{package} is not installed ({e}); pip install 'ray-s3ft[{package}]'"
        ) from e


@dataclasses.dataclass
class RunInfo:
    """What every tracker is told about the run it logs."""

    run_dir: Path
    name: str
    config: dict  # the resolved config, nested
    kind: str = "run"  # run | grid | cell
    group: str | None = None  # the compare grid a cell belongs to
    parent: dict | None = None  # the grid's run ids, by tracker name
    first_step: int = 0


class Tracker:
    """One backend. Each method may raise: ``Trackers`` turns that into one warning."""

    name = ""
    keeps_files = True  # the report is drawn only when some tracker takes files

    def start(self, run: RunInfo, resume_id: str | None) -> str | None:
        """Open (or reopen, given ``resume_id``) the run; return the id to keep."""
        raise NotImplementedError

    def log_row(self, row: dict, step: int) -> None: ...

    def rewind(self, first_step: int) -> None: ...

    def log_eval(self, name: str, scores: dict, step: int) -> None: ...

    def log_table(self, name: str, rows: list[dict], step: int) -> None: ...

    def log_summary(self, summary: dict, step: int) -> None: ...

    def log_files(self, files: list[Path], base: Path) -> None: ...

    def finish(self, status: str) -> None: ...
