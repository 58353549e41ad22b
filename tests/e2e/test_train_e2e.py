"""``ray-s3ft`` end to end on a private local Ray cluster with the real stack: a vLLM rollout
engine, judge workers, two DeepSpeed ZeRO-2 learner ranks and the SASR controller.

One module-scoped run, commands as a user would type them:
  1. ``build-targets`` on a 48-example slice          -> the S3FT store, all three sources
  2. ``train`` (8 steps, sasr) in the same directory  -> reuses the store, checkpoints at 4 and 8
  3. ``train trainer.max_steps=10``                   -> resumes from step 8, runs steps 8-9
  4. a crash in the middle of run 2, made from a copy of its directory as the crash would have
     left it: the step-4 checkpoint, a step-6 checkpoint cut short (no ``trainer_state.json``:
     a save that died), the rows of steps 0-5 (those of 4 and 5 marked, to show they are
     dropped), no step-8 checkpoint and no summary; then ``train`` -> resumes from step 4 and
     repeats run 2 exactly: the same sampled tokens, the same losses

While 3 and 4 run, a fresh vLLM process decodes run 2's step-8 checkpoint; transformers must
decode it the same.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _procs import kill_running, start, succeeded

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
SMALL = [
    "data.train_size=48",
    "eval.task_size=32",
    "eval.heldout_size=16",
    "trainer.max_steps=8",
    "trainer.checkpoint_every=4",
    "schedule.warmup_steps=2",
    "schedule.sasr.probe_every=1",
    "learner.lr=3e-4",
]
REQUIRED = [
    "step", "mode", "sasr/p_sft", "sasr/grad_norm", "sasr/kl", "targets/self_frac",
    "targets/para_frac", "targets/gold_frac", "learner/loss", "learner/grad_norm", "learner/kl",
    "reward/mean", "reward/zero_std_groups", "rollout/tokens_per_s", "weights/version",
    "timing/batch", "timing/sync", "timing/rollout", "timing/judge", "timing/train",
    "timing/probe", "timing/checkpoint", "timing/step",
]  # fmt: skip


def _cli(tmp, *args):
    env = dict(os.environ, TMPDIR=str(tmp))
    env.pop("RAY_ADDRESS", None)  # a private cluster, whatever the caller's shell says
    r = subprocess.run(
        [sys.executable, "-m", "ray_s3ft.cli", *args],
        capture_output=True, text=True, env=env, cwd=tmp, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


STALE = -1.0  # the loss written into the rows of the steps after the checkpoint a crash left


def _crashed_at_step_6(run_dir: Path, cut: Path) -> Path:
    """A copy of a finished 8-step run as a crash during step 6's checkpoint leaves it."""
    done = ("summary.json", "eval_after.json", "tracking.json", ".ray")  # of a finished run
    shutil.copytree(run_dir, cut, ignore=shutil.ignore_patterns(*done))
    shutil.rmtree(cut / "checkpoints" / "step_8")
    half = cut / "checkpoints" / "step_6"  # what a crash in the middle of a save leaves
    shutil.copytree(cut / "checkpoints" / "step_4" / "deepspeed", half / "deepspeed")
    rows = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()][:6]
    for row in rows[4:]:  # written after the checkpoint: the resumed run must replace them
        row["learner/loss"] = STALE
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cut


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    out = tmp / "run"
    common = [  # tracked by MLflow: the resumed run continues the same MLflow run
        *SMALL, f"trainer.output_dir={out}", "trainer.loggers=[tensorboard,mlflow]",
        f"trainer.mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
    ]  # fmt: skip
    _cli(tmp, "build-targets", *common)
    store = out / "targets.jsonl"
    built = {"mtime": store.stat().st_mtime_ns, "records": store.read_text()}
    first = _cli(tmp, "train", *common)
    summary_1 = json.loads((out / "summary.json").read_text())
    metrics_1 = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # a fresh vLLM engine decodes the step-8 checkpoint while the resumed runs go (one engine
    # more than a run's: within this machine's two engines and two ranks)
    fresh = _fresh_vllm_greedy(out / "checkpoints" / "step_8" / "hf", built, tmp / "parity")
    try:
        cut = _crashed_at_step_6(out, tmp / "cut")
        resumed = _cli(tmp, "train", *common, "trainer.max_steps=10")
        second_half = _cli(tmp, "train", *SMALL, f"trainer.output_dir={cut}")
        yield {
            "dir": out, "tmp": tmp, "built": built, "first": first, "resumed": resumed,
            "summary_1": summary_1, "metrics_1": metrics_1, "cut": cut,
            "second_half": second_half, "fresh_vllm": fresh,
        }  # fmt: skip
    finally:
        kill_running([fresh["proc"]])


