"""The real-model grid (``configs/smollm2-135m-grid.yaml``, ``docs/results/real-model.md``) as
a smoke run: SmolLM2-135M-Instruct, two trained methods and the base, one seed, two steps, with
the grid's own held-out suites (MMLU by log-likelihood, HumanEval pass@1, the drift KL) at tiny
sizes. Its report must hold the numbers of the run's own cells."""

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
    "eval.every=1", "eval.every_size=4", "rollout.max_new_tokens=32", "eval.max_new_tokens=32",
    "rollout.enforce_eager=true", "resources.learner_ranks=1", "learner.micro_batch_size=2",
    "trainer.sft_batch_size=4", "trainer.grpo_prompts_per_step=1", "algorithm.grpo.group_size=2",
    "trainer.max_steps=2", "schedule.warmup_steps=1", "trainer.checkpoint_every=100",
]  # fmt: skip


def test_real_model_grid_smoke_report_holds_the_cells_numbers(smollm2_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rgrid")  # short: Ray's socket paths must fit 107 bytes
    out = tmp / "grid"
    env = dict(os.environ, VLLM_CACHE_ROOT=str(tmp / "vllm-cache"), TMPDIR=str(tmp))
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        [sys.executable, "-m", "ray_s3ft.cli", "compare", "--config", str(ROOT / GRID),
         "--methods", "base,s3ft,sasr", "--seeds", "0", "--out", str(out),
         f"model.path={smollm2_dir}", *TINY],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    res = json.loads((out / "results.json").read_text())
    before = json.loads((out / "eval_before.json").read_text())
    assert before["mmlu"]["n"] == 8 and before["humaneval"]["n"] == 8
    assert before["drift"]["n"] == 4
    md = (out / "results.md").read_text()
    for cell in ("s3ft-s0", "sasr-s0"):
        summary = json.loads((out / "cells" / cell / "summary.json").read_text())
        got = next(c for c in res["cells"] if f"{c['method']}-s{c['seed']}" == cell)
        after = summary["accuracy_after"]
        assert got["task_accuracy"] == after["task"]["accuracy"]
        assert got["heldout"]["mmlu"] == after["mmlu"]["accuracy"]
        assert got["heldout"]["humaneval"] == after["humaneval"]["accuracy"]
        assert got["sft_steps"] + got["grpo_steps"] == 2
        rows = [
            json.loads(x) for x in (out / "cells" / cell / "metrics.jsonl").read_text().splitlines()
        ]
        assert [x["step"] for x in rows if "eval/task_accuracy" in x] == [0, 1]
    for method in ("| base |", "| s3ft |", "| sasr |"):
        assert method in md
    s3ft = next(m for m in res["summary"] if m["method"] == "s3ft")
    assert f"{100 * s3ft['task_accuracy']['mean']:.1f}" in md
