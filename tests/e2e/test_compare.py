"""``ray-s3ft compare``: aggregation by hand-computed numbers, then a smoke grid on the real stack
(one Ray cluster, a vLLM engine, judge workers and two DeepSpeed ranks shared by every cell)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_s3ft.config import ConfigError
from ray_s3ft.experiments.compare import parse_list
from ray_s3ft.experiments.methods import METHODS
from ray_s3ft.experiments.results import collect, results_markdown


def _acc(task, heldout):
    out = {"task": {"accuracy": task, "correct": 0, "n": 100, "unparsed": 0}}
    out.update(
        {k: {"accuracy": v, "correct": 0, "n": 100, "unparsed": 0} for k, v in heldout.items()}
    )
    out["heldout_mean"] = sum(heldout.values()) / len(heldout)
    return out


def _summary(tmp, name, task, heldout, steps=(3, 1)):
    d = tmp / "cells" / name
    d.mkdir(parents=True)
    s = {
        "run_dir": str(d),
        "accuracy_after": _acc(task, heldout),
        "targets": {"self": 0.5, "paraphrase": 0.3, "gold": 0.2},
        "steps": {"sft": steps[0], "grpo": steps[1]},
        "wall_s": {"total": 10.0},
    }
    (d / "summary.json").write_text(json.dumps(s))


def test_collect_means_and_sample_std_by_hand(tmp_path):
    before = _acc(0.40, {"a": 0.80, "b": 0.60})  # held-out mean 0.70
    _summary(tmp_path, "sft_gold-s0", 0.50, {"a": 0.70, "b": 0.50})  # drop 0.10
    _summary(tmp_path, "sft_gold-s1", 0.60, {"a": 0.60, "b": 0.40})  # drop 0.20
    r = collect(
        tmp_path,
        ["base", "sft_gold"],
        [0, 1],
        before,
        {"self": 0.5, "paraphrase": 0.3, "gold": 0.2},
    )
    base, sft = r["summary"]
    assert base["task_accuracy"]["mean"] == 0.40 and base["task_accuracy"]["std"] == 0.0
    assert base["n_seeds"] == 1
    assert sft["n_seeds"] == 2
    assert sft["task_accuracy"]["mean"] == pytest.approx(0.55)
    # sample std of (0.5, 0.6): sqrt(((0.05)^2 * 2) / 1) = 0.0707...
    assert sft["task_accuracy"]["std"] == pytest.approx(math.sqrt(0.005))
    assert sft["task_gain"]["mean"] == pytest.approx(0.15)
    assert sft["heldout_drop"]["mean"] == pytest.approx(0.15)
    assert sft["heldout_drop"]["std"] == pytest.approx(math.sqrt(0.005))
    assert sft["heldout"]["a"]["mean"] == pytest.approx(0.65)
    # standard errors of the questions, both seeds' 100 answers pooled: sqrt(p (1 - p) / 200)
    assert sft["heldout"]["a"]["se"] == pytest.approx(math.sqrt(0.65 * 0.35 / 200))
    assert base["heldout"]["b"]["se"] == pytest.approx(math.sqrt(0.6 * 0.4 / 100))
    md = results_markdown(r)
    # 0.65 ± 3.37 %, 0.45 ± 3.52 %
    assert "| sft_gold | 2 | 55.0 ± " in md and "| 65.0 ± 3.4 % | 45.0 ± 3.5 % | - |" in md
    assert "| sft_gold | 2 | 55.0 ± 7.1 % | +15.0 ± 7.1 | 55.0 ± 7.1 % | +15.0 ± 7.1 |" in md
    assert "| base | 1 | 40.0 ± 0.0 % | +0.0 ± 0.0 |" in md


def test_collect_skips_unfinished_cells(tmp_path):
    before = _acc(0.40, {"a": 0.80})
    _summary(tmp_path, "s3ft-s0", 0.5, {"a": 0.8})
    r = collect(tmp_path, ["s3ft"], [0, 1], before, {})
    assert [c["seed"] for c in r["cells"]] == [0] and r["summary"][0]["n_seeds"] == 1


def test_gather_needs_a_grid_directory(tmp_path):
    from ray_s3ft.experiments.compare import run_grid

    with pytest.raises(ConfigError, match="has no eval_before.json or targets.jsonl: not a grid"):
        run_grid(None, [], ["base", "s3ft"], [0], tmp_path, gather=True)


def test_method_and_seed_lists_are_checked():
    assert parse_list("sft_gold, sasr", "methods", METHODS) == ["sft_gold", "sasr"]
    with pytest.raises(ConfigError, match="unknown sasrr; allowed: base, sft_gold"):
        parse_list("sasrr", "methods", METHODS)
    with pytest.raises(ConfigError, match="listed twice"):
        parse_list("0,0", "seeds")


def test_every_method_is_a_valid_config():
    from ray_s3ft.config import load_config

    for _, overrides in METHODS.values():
        load_config(overrides=overrides)  # raises ConfigError naming the key


def test_methods_only_change_what_a_cell_may_change():
    from ray_s3ft.experiments.methods import CELL_KEYS

    for name, (_, overrides) in METHODS.items():
        assert all(o.startswith(CELL_KEYS) for o in overrides), name


@pytest.mark.slow
def test_compare_smoke_grid_then_report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cmp")  # short: Ray's socket paths must fit 107 bytes
    out = tmp_path / "grid"
    env = dict(os.environ, VLLM_CACHE_ROOT=str(tmp_path / "vllm-cache"), TMPDIR=str(tmp_path))
    env.pop("RAY_ADDRESS", None)
    small = [
        "data.train_size=32", "eval.task_size=24", "eval.heldout_size=8", "eval.every=2",
        "trainer.max_steps=4", "trainer.checkpoint_every=4", "schedule.warmup_steps=2",
        "learner.lr=3e-4",
        # the grid tracked: an MLflow parent run with a child per cell, a W&B group offline
        "trainer.loggers=[tensorboard,mlflow,wandb]", "trainer.wandb.mode=offline",
        f"trainer.mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]  # fmt: skip
    # s3ft and sasr share their first two steps (SFT on the same S3FT batches, same seed): equal
    # losses there prove the learners were reset to the base weights between the cells
    cmd = [sys.executable, "-m", "ray_s3ft.cli", "compare", "--methods", "base,s3ft,sasr"]
    r = subprocess.run(
        [*cmd, "--seeds", "0", "--out", str(out), *small],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    res = json.loads((out / "results.json").read_text())
    assert [(c["method"], c["seed"]) for c in res["cells"]] == [
        ("base", 0), ("s3ft", 0), ("sasr", 0)
    ]  # fmt: skip
    rows = {}
    for cell in ("s3ft-s0", "sasr-s0"):
        d = out / "cells" / cell
        summary = json.loads((d / "summary.json").read_text())
        got = next(c for c in res["cells"] if f"{c['method']}-s{c['seed']}" == cell)
        assert got["task_accuracy"] == summary["accuracy_after"]["task"]["accuracy"]
        assert got["sft_steps"] + got["grpo_steps"] == 4
        rows[cell] = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        # in-loop evaluation every 2 steps
        assert [x["step"] for x in rows[cell] if "eval/task_accuracy" in x] == [1, 3]
        assert (d / "checkpoints" / "step_4" / "hf" / "config.json").exists()
    for a, b in zip(rows["s3ft-s0"][:2], rows["sasr-s0"][:2], strict=True):
        assert a["mode"] == b["mode"] == "sft"
        assert a["learner/loss"] == pytest.approx(b["learner/loss"], rel=1e-5)
    assert rows["s3ft-s0"][0]["learner/loss"] != pytest.approx(rows["s3ft-s0"][1]["learner/loss"])
    _check_tracked_grid(tmp_path, out, rows)
    md = (out / "results.md").read_text()
    assert "| sasr |" in md and "| s3ft |" in md and "compare --methods base,s3ft,sasr" in md
    # a second call finds every cell done: nothing retrains
    before = (out / "cells" / "sasr-s0" / "summary.json").stat().st_mtime_ns
    r = subprocess.run(
        [*cmd, "--seeds", "0", "--out", str(out), *small],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    assert "2 cells (2 done)" in r.stdout
    assert (out / "cells" / "sasr-s0" / "summary.json").stat().st_mtime_ns == before
    # --gather over more methods and seeds than ran: the finished cells' tables, nothing trained
    r = subprocess.run(
        [sys.executable, "-m", "ray_s3ft.cli", "compare", "--methods", "base,sft_gold,s3ft,sasr",
         "--seeds", "0,1", "--out", str(out), "--gather", *small],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    assert "6 cells (2 done)" in r.stdout and "2 finished cells, nothing trained" in r.stdout
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["s3ft-s0", "sasr-s0"]
    gathered = json.loads((out / "results.json").read_text())
    assert gathered["cells"] == res["cells"] and gathered["command"].endswith(
        "--gather " + " ".join(small)
    )
    # the report over the grid: one row per cell with its numbers
    r = subprocess.run(
        [sys.executable, "-m", "ray_s3ft.cli", "report", str(out), "--out", str(tmp_path / "rep")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    report = (tmp_path / "rep" / "report.md").read_text()
    for cell in ("s3ft-s0", "sasr-s0"):
        acc = json.loads((out / "cells" / cell / "summary.json").read_text())["accuracy_after"]
        assert cell in report and f"{100 * acc['task']['accuracy']:.1f} %" in report
    for png in ("accuracy", "loss_reward", "schedule", "gate_signals", "targets"):
        assert (tmp_path / "rep" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _check_tracked_grid(tmp_path: Path, out: Path, rows: dict) -> None:
    """What the trackers got from the grid: MLflow (read back with MlflowClient) and W&B
    (its offline files)."""
    from _wandb_offline import read_run
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
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


def test_step_worth_recovers_what_each_step_was_worth_by_hand():
    from ray_s3ft.experiments.results import step_worth

    def run(modes, accs):  # eval after every second step
        rows = []
        for i, m in enumerate(modes):
            row = {"step": i, "mode": m}
            if i % 2 == 1:
                row["eval/task_accuracy"] = accs[i // 2]
            rows.append(row)
        return rows, {"task": {"accuracy": 0.5}, "heldout_mean": 0.8}

    # steps 0-2: an SFT step is worth +0.10, a GRPO step +0.02; steps 2-4: -0.01 and +0.03
    runs = [
        run(["sft", "sft", "sft", "sft"], [0.70, 0.68]),
        run(["grpo", "grpo", "grpo", "grpo"], [0.54, 0.60]),
        run(["sft", "grpo", "grpo", "sft"], [0.62, 0.64]),
    ]
    first, second = step_worth(runs)
    assert (first["start"], first["end"], first["cells"]) == (0, 2, 3)
    assert first["sft"] == pytest.approx(0.10) and first["grpo"] == pytest.approx(0.02)
    assert second["sft"] == pytest.approx(-0.01) and second["grpo"] == pytest.approx(0.03)
    assert first["sft_se"] == pytest.approx(0.0, abs=1e-9)  # an exact fit
    # one mix only: a and b cannot be told apart, the segment is left out
    assert step_worth([runs[0]] * 3) == []