def _fresh_vllm_greedy(ckpt: Path, built: dict, work: Path) -> dict:
    """Start a fresh vLLM process decoding 12 of the store's prompts greedily from ``ckpt``
    (``_vllm_greedy.py``): its process, the prompts' token ids and where it writes."""
    from transformers import AutoTokenizer

    from ray_s3ft.model.encoding import render_prompt

    tok = AutoTokenizer.from_pretrained(ckpt)
    prompts = [json.loads(x)["prompt"] for x in built["records"].splitlines()[:12]]
    ids = [tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
    work.mkdir()
    (work / "prompts.json").write_text(json.dumps(ids))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, str(HERE / "_vllm_greedy.py"), str(ckpt), str(work / "out.json")]
    proc = start(cmd, work / "vllm.log", env=env)
    return {"proc": proc, "ckpt": ckpt, "ids": ids, "work": work}


def _records(run):
    return [json.loads(x) for x in run["built"]["records"].splitlines()]


def test_target_phase_gives_all_three_sources_and_is_reused(run):
    from ray_s3ft.run.target_store import TargetRecord

    records = [TargetRecord(**r) for r in _records(run)]
    assert len(records) == 48
    sources = {r.target("s3ft").source.value for r in records}
    assert sources == {"self", "paraphrase", "gold"}
    # both training runs reused the store: not rebuilt, not even rewritten
    store = run["dir"] / "targets.jsonl"
    assert store.stat().st_mtime_ns == run["built"]["mtime"]
    assert run["summary_1"]["targets_reused"] is True
    assert "0 built, 48 reused" in run["first"].stdout
    # 96 new tokens at most (+ the end token) fit data.max_response_tokens 128: nothing passed
    # over; the built-in task's data has no file row to skip
    assert run["summary_1"]["targets_too_long"] == {"self": 0, "paraphrase": 0}
    assert run["summary_1"]["data_too_long"] == {"prompt": 0, "gold": 0}


def test_build_targets_sdft_paraphrases_every_gold_and_asks_for_no_self_answer(tmp_path):
    from ray_s3ft.run.target_store import TargetRecord

    out = tmp_path / "sdft"
    args = ["data.train_size=8", "algorithm.targets=sdft", f"trainer.output_dir={out}"]
    built = _cli(tmp_path, "build-targets", *args)
    records = [
        TargetRecord(**json.loads(x)) for x in (out / "targets.jsonl").read_text().splitlines()
    ]
    assert len(records) == 8
    assert all(r.self_response is None and r.paraphrase is not None for r in records)
    assert json.loads((out / "targets.meta.json").read_text())["mode"] == "sdft"
    # accepted and ended: the target (96 new tokens at most fit the response budget of 128)
    accepted = sum(r.paraphrase_ok is True and r.paraphrase_finished for r in records)
    assert sum(r.target("sdft").source.value == "paraphrase" for r in records) == accepted
    said = " ".join(built.stdout.split())  # the console wraps the line
    assert f"self 0.0%, paraphrase {accepted / 8:.1%}, gold {1 - accepted / 8:.1%}" in said


def test_each_questions_verdict_is_kept_beside_the_scores_with_their_fingerprint(run):
    from ray_s3ft.evaluation.scoring import heldout_sets

    out = run["dir"]
    for name in ("eval_before", "eval_after"):
        scores = json.loads((out / f"{name}.json").read_text())
        items = [json.loads(x) for x in (out / f"{name}.items.jsonl").read_text().splitlines()]
        for s in ["task", *heldout_sets(scores)]:
            got = [i for i in items if i["set"] == s]
            assert len(got) == scores[s]["n"], (name, s)
            assert sum(i["correct"] is True for i in got) == scores[s]["correct"], (name, s)
    fingerprint = json.loads((out / "eval_before.fingerprint.json").read_text())
    assert fingerprint["eval.task_size"] == 32 and fingerprint["model"]["name"] == "builtin"
    meta = json.loads((out / "targets.meta.json").read_text())
    assert meta["model"] == fingerprint["model"]  # the store's model: the same identity


def test_every_step_logs_the_required_keys_with_finite_values(run):
    rows = run["metrics_1"]
    assert [r["step"] for r in rows] == list(range(8))
    for row in rows:
        missing = [k for k in REQUIRED if k not in row]
        assert not missing, (row["step"], missing)
        # KL is measured on GRPO steps (learner.sft_kl is off): null on SFT rows
        skip = {"mode"} | ({"learner/kl"} if row["mode"] == "sft" else set())
        bad = [k for k in REQUIRED if k not in skip and not math.isfinite(row[k])]
        assert not bad, (row["step"], bad)
        assert row["mode"] == "grpo" or row["learner/kl"] is None
    modes = [r["mode"] for r in rows]
    assert modes[:2] == ["sft", "sft"]  # warm-up
    assert "grpo" in modes and "sft" in modes[2:], modes  # SASR took both kinds after it
    assert [r["weights/version"] for r in rows] == list(range(1, 9))
    assert any(r["sasr/probe"] == 1.0 for r in rows)
    assert list((run["dir"] / "tensorboard").iterdir())
    assert run["summary_1"]["steps"]["sft"] + run["summary_1"]["steps"]["grpo"] == 8


def test_grpo_steps_score_the_vllm_samples_with_matching_logprobs(run):
    synced = [r for r in run["metrics_1"] if r["mode"] == "grpo"]
    assert synced and all(r["weights/engine_version"] == r["weights/version"] - 1 for r in synced)
    # the engine had the learner's weights: per-token logprobs agree (test_distributed_roles.py
    # measures the tolerance and shows a stale engine fails it)
    assert all(r["rollout/logprob_max_diff"] < 1e-4 for r in synced), synced


