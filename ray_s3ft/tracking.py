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
import math
import os
import re
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IDS = "tracking.json"
# what a run directory holds that a tracker keeps as an artifact, when present
RUN_FILES = ("config.yaml", "summary.json", "eval_before.json", "eval_after.json")
RUN_FILES += ("targets.meta.json", "data_report.json", "report.md")
MLFLOW_PARAM_MAX = 6000  # characters of one MLflow parameter value


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


# -------------------------------------------------------------------------------- trackers


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


class TensorBoardTracker(Tracker):
    """Scalars of every metric row under ``run_dir/tensorboard`` (what ``metrics.jsonl``
    holds); a rewind purges the steps that run again."""

    name, keeps_files = "tensorboard", False

    def start(self, run, resume_id):
        self.dir = run.run_dir / "tensorboard"
        self._open(run.first_step)
        return None

    def _open(self, first_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard is a dependency; a broken install loses curves
            raise TrackerUnavailable(f"tensorboard cannot be imported ({e})") from e
        self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=first_step)

    def log_row(self, row, step):
        for key, value in row.items():
            if key != "step" and isinstance(value, float):
                self.writer.add_scalar(key, value, step)

    def rewind(self, first_step):
        self.writer.close()
        self._open(first_step)

    def finish(self, status):
        self.writer.close()


_MLFLOW_KEY = re.compile(r"[^\w\-. /]")  # MLflow names: alphanumerics, _ - . space /


class MlflowTracker(Tracker):
    """An MLflow run in ``trainer.mlflow.experiment`` of the tracking store: parameters, metric
    histories, the eval tables, the summary, artifacts; a compare cell is a nested run."""

    name = "mlflow"

    def __init__(self, tracking_uri: str | None, experiment: str) -> None:
        self.uri, self.experiment = tracking_uri, experiment

    def start(self, run, resume_id):
        mlflow = _extra("mlflow")
        from mlflow import MlflowClient

        uri = self.uri or mlflow.get_tracking_uri()
        if uri.startswith(("http://", "https://")):
            # a server that goes away mid-run costs a few seconds once, not minutes of retries
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            _probe(uri)
        self.uri, self.client = uri, MlflowClient(uri)
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(
                self.experiment,
                artifact_location=_artifact_root(uri, self.experiment),
                tags={
                    "mlflow.experimentKind": "custom_model_development"
                },  # the UI's training view
            )
        )
        old = None
        if resume_id:
            try:
                old = self.client.get_run(resume_id)
            except Exception:  # deleted, or another store: a new run
                old = None
        if old is not None:
            self.run_id = resume_id
            self.client.update_run(resume_id, status="RUNNING")
            have = old.data.params
        else:
            tags = {"ray_s3ft.kind": run.kind, "ray_s3ft.run_dir": str(run.run_dir.resolve())}
            if run.parent and run.parent.get(self.name):
                tags["mlflow.parentRunId"] = run.parent[self.name]
            if run.group:
                tags["ray_s3ft.grid"] = run.group
            self.run_id = self.client.create_run(exp_id, tags=tags, run_name=run.name).info.run_id
            have = {}
        self._log_params(flatten(run.config), have)
        return self.run_id

    def _log_params(self, params: dict, have: dict) -> None:
        from mlflow.entities import Param

        new, changed = [], []
        for key, value in params.items():
            text = str(value)[:MLFLOW_PARAM_MAX]
            if key not in have:
                new.append(Param(key, text))
            elif have[key] != text:
                changed.append(key)
        if changed:  # MLflow parameters cannot change; the run's config.yaml has the new ones
            log.warning("mlflow: resumed run keeps its first values of %s", ", ".join(changed))
        for i in range(0, len(new), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(_MLFLOW_KEY.sub("_", k), v, now, step) for k, v in values.items()]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(self.run_id, metrics=ms[i : i + 1000])

    def log_row(self, row, step):
        self._metrics(numbers({k: v for k, v in row.items() if k != "step"}), step)

    def log_eval(self, name, scores, step):
        self._metrics(numbers(scores, name), step)
        self.client.log_dict(self.run_id, scores, f"eval/{name}.json")

    def log_table(self, name, rows, step):
        cols = list(rows[0]) if rows else []
        self.client.log_table(
            self.run_id, data={c: [r[c] for r in rows] for c in cols}, artifact_file=f"{name}.json"
        )

    def log_summary(self, summary, step):
        self._metrics(numbers(_summary_part(summary), "summary"), step)
        if summary.get("checkpoint"):
            self.client.set_tag(self.run_id, "checkpoint", summary["checkpoint"])

    def log_files(self, files, base):
        for path in files:
            sub = path.parent.relative_to(base).as_posix() if path.parent != base else None
            self.client.log_artifact(self.run_id, str(path), artifact_path=sub)

    def finish(self, status):
        self.client.set_terminated(self.run_id, status=status)


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store beside its database (MLflow's own default is ./mlruns of
    whatever directory the run started in); other stores choose for themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :])
    return (db.parent / "mlruns" / re.sub(r"[^\w.-]", "_", experiment)).resolve().as_uri()


