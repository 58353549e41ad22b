"""Experiment trackers: TensorBoard, MLflow and Weights & Biases (``trainer.loggers``).

A run opens one ``Trackers`` on the driver and hands it what the run writes to its directory:
the resolved config (as parameters), every metric row of ``metrics.jsonl`` with its step, the
evaluation before and after, the summary, and the artifacts (``summary.json``, ``config.yaml``,
``targets.meta.json``, the report's PNGs; the final checkpoint by its path). Actors never log.

    ray-s3ft train            one tracked run
    ray-s3ft compare          a parent run for the grid, a child run per cell (MLflow nested
                              runs; W&B runs of one group), so the tracker's UI compares cells

A tracker that cannot start (package missing, server unreachable) or fails later warns once
and is dropped: the run goes on with the others and never dies because a dashboard is down.
Run ids are kept in ``tracking.json`` in the run directory, so a resumed run continues its
tracked run instead of starting another.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from pathlib import Path

from ray_s3ft.tracking.backends import make_tracker
from ray_s3ft.tracking.base import (
    RunInfo,
    Tracker,
    TrackerUnavailable,
    eval_table,
    flatten,
    numbers,
)

__all__ = [
    "RunInfo", "Tracker", "TrackerUnavailable", "Trackers", "eval_table", "flatten",
    "grid_group", "numbers", "run_files",
]  # fmt: skip

log = logging.getLogger(__name__)

IDS = "tracking.json"
# what a run directory holds that a tracker keeps as an artifact, when present
RUN_FILES = ("config.yaml", "summary.json", "eval_before.json", "eval_after.json")
RUN_FILES += ("targets.meta.json", "data_report.json", "report.md")


# ------------------------------------------------------------------------------- fan-out


class Trackers:
    """The run's trackers, each call fanned out to every one still working. A tracker that
    raises is reported once and dropped; nothing here ever raises into the run."""

    def __init__(self, trackers: list[Tracker], run: RunInfo) -> None:
        self.trackers, self.run, self.ids = list(trackers), run, {}
        self.started = False

    @classmethod
    def for_run(cls, cfg, run_dir: Path, *, kind="run", name=None, group=None, parent=None):
        """``trainer.loggers`` of ``cfg`` for the run in ``run_dir`` (not started yet)."""
        run = RunInfo(
            run_dir=Path(run_dir),
            name=name or Path(run_dir).name,
            config=dataclasses.asdict(cfg),
            kind=kind,
            group=group,
            parent=parent,
        )
        # a grid's own run has no metric rows: its cells' curves are in the cells' TensorBoard
        names = [n for n in cfg.trainer.loggers if not (kind == "grid" and n == "tensorboard")]
        return cls([make_tracker(n, cfg.trainer) for n in names], run)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.trackers]

    def keeps_files(self) -> bool:
        return any(t.keeps_files for t in self.trackers)

    def _each(self, what: str, call) -> None:
        for t in list(self.trackers):
            try:
                call(t)
            except Exception as e:  # a dashboard down never stops a run
                self.trackers.remove(t)
                log.warning(
                    "%s: %s failed (%s: %s); the run goes on without it",
                    t.name, what, type(e).__name__, e,
                )  # fmt: skip

    def start(self, first_step: int = 0) -> Trackers:
        """Open every tracker (continuing the runs named in ``tracking.json``)."""
        self.run.first_step = first_step
        path = self.run.run_dir / IDS
        kept = json.loads(path.read_text()) if path.is_file() else {}

        def start(t: Tracker) -> None:
            run_id = t.start(self.run, kept.get(t.name))
            if run_id is not None:
                self.ids[t.name] = run_id

        self._each("start", start)
        if self.ids:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**kept, **self.ids}, indent=2) + "\n")
        self.started = True
        return self

    def log_row(self, row: dict) -> None:
        self._each("log", lambda t: t.log_row(row, int(row["step"])))

    def rewind(self, first_step: int) -> None:
        self._each("rewind", lambda t: t.rewind(first_step))

    def log_eval(self, name: str, scores: dict, step: int) -> None:
        self._each(f"log {name}", lambda t: t.log_eval(name, scores, step))

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        self._each(f"log {name}", lambda t: t.log_table(name, rows, step))

    def log_summary(self, summary: dict, step: int) -> None:
        self._each("log summary", lambda t: t.log_summary(summary, step))

    def log_files(self, files: list[Path], base: Path | None = None) -> None:
        base = base or self.run.run_dir
        files = [p for p in files if p.is_file()]
        self._each("log files", lambda t: t.log_files(files, base))

    def finish(self, status: str = "FINISHED") -> None:
        """``FINISHED``, ``FAILED`` or ``KILLED``."""
        if self.started:
            self._each("finish", lambda t: t.finish(status))
        self.trackers, self.started = [], False


def run_files(run_dir: Path) -> list[Path]:
    """The artifacts of a finished run directory: its records and the report's figures."""
    files = [run_dir / name for name in RUN_FILES]
    return [p for p in files if p.is_file()] + sorted(run_dir.glob("*.png"))


def grid_group(out: Path) -> str:
    """The W&B group (and MLflow tag) of a compare grid: its directory name and an id kept in
    the grid's ``tracking.json``, so a resumed grid adds to the same group."""
    path = out / IDS
    kept = json.loads(path.read_text()) if path.is_file() else {}
    if "group" not in kept:
        kept["group"] = f"{out.resolve().name}-{uuid.uuid4().hex[:8]}"
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(kept, indent=2) + "\n")
    return kept["group"]