def _nll(model_dir, tokenizer, records):
    from transformers import AutoModelForCausalLM

    from ray_s3ft.algo.losses import masked_nll, token_logprobs
    from ray_s3ft.workers.batches import sft_batch

    targets = [r.target("s3ft").text for r in records]
    b = sft_batch(tokenizer, [r.prompt for r in records], targets, 512)
    m = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        logits = m(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]
        return masked_nll(token_logprobs(logits, b.input_ids[:, 1:]), b.loss_mask[:, 1:]).item()


def test_parameters_changed_and_sft_loss_on_a_fixed_batch_fell(run):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from ray_s3ft.model.paths import resolve_model_path
    from ray_s3ft.run.target_store import TargetRecord

    base = resolve_model_path("builtin")
    final = run["dir"] / "checkpoints" / "step_8" / "hf"
    w0, w1 = load_file(f"{base}/model.safetensors"), load_file(f"{final}/model.safetensors")
    changed = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert len(changed) >= len(w0) - 1, f"only {len(changed)} of {len(w0)} tensors changed"
    tok = AutoTokenizer.from_pretrained(base)
    fixed = [TargetRecord(**r) for r in _records(run)[:16]]
    before, after = _nll(base, tok, fixed), _nll(final, tok, fixed)
    assert after < before - 0.1, (before, after)


def test_checkpoint_generates_the_same_greedy_tokens_in_transformers_and_fresh_vllm(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fresh = run["fresh_vllm"]  # started by the fixture: a fresh vLLM engine on the checkpoint
    tok = AutoTokenizer.from_pretrained(fresh["ckpt"])
    model = AutoModelForCausalLM.from_pretrained(fresh["ckpt"])
    hf_ids = []
    for p in fresh["ids"]:
        out = model.generate(torch.tensor([p]), max_new_tokens=48, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
        hf_ids.append(out[0, len(p) :].tolist())
    succeeded(fresh["proc"], fresh["work"] / "vllm.log", timeout=600)
    vllm_ids = json.loads((fresh["work"] / "out.json").read_text())
    assert hf_ids == vllm_ids


def test_a_restarted_run_resumes_from_its_last_checkpoint(run):
    out = run["dir"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(10))  # steps 8, 9 added, none repeated
    assert rows[:8] == run["metrics_1"]
    assert rows[8]["weights/version"] == 9  # continued from version 8, not from the base
    assert "resumed from" in run["resumed"].stderr and "step_8" in run["resumed"].stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["targets_reused"] is True
    assert (out / "checkpoints" / "step_10" / "trainer_state.json").exists()


def test_the_run_and_its_resume_are_one_mlflow_run_with_every_step_once(run):
    from mlflow import MlflowClient

    out = run["dir"]
    client = MlflowClient(f"sqlite:///{run['tmp'] / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "ray_s3ft"]
    (tracked,) = client.search_runs([exp.experiment_id])
    run_id = tracked.info.run_id
    assert json.loads((out / "tracking.json").read_text())["mlflow"] == run_id
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "run"
    assert tracked.data.params["trainer.max_steps"] == "8"  # the first values are kept
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    loss = client.get_metric_history(run_id, "learner/loss")
    assert [(m.step, m.value) for m in loss] == [
        (r["step"], pytest.approx(r["learner/loss"])) for r in rows
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert tracked.data.tags["checkpoint"] == summary["checkpoint"]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"summary.json", "config.yaml", "targets.meta.json", "accuracy.png"} <= names
    assert {"schedule.png", "eval", "eval_table.json"} <= names
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_a_crash_at_step_6_resumes_from_step_4_and_repeats_the_straight_run_exactly(run):
    straight = run["metrics_1"]
    split = [json.loads(x) for x in (run["cut"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in split] == list(range(8))
    assert split[:4] == straight[:4]  # the rows before the checkpoint kept as they were
    assert all(r["learner/loss"] != STALE for r in split[4:])  # those after it trained again
    # the half-written step_6 was passed over for the last complete checkpoint
    assert "resumed from" in run["second_half"].stderr
    assert f"{run['cut']}/checkpoints/step_4 at step 4" in run["second_half"].stderr
    after_cut = [r["mode"] for r in straight[4:]]
    assert "sft" in after_cut and "grpo" in after_cut, after_cut
    for a, b in zip(straight, split, strict=True):
        assert a["mode"] == b["mode"], a["step"]
        assert abs(a["learner/loss"] - b["learner/loss"]) <= 1e-5, (a["step"], a, b)
        if a["mode"] == "grpo":  # the same sampled token ids, hashed per step
            assert a["rollout/sample_digest"] == b["rollout/sample_digest"], a["step"]
            assert abs(a["learner/pg_loss"] - b["learner/pg_loss"]) <= 1e-5, a["step"]
            assert a["reward/mean"] == b["reward/mean"], a["step"]