def _summary_part(summary: dict) -> dict:
    """The summary's own figures (the evals are logged as they are made)."""
    return {k: summary[k] for k in ("steps", "targets", "grpo", "faults", "wall_s") if k in summary}


def _probe(uri: str, timeout_s: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            r.read()
    except Exception as e:
        raise TrackerUnavailable(f"the MLflow server at {uri} does not answer ({e})") from e


class WandbTracker(Tracker):
    """A W&B run in ``trainer.wandb.project`` (``mode: offline`` writes it under the run
    directory for a later ``wandb sync``); a compare cell is a run of the grid's group."""

    name = "wandb"

    def __init__(self, project: str, entity: str | None, mode: str | None) -> None:
        self.project, self.entity, self.mode = project, entity, mode

    def start(self, run, resume_id):
        self.wandb = wandb = _extra("wandb")
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            mode=self.mode or os.environ.get("WANDB_MODE") or "online",
            name=run.name,
            group=run.group,
            job_type=run.kind,
            config=run.config,
            dir=str(run.run_dir),
            id=resume_id or uuid.uuid4().hex[:12],
            resume="allow",
            reinit="create_new",  # a compare grid holds its run and a cell's at once
            settings=wandb.Settings(console="off", silent=True, init_timeout=60),
        )
        return self.run.id

    def log_row(self, row, step):
        self.run.log(numbers({k: v for k, v in row.items() if k != "step"}), step=step)

    def log_eval(self, name, scores, step):
        self.run.summary.update(numbers(scores, name))

    def log_table(self, name, rows, step):
        cols = list(rows[0]) if rows else []
        table = self.wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])
        self.run.log({name: table}, step=step)

    def log_summary(self, summary, step):
        self.run.summary.update(numbers(_summary_part(summary), "summary"))
        if summary.get("checkpoint"):
            self.run.summary["checkpoint"] = summary["checkpoint"]

    def log_files(self, files, base):
        import shutil

        for path in files:  # what lies in the run's files directory is uploaded with it
            dest = Path(self.run.dir) / path.relative_to(base)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)

    def finish(self, status):
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def make_tracker(name: str, trainer) -> Tracker:
    if name == "tensorboard":
        return TensorBoardTracker()
    if name == "mlflow":
        return MlflowTracker(trainer.mlflow.tracking_uri, trainer.mlflow.experiment)
    if name == "wandb":
        return WandbTracker(trainer.wandb.project, trainer.wandb.entity, trainer.wandb.mode)
    raise ValueError(f"unknown tracker {name!r}")


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
        return cls([make_tracker(n, cfg.trainer) for n in cfg.trainer.loggers], run)

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
