"""Experiment trackers (``ray_s3ft.tracking``) against real backends: MLflow on a sqlite store
and on a tracking server started here on a loopback port, W&B in offline mode read back from
its files, TensorBoard's event files; and the failures a run must survive."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _wandb_offline import read_run

from ray_s3ft.config import load_config
from ray_s3ft.tracking import RunInfo, Tracker, Trackers, eval_table, flatten, numbers

BEFORE = {"task": {"accuracy": 0.25, "n": 8, "unparsed": 1}, "heldout_mean": 0.5}
AFTER = {"task": {"accuracy": 0.75, "n": 8, "unparsed": 0}, "heldout_mean": 0.375}
ROWS = [
    {"step": 0, "mode": "sft", "learner/loss": 2.0, "reward/mean": None, "learner/updates": 1},
    {"step": 1, "mode": "grpo", "learner/loss": 1.5, "reward/mean": 0.25, "learner/updates": 2},
    {"step": 2, "mode": "sft", "learner/loss": 1.0, "reward/mean": None, "learner/updates": 1},
]


def _cfg(tmp: Path, *loggers: str, uri: str | None = None):
    return load_config(
        None,
        [
            f"trainer.loggers=[{','.join(loggers)}]",
            f"trainer.output_dir={tmp / 'run'}",
            f"trainer.mlflow.tracking_uri={uri or 'sqlite:///' + str(tmp / 'mlflow.db')}",
            "trainer.mlflow.experiment=tests",
            "trainer.wandb.mode=offline",
            "trainer.max_steps=3",
            "schedule.warmup_steps=1",
        ],
    )


def _drive(trackers: Trackers, rows=ROWS, first_step: int = 0, status: str = "FINISHED"):
    """What ``train.train_and_evaluate`` does with them, on fixed numbers."""
    run_dir = trackers.run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    trackers.start(first_step=first_step)
    trackers.log_eval("eval_before", BEFORE, step=0)
    for row in rows:
        trackers.log_row(row)
    summary = {"steps": {"sft": 2, "grpo": 1}, "checkpoint": str(run_dir / "ckpt"), "wall_s": {}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "accuracy.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    trackers.log_eval("eval_after", AFTER, step=3)
    trackers.log_table("eval_table", eval_table(BEFORE, AFTER), step=3)
    trackers.log_summary(summary, step=3)
    trackers.log_files([run_dir / "summary.json", run_dir / "accuracy.png"])
    trackers.finish(status)


# ------------------------------------------------------------------------------ by hand


def test_flatten_numbers_and_eval_table_by_hand():
    tree = {"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": True, "g": float("nan")}
    assert flatten(tree) == {"a.b": 1, "a.c.d": "x", "e": [1, 2], "f": True, "g": tree["g"]}
    assert numbers(tree, "p") == {"p/a/b": 1.0}  # strings, lists, bools and nan left out
    rows = eval_table(BEFORE, AFTER)
    assert rows == [
        {"set": "heldout_mean", "metric": "heldout_mean", "before": 0.5, "after": 0.375},
        {"set": "task", "metric": "accuracy", "before": 0.25, "after": 0.75},
        {"set": "task", "metric": "n", "before": 8.0, "after": 8.0},
        {"set": "task", "metric": "unparsed", "before": 1.0, "after": 0.0},
    ]


class _Flaky(Tracker):
    name, calls = "flaky", 0

    def start(self, run, resume_id):
        return "f1"

    def log_row(self, row, step):
        _Flaky.calls += 1
        raise ConnectionError("dashboard down")


class _Counting(Tracker):
    name, keeps_files = "counting", False

    def start(self, run, resume_id):
        self.rows = []
        return None

    def log_row(self, row, step):
        self.rows.append(step)


def test_a_failing_tracker_warns_once_and_the_others_go_on(tmp_path, caplog):
    good = _Counting()
    t = Trackers([_Flaky(), good], RunInfo(run_dir=tmp_path, name="r", config={}))
    with caplog.at_level(logging.WARNING, logger="ray_s3ft.tracking"):
        t.start()
        for row in ROWS:
            t.log_row(row)
        t.finish()
    warnings = [r.getMessage() for r in caplog.records]
    assert (
        len(warnings) == 1 and "flaky: log failed (ConnectionError: dashboard down)" in warnings[0]
    )
    assert _Flaky.calls == 1 and good.rows == [0, 1, 2]
    assert json.loads((tmp_path / "tracking.json").read_text()) == {"flaky": "f1"}


def test_a_missing_package_is_one_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    monkeypatch.setitem(sys.modules, "wandb", None)
    t = Trackers.for_run(_cfg(tmp_path, "tensorboard", "mlflow", "wandb"), tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="ray_s3ft.tracking"):
        _drive(t)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert "pip install 'ray-s3ft[mlflow]'" in warnings[0]
    assert "pip install 'ray-s3ft[wandb]'" in warnings[1]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_mlflow_server_is_one_warning(tmp_path, caplog):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    t = Trackers.for_run(_cfg(tmp_path, "tensorboard", "mlflow", uri=uri), tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="ray_s3ft.tracking"):
        _drive(t)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and f"the MLflow server at {uri} does not answer" in warnings[0]
    assert not (tmp_path / "run" / "tracking.json").exists()


# ----------------------------------------------------------------------------- MLflow


def _check_mlflow_run(client, run_id: str, run_dir: Path) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    p = run.data.params
    assert p["trainer.max_steps"] == "3" and p["schedule.kind"] == "sasr"
    assert p["trainer.loggers"] == "['mlflow']"
    loss = client.get_metric_history(run_id, "learner/loss")
    assert [(m.step, m.value) for m in loss] == [(0, 2.0), (1, 1.5), (2, 1.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "reward/mean")] == [
        (1, 0.25)
    ]  # null rows are not points
    assert client.get_metric_history(run_id, "eval_after/task/accuracy")[0].value == 0.75
    assert client.get_metric_history(run_id, "summary/steps/sft")[0].value == 2.0
    assert run.data.tags["checkpoint"] == str(run_dir / "ckpt")
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"summary.json", "accuracy.png", "eval_table.json", "eval"} <= names
    evals = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert evals == {"eval/eval_before.json", "eval/eval_after.json"}
    table = json.loads(Path(client.download_artifacts(run_id, "eval_table.json")).read_text())
    assert table["columns"] == ["set", "metric", "before", "after"]
    assert ["task", "accuracy", 0.25, 0.75] in table["data"]


def test_mlflow_sqlite_store_params_metrics_artifacts_and_resume(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    _drive(Trackers.for_run(_cfg(tmp_path, "mlflow"), run_dir))
    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(uri)
    _check_mlflow_run(client, run_id, run_dir)
    # a resumed run (from a checkpoint at step 2) continues the same MLflow run
    again = Trackers.for_run(_cfg(tmp_path, "mlflow"), run_dir)
    again.start(first_step=2)
    again.log_row({"step": 2, "learner/loss": 0.5})
    again.finish()
    assert again.ids["mlflow"] == run_id
    (exp,) = [e for e in client.search_experiments() if e.name == "tests"]
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.artifact_location == (tmp_path / "mlruns" / "tests").as_uri()
    assert len(client.search_runs([exp.experiment_id])) == 1
    steps = [(m.step, m.value) for m in client.get_metric_history(run_id, "learner/loss")]
    assert steps[-1] == (2, 0.5)


def test_mlflow_grid_is_a_parent_run_with_nested_cells(tmp_path):
    from mlflow import MlflowClient

    cfg = _cfg(tmp_path, "mlflow")
    grid = Trackers.for_run(cfg, tmp_path / "grid", kind="grid", group="g-1").start()
    cells = []
    for name in ("sft-s0", "sasr-s0"):
        cell = Trackers.for_run(
            cfg, tmp_path / "grid" / "cells" / name, kind="cell", name=name, group="g-1",
            parent=grid.ids,
        )  # fmt: skip
        _drive(cell)
        cells.append(cell.ids["mlflow"])
    grid.finish()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run_id, name in zip(cells, ("sft-s0", "sasr-s0")):
        run = client.get_run(run_id)
        assert run.info.run_name == name
        assert run.data.tags["mlflow.parentRunId"] == grid.ids["mlflow"]
        assert run.data.tags["ray_s3ft.grid"] == "g-1"
    assert client.get_run(grid.ids["mlflow"]).data.tags["ray_s3ft.kind"] == "grid"


HTTP_TEST = "test_mlflow_over_http_to_a_tracking_server"


@pytest.fixture(scope="module", autouse=True)
def _mlflow_server_starting(request, tmp_path_factory):
    """``mlflow server`` on a free loopback port, its store and artifacts in a temp dir, started
    with the module's first test when the HTTP test is selected: its start (two interpreters
    importing mlflow, 10-15 s) overlaps the tests before it. Stopped by its PID. Without its
    job runner (a third interpreter, for jobs no tracker here submits)."""
    if not any(item.name == HTTP_TEST for item in request.session.items):
        yield None
        return
    tmp, port = tmp_path_factory.mktemp("mlflow-server"), _free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
            "--artifacts-destination", str(tmp / "server-artifacts"), "--workers", "1",
        ],
        stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"),  # noqa: SIM115
        start_new_session=True, env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )  # fmt: skip
    try:
        yield {"proc": proc, "uri": f"http://127.0.0.1:{port}", "dir": tmp}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


@pytest.fixture
def mlflow_server(_mlflow_server_starting):
    """The started server once it answers: its URI and its directory."""
    server = _mlflow_server_starting
    proc, uri, log = server["proc"], server["uri"], server["dir"] / "server.log"
    for _ in range(240):
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                return server
        except OSError:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
    raise AssertionError("mlflow server did not start: " + log.read_text()[-3000:])


@pytest.mark.slow
def test_mlflow_over_http_to_a_tracking_server(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    run_dir = tmp_path / "run"
    uri = mlflow_server["uri"]
    _drive(Trackers.for_run(_cfg(tmp_path, "mlflow", uri=uri), run_dir))
    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    _check_mlflow_run(MlflowClient(uri), run_id, run_dir)
    # the artifacts went through the server, into its own artifact store
    assert list((mlflow_server["dir"] / "server-artifacts").rglob("summary.json"))


# ------------------------------------------------------------------------------ W&B


def test_wandb_offline_run_reads_back(tmp_path):
    run_dir = tmp_path / "run"
    t = Trackers.for_run(_cfg(tmp_path, "wandb"), run_dir, kind="cell", name="sasr-s0", group="g-1")
    _drive(t)
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    got = read_run(offline)
    assert got["run"].display_name == "sasr-s0" and got["run"].run_group == "g-1"
    assert got["run"].job_type == "cell" and got["run"].project == "ray_s3ft"
    assert got["run"].run_id == json.loads((run_dir / "tracking.json").read_text())["wandb"]
    assert got["config"]["trainer"]["max_steps"] == 3
    assert got["config"]["schedule"]["kind"] == "sasr"
    hist = [h for h in got["history"] if "learner/loss" in h]
    assert [(h["_step"], h["learner/loss"]) for h in hist] == [(0, 2.0), (1, 1.5), (2, 1.0)]
    assert "reward/mean" not in hist[0] and hist[1]["reward/mean"] == 0.25
    (table,) = [h for h in got["history"] if "eval_table/_type" in h]
    assert table["eval_table/_type"] == "table-file" and table["eval_table/nrows"] == 4
    s = got["summary"]
    assert s["eval_before/task/accuracy"] == 0.25 and s["eval_after/task/accuracy"] == 0.75
    assert s["summary/steps/sft"] == 2 and s["checkpoint"] == str(run_dir / "ckpt")
    assert got["exit"] == 0
    assert {p.name for p in (offline / "files").iterdir()} >= {"summary.json", "accuracy.png"}


def test_tensorboard_alone_is_the_default(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(None, [f"trainer.output_dir={tmp_path / 'run'}"])
    assert cfg.trainer.loggers == ["tensorboard"]
    t = Trackers.for_run(cfg, tmp_path / "run")
    assert not t.keeps_files()  # no report is drawn for TensorBoard alone
    _drive(t)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("learner/loss")] == [
        (0, 2.0),
        (1, 1.5),
        (2, 1.0),
    ]
    # an integer metric is drawn too; a step without a reward has no point
    assert [(e.step, e.value) for e in acc.Scalars("learner/updates")] == [(0, 1), (1, 2), (2, 1)]
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.25)]
    assert not (tmp_path / "run" / "tracking.json").exists()
