"""``ray-s3ft compare`` on the real-model grid (``configs/smollm2-135m-grid.yaml``,
``docs/results/real-model.md``) as a smoke run: SmolLM2-135M-Instruct, two trained methods and
the base, one seed, four steps, with the grid's own held-out suites (MMLU by log-likelihood,
HumanEval pass@1, the drift KL) at tiny sizes, on one Ray cluster, a vLLM engine, a judge and
the config's two DeepSpeed ranks shared by every cell. Then what a grid gives its user:

- results.json / results.md hold the cells' own numbers; s3ft and sasr share their first two
  steps (SFT on the same S3FT batches, same seed), so equal losses there show the learners were
  reset to the base weights (and their optimizer) between the cells;
- the grid tracked: an MLflow parent run with a child per cell, a W&B group (offline);
- a second call finds every cell done and trains nothing; ``--gather`` over more methods and
  seeds than ran tabulates the finished cells; ``ray-s3ft report`` plots them.

``tests/e2e/test_compare.py`` checks the aggregation by hand-computed numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
GRID = "configs/smollm2-135m-grid.yaml"
TINY = [
    "data.train_size=4", "eval.task_size=4", "eval.heldout_size=8", "eval.drift_size=4",
    "eval.every=2", "eval.every_size=4", "rollout.max_new_tokens=32", "eval.max_new_tokens=32",
    "rollout.enforce_eager=true", "learner.micro_batch_size=1", "trainer.sft_batch_size=4",
    "trainer.grpo_prompts_per_step=1", "algorithm.grpo.group_size=2", "trainer.max_steps=4",
    "schedule.warmup_steps=2", "trainer.checkpoint_every=100",
    # the grid tracked: an MLflow parent run with a child per cell, a W&B group offline
    "trainer.loggers=[tensorboard,mlflow,wandb]", "trainer.wandb.mode=offline",
]  # fmt: skip
METHODS = ["--methods", "base,s3ft,sasr"]


def _compare(tmp: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = dict(os.environ, TMPDIR=str(tmp))
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        [sys.executable, "-m", "ray_s3ft.cli", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def test_real_model_grid_smoke_tracked_resumed_gathered_and_reported(smollm2_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rgrid")  # short: Ray's socket paths must fit 107 bytes
    out = tmp / "grid"
    small = [
        f"model.path={smollm2_dir}", *TINY,
        f"trainer.mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
    ]  # fmt: skip
    grid = ["compare", "--config", str(ROOT / GRID), *METHODS, "--seeds", "0", "--out", str(out)]
    _compare(tmp, *grid, *small)
    res = json.loads((out / "results.json").read_text())
    assert [(c["method"], c["seed"]) for c in res["cells"]] == [
        ("base", 0), ("s3ft", 0), ("sasr", 0)
    ]  # fmt: skip
    before = json.loads((out / "eval_before.json").read_text())
    assert before["mmlu"]["n"] == 8 and before["humaneval"]["n"] == 8
    assert before["drift"]["n"] == 4
    md = (out / "results.md").read_text()
    rows = {}
    for cell in ("s3ft-s0", "sasr-s0"):
        d = out / "cells" / cell
        summary = json.loads((d / "summary.json").read_text())
        got = next(c for c in res["cells"] if f"{c['method']}-s{c['seed']}" == cell)
        after = summary["accuracy_after"]
        assert got["task_accuracy"] == after["task"]["accuracy"]
        assert got["heldout"]["mmlu"] == after["mmlu"]["accuracy"]
        assert got["heldout"]["humaneval"] == after["humaneval"]["accuracy"]
        assert got["sft_steps"] + got["grpo_steps"] == 4
        rows[cell] = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        # in-loop evaluation every 2 steps
        assert [x["step"] for x in rows[cell] if "eval/task_accuracy" in x] == [1, 3]
        assert (d / "checkpoints" / "step_4" / "hf" / "config.json").exists()
    for a, b in zip(rows["s3ft-s0"][:2], rows["sasr-s0"][:2], strict=True):
        assert a["mode"] == b["mode"] == "sft"
        assert a["learner/loss"] == pytest.approx(b["learner/loss"], rel=1e-5)
    assert rows["s3ft-s0"][0]["learner/loss"] != pytest.approx(rows["s3ft-s0"][1]["learner/loss"])
    _check_tracked_grid(tmp, out, rows)
    for method in ("| base |", "| s3ft |", "| sasr |"):
        assert method in md
    assert "compare --config" in md and "--methods base,s3ft,sasr" in md
    s3ft = next(m for m in res["summary"] if m["method"] == "s3ft")
    assert f"{100 * s3ft['task_accuracy']['mean']:.1f}" in md

    # a second call finds every cell done: nothing retrains
    done = (out / "cells" / "sasr-s0" / "summary.json").stat().st_mtime_ns
    assert "2 cells (2 done)" in _compare(tmp, *grid, *small, timeout=300).stdout
    assert (out / "cells" / "sasr-s0" / "summary.json").stat().st_mtime_ns == done
    # --gather over more methods and seeds than ran: the finished cells' tables, nothing trained
    gather = [
        "compare", "--config", str(ROOT / GRID), "--methods", "base,sft_gold,s3ft,sasr",
        "--seeds", "0,1", "--out", str(out), "--gather",
    ]  # fmt: skip
    r = _compare(tmp, *gather, *small, timeout=300)
    assert "6 cells (2 done)" in r.stdout and "2 finished cells, nothing trained" in r.stdout
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["s3ft-s0", "sasr-s0"]
    gathered = json.loads((out / "results.json").read_text())
    assert gathered["cells"] == res["cells"]
    assert gathered["command"].endswith("--gather " + " ".join(small))
    # the report over the grid: one row per cell with its numbers
    _compare(tmp, "report", str(out), "--out", str(tmp / "rep"), timeout=300)
    report = (tmp / "rep" / "report.md").read_text()
    for cell in ("s3ft-s0", "sasr-s0"):
        acc = json.loads((out / "cells" / cell / "summary.json").read_text())["accuracy_after"]
        assert cell in report and f"{100 * acc['task']['accuracy']:.1f} %" in report
    for png in ("accuracy", "loss_reward", "schedule", "gate_signals", "targets"):
        assert (tmp / "rep" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _check_tracked_grid(tmp: Path, out: Path, rows: dict) -> None:
    """What the trackers got from the grid: MLflow (read back with MlflowClient) and W&B
    (its offline files)."""
    from _wandb_offline import read_run
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    grid_id = json.loads((out / "tracking.json").read_text())["mlflow"]
    grid = client.get_run(grid_id)
    assert grid.info.status == "FINISHED" and grid.data.tags["ray_s3ft.kind"] == "grid"
    assert {"results.md", "results.json", "report"} <= {
        a.path for a in client.list_artifacts(grid_id)
    }
    res = json.loads((out / "results.json").read_text())
    sasr = next(m for m in res["summary"] if m["method"] == "sasr")
    (got,) = client.get_metric_history(grid_id, "sasr/task_accuracy/mean")
    assert got.value == pytest.approx(sasr["task_accuracy"]["mean"])
    children = client.search_runs(
        [grid.info.experiment_id], f"tags.mlflow.parentRunId = '{grid_id}'"
    )
    assert sorted(r.info.run_name for r in children) == ["s3ft-s0", "sasr-s0"]
    for run in children:
        cell, run_id = run.info.run_name, run.info.run_id
        assert run.info.status == "FINISHED" and run.data.params["schedule.kind"] in ("sft", "sasr")
        loss = client.get_metric_history(run_id, "learner/loss")
        assert [(m.step, m.value) for m in loss] == [
            (r["step"], pytest.approx(r["learner/loss"])) for r in rows[cell]
        ]
        summary = json.loads((out / "cells" / cell / "summary.json").read_text())
        after = client.get_metric_history(run_id, "eval_after/task/accuracy")
        assert after[0].value == pytest.approx(summary["accuracy_after"]["task"]["accuracy"])
        assert run.data.tags["checkpoint"] == summary["checkpoint"]
        names = {a.path for a in client.list_artifacts(run_id)}
        assert {"summary.json", "config.yaml", "accuracy.png", "eval_table.json"} <= names
        # W&B: the same cell, a run of the grid's group
        (offline,) = (out / "cells" / cell / "wandb").glob("offline-run-*")
        w = read_run(offline)
        assert w["run"].display_name == cell and w["run"].job_type == "cell"
        assert w["run"].run_group == json.loads((out / "tracking.json").read_text())["group"]
        assert [h["_step"] for h in w["history"] if "learner/loss" in h] == [0, 1, 2, 3]
        assert w["summary"]["checkpoint"] == summary["checkpoint"]
