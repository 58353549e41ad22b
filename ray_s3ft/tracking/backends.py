"""The trackers: TensorBoard, MLflow and Weights & Biases, each behind ``base.Tracker``."""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.request
import uuid
from pathlib import Path

from ray_s3ft.tracking.base import Tracker, TrackerUnavailable, _extra, flatten, numbers

log = logging.getLogger(__name__)

MLFLOW_PARAM_MAX = 6000  # characters of one MLflow parameter value


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
        # integer metrics too (updates, tokens, faults): what the other trackers draw
        for key, value in numbers({k: v for k, v in row.items() if k != "step"}).items():
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
