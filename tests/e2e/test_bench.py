"""Smoke runs of the benchmarks in ``bench/`` (BENCHMARKS.md): each runs end to end at tiny
sizes and writes its result with finite, positive figures. No timing is asserted; what is
asserted is that both sides of a comparison did the same work."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _smoke(name: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # private clusters
    r = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == name
    assert result["machine"]["cpus"] >= 1 and result["machine"]["torch"]
    assert result["rows"]
    for row in result["rows"]:
        for key in ("figure", "baseline", "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, row
        assert row["met"] in (True, False, None)
    return result


def test_rollout(tmp_path):
    result = _smoke("rollout", tmp_path)
    for size in result["details"].values():
        assert size["same_tokens"]  # actor and direct engine sampled the same tokens
        assert size["actor"]["tokens"] == size["vllm"]["tokens"]
        assert all(t > 0 for t in size["hf"]["tokens"])  # transformers.generate's baseline


def test_learner(tmp_path):
    d = _smoke("learner", tmp_path)["details"]
    bare = d["bare"]["1"]["losses"]
    for ours in d["ours"].values():  # the same steps: the same losses
        assert ours["losses"] == pytest.approx(bare, rel=1e-4)
    assert d["bare_with_reference"]["losses"] == pytest.approx(bare, rel=1e-6)


def test_weight_sync(tmp_path):
    d = _smoke("weight_sync", tmp_path)["details"]["tiny"]
    assert d["copy"]["bytes"] > 0
    # before and after the weights went as numpy views, then through the name map
    for how, loaded_by in (
        ("torch", "vllm_reload"),
        ("numpy", "vllm_reload"),
        ("name_map", "name_map"),
    ):
        s = d[how]
        assert len(s["sync_s"]) == len(s["learner_side_s"]) == len(s["engine_side_s"]) >= 1
        assert s["loaded_by"] == loaded_by, how


def test_e2e_trl(tmp_path):
    # builds TRL's virtual environment on first use (about a minute with pip's cache warm)
    d = _smoke("e2e_trl", tmp_path)["details"]
    assert len(d["ours"]["step_s"]) == len(d["trl"]["step_s"]) >= 1
    assert all(t > 0 for t in d["ours"]["tokens"] + d["trl"]["tokens"])


def test_startup(tmp_path):
    run = _smoke("startup", tmp_path)["details"]["runs"]["fresh"][0]
    assert 0 < run["phases_s"]["startup"] < run["to_first_step_s"] < run["total_s"]


def test_step_anatomy(tmp_path):
    d = _smoke("step_anatomy", tmp_path)["details"]
    # the asynchronous run prefetched; the synchronous one synced and sampled inside its steps
    assert d["sync"]["phases_s"]["prefetch"] == 0 < d["async"]["phases_s"]["prefetch"]
    assert d["sync"]["phases_s"]["sync"] > 0


def test_bf16(tmp_path):
    d = _smoke("bf16", tmp_path)["details"]
    cells = d["cells"]
    assert set(cells) == {"fp32_full", "bf16_full", "fp32_lora", "bf16_lora"}
    # the same first batch, before any update: the same loss, up to bf16 rounding
    first = {name: c["losses"][0] for name, c in cells.items()}
    assert first["fp32_lora"] == pytest.approx(first["fp32_full"], rel=1e-5)  # lora_B = 0
    assert first["bf16_full"] == pytest.approx(first["fp32_full"], rel=2e-2)
    assert first["bf16_lora"] == pytest.approx(first["bf16_full"], rel=1e-3)
    assert cells["fp32_lora"]["trainable_params"] < cells["fp32_full"]["trainable_params"] / 10
    # the roofline: LoRA's step has 4/6 of full fine-tuning's dense FLOPs, the same attention
    full, lora = cells["fp32_full"]["step_flops"], cells["fp32_lora"]["step_flops"]
    assert 4 / 6 < lora / full < 1
    assert d["matmul"]["float32"]["flops_per_s"] > 0 and d["matmul"]["bfloat16"]["flops_per_s"] > 0
