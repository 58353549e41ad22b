"""Every shipped config runs, end to end, on a real pretrained model on this CPU machine.

Each config in ``configs/`` is trained as written (or shown to run nothing a trained one does
not, below), with only what this machine cannot give replaced: the model (SmolLM2-135M-Instruct, fetched through the package index), the data (local
GSM8K-format, MBPP-format and NQ-format rows instead of hub data sets), the devices (CPU actors,
fp32) and the sizes (a few examples and steps). Its task, prompt, judge, LoRA, ZeRO stage,
gradient checkpointing and schedule stay the config's own. Every phase runs: startup, eval,
the S3FT store, SFT and GRPO steps, the checkpoint and the eval after.

A config is trained here unless every one of its settings, as this test runs it, is what a
config trained here (or the grid's smoke run, ``test_real_model_grid``) runs with: numbers that
pick no code path (learning rates, temperatures, batch and memory sizes, paths, prompt texts)
aside. Three of the nine are covered that way (``COVERED``);
``test_a_config_not_trained_here_runs_nothing_new`` checks it key by key, so a config that
gains a setting of its own fails there until it is trained here. A run costs 1.5 minutes on a 2-core machine.

The runs share one local Ray cluster (started as ``ray-s3ft train`` starts its own) and run in
this process through ``ray_s3ft.run.train.train``, the function the CLI calls: a new Ray and a
new interpreter per config would cost 15-20 s each and test nothing more (``test_train_e2e``
runs the CLI end to end).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WORDPROBLEMS = ROOT / "ray_s3ft" / "assets" / "data" / "wordproblems"
# what a CPU machine can run: one engine, one judge, small budgets, fp32; the engine and the
# learner each take both cores while the other waits (a synchronous run)
CPU = [
    "model.dtype=float32", "rollout.dtype=float32", "learner.bf16=false",
    "model.max_model_len=640", "data.max_prompt_tokens=320", "data.max_response_tokens=64",
    "rollout.max_new_tokens=48", "eval.max_new_tokens=48", "rollout.enforce_eager=true",
    "rollout.kv_cache_gib=1", "rollout.threads=0", "judge.batch_size=64",
    "data.train_size=4", "eval.task_size=2", "eval.heldout=[]", "eval.lm_eval_tasks=[]",
    "eval.drift_size=2", "eval.every=0", "eval.backend=vllm",
    "resources.rollout_workers=1", "resources.judge_workers=1", "resources.learner_ranks=1",
    "resources.cpus_per_rollout=1", "resources.gpus_per_rollout=0",
    "resources.cpus_per_judge=0.5", "resources.gpus_per_judge=0",
    "resources.cpus_per_learner=2", "resources.gpus_per_learner=0",
    "learner.micro_batch_size=2", "trainer.sft_batch_size=4", "trainer.grpo_prompts_per_step=2",
    "algorithm.grpo.group_size=2", "trainer.max_steps=2", "schedule.warmup_steps=1",
    "trainer.checkpoint_every=100",
]  # fmt: skip

MBPP_ROWS = [
    {"text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
     "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]},
    {"text": "Write a function to return the square of a number.",
     "code": "def square(x):\n    return x * x",
     "test_list": ["assert square(3) == 9", "assert square(-2) == 4"]},
    {"text": "Write a function to return the larger of two numbers.",
     "code": "def larger(a, b):\n    return a if a > b else b",
     "test_list": ["assert larger(3, 5) == 5", "assert larger(7, 2) == 7"]},
    {"text": "Write a function to reverse a string.", "code": "def rev(s):\n    return s[::-1]",
     "test_list": ["assert rev('abc') == 'cba'", "assert rev('') == ''"]},
    # eval rows: a run must not evaluate on what it trains on (tasks/overlap.py)
    {"text": "Write a function to double a number.", "code": "def double(x):\n    return 2 * x",
     "test_list": ["assert double(3) == 6", "assert double(0) == 0"]},
    {"text": "Write a function to negate a number.", "code": "def neg(x):\n    return -x",
     "test_list": ["assert neg(3) == -3", "assert neg(-1) == 1"]},
]  # fmt: skip
NQ_ROWS = [
    {"question": "What is the capital of France?", "answer": ["Paris"]},
    {"question": "How many legs does a spider have?", "answer": ["eight", "8"]},
    {"question": "What colour is the sky on a clear day?", "answer": ["blue"]},
    {"question": "Which planet do we live on?", "answer": ["Earth"]},
    # eval rows
    {"question": "What is the largest ocean on Earth?", "answer": ["Pacific", "Pacific Ocean"]},
    {"question": "How many days are in a week?", "answer": ["seven", "7"]},
]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _data(tmp: Path, task: str) -> list[str]:
    if task == "gsm8k":
        train, test = WORDPROBLEMS / "train.jsonl", WORDPROBLEMS / "test.jsonl"
    else:
        rows = MBPP_ROWS if task == "mbpp" else NQ_ROWS  # 4 to train on, 2 to evaluate
        train = _write(tmp / f"{task}-train.jsonl", rows[:4])
        test = _write(tmp / f"{task}-test.jsonl", rows[4:])
    return [f"data.train_path={train}", f"data.eval_path={test}"]


def _without_pad_token(model_dir: str, tmp: Path) -> str:
    """The model with a tokenizer that has no pad token, as Mistral's and Llama's."""
    out = tmp / "no-pad-model"
    out.mkdir()
    for f in Path(model_dir).iterdir():
        if f.name not in ("tokenizer_config.json", "config.json", "generation_config.json"):
            (out / f.name).symlink_to(f)
    for name, key in (
        ("tokenizer_config.json", "pad_token"),
        ("config.json", "pad_token_id"),
        ("generation_config.json", "pad_token_id"),
    ):
        d = json.loads((Path(model_dir) / name).read_text())
        d.pop(key, None)
        (out / name).write_text(json.dumps(d))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).pad_token_id is None
    return str(out)


# config -> (its file, the data it reads, whether its tokenizer lacks a pad token)
CONFIGS = {
    "qwen-0.5b-mbpp": ("configs/qwen2.5-coder-0.5b-mbpp.yaml", "mbpp", False),
    "qwen-0.5b-nq": ("configs/qwen2.5-coder-0.5b-nq.yaml", "nq", False),
    "qwen-gsm8k-sasr": ("configs/gpu/qwen2.5-0.5b-gsm8k-sasr.yaml", "gsm8k", False),
    "mistral-gsm8k": ("configs/gpu/s3ft-paper-mistral7b-gsm8k.yaml", "gsm8k", True),
    "mistral-nq": ("configs/gpu/s3ft-paper-mistral7b-nq.yaml", "nq", False),
}
# not trained here: each of their settings is trained by a run above or the grid's smoke run
COVERED = {
    "smollm2-135m-gsm8k": ("configs/smollm2-135m-gsm8k.yaml", "gsm8k", False),
    "qwen-0.5b-gsm8k": ("configs/qwen2.5-coder-0.5b-gsm8k.yaml", "gsm8k", False),
    "mistral-mbpp": ("configs/gpu/s3ft-paper-mistral7b-mbpp.yaml", "mbpp", False),
}
# settings that are numbers, paths or prompt texts, which select no code path; eval.choice_target
# only acts on held-out sets, which these runs do not have (eval.heldout=[]), and
# judge.llm_model "base" is the model under test
NUMBERS = {
    "data.prompt_template", "data.paraphrase_template",
    "learner.lr", "learner.grpo_lr", "rollout.temperature", "rollout.gpu_memory_utilization",
    "eval.batch_size", "eval.heldout_size", "eval.choice_target", "judge.sandbox_memory_mb",
    "judge.llm_model", "trainer.keep_checkpoints", "data.train_path", "data.eval_path",
    "trainer.output_dir", "eval.output_dir",
}  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray for the module, as ``ray-s3ft train`` starts it (``start_ray``)."""
    from ray_s3ft.config import load_config
    from ray_s3ft.run.cluster import start_ray

    tmp = tmp_path_factory.mktemp("cfg-ray")
    local = start_ray(load_config(overrides=CPU), tmp)
    assert local is not None  # this module started it
    yield
    local.stop()


def test_every_shipped_config_is_covered():
    from test_real_model_grid import GRID  # the grid config: its own smoke run

    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")}
    covered = {path for path, _, _ in (CONFIGS | COVERED).values()} | {GRID}
    assert shipped - {"configs/default.yaml"} == covered


def _settings(path: str, overrides: list[str], pad: bool = True) -> dict[str, str]:
    """Every setting of a config as a run gets it (the judge's "auto" resolved), flattened."""
    import dataclasses

    from ray_s3ft.config import load_config
    from ray_s3ft.config.schema import resolved_judge
    from ray_s3ft.run.fingerprint import flatten

    cfg = load_config(ROOT / path, ["model.path=model", *overrides])
    cfg = dataclasses.replace(cfg, judge=resolved_judge(cfg))
    flat = flatten(dataclasses.asdict(cfg)) | {"tokenizer.pad": pad}
    return {key: repr(value) for key, value in flat.items()}


def _untrained(path: str, task: str, no_pad: bool, tmp: Path, *extra: str) -> dict[str, str]:
    """The settings of a config, run as this module runs it, that no trained run has."""
    from test_real_model_grid import GRID, TINY

    def run(path, task, no_pad, *extra):
        return _settings(path, [*CPU, *_data(tmp, task), *extra], pad=not no_pad)

    trained = [run(*CONFIGS[n]) for n in CONFIGS] + [_settings(GRID, TINY)]
    mine = run(path, task, no_pad, *extra)
    return {k: v for k, v in mine.items() if k not in NUMBERS and all(t[k] != v for t in trained)}


@pytest.mark.parametrize("name", COVERED)
def test_a_config_not_trained_here_runs_nothing_new(name, tmp_path):
    new = _untrained(*COVERED[name], tmp_path)
    assert not new, f"{name} has settings no trained run has: train it here ({new})"


def test_the_coverage_rule_sees_a_setting_of_its_own(tmp_path):
    """The check above can fail: a covered config at ZeRO stage 3, which no run here trains."""
    new = _untrained(*COVERED["mistral-mbpp"], tmp_path, "learner.zero_stage=3")
    assert new == {"learner.zero_stage": "3"}


@pytest.mark.parametrize("name", CONFIGS)
def test_a_shipped_config_trains_the_real_model(name, smollm2_dir, tmp_path, cluster, capfd):
    from ray_s3ft.config import load_config
    from ray_s3ft.run.train import train

    path, task, no_pad = CONFIGS[name]
    model = _without_pad_token(smollm2_dir, tmp_path) if no_pad else smollm2_dir
    out = tmp_path / "run"
    overrides = [
        f"model.path={model}", *CPU, *_data(tmp_path, task),
        f"trainer.output_dir={out}", f"eval.output_dir={out / 'eval'}",
    ]  # fmt: skip
    cfg = load_config(ROOT / path, overrides)
    returned = train(cfg)
    console = capfd.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert returned["checkpoint"] == summary["checkpoint"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1]
    if cfg.schedule.kind == "sft":
        assert summary["steps"] == {"sft": 2, "grpo": 0}
    else:  # the warm-up step, then the gate at p_sft 0.5 (a seeded draw: this run takes GRPO)
        assert [row["mode"] for row in rows] == ["sft", "grpo"]
        grpo = summary["grpo"]
        assert grpo["samples"] == 4
        assert 0 <= grpo["mean_reward"] <= 1 and 0 <= grpo["undecided"] <= grpo["samples"]
    # the judge this task needs ruled on the store; its undecided verdicts are counted
    meta = json.loads((out / "targets.meta.json").read_text())
    # the task's judge; the Qwen NQ profile judges by normalised exact match instead
    verifier = {"gsm8k": "math", "mbpp": "code", "nq": "llm"}[task]
    assert meta["judge"]["verifier"] == ("nq_match" if name == "qwen-0.5b-nq" else verifier)
    store = [json.loads(x) for x in (out / "targets.jsonl").read_text().splitlines()]
    assert len(store) == 4
    und = summary["targets_undecided"]
    assert und["self"] == sum(rec["self_ok"] is None for rec in store)
    assert sum(rec["self_ok"] is not None for rec in store) >= 1  # the judge decided something
    for key in ("accuracy_before", "accuracy_after"):
        assert summary[key]["task"]["n"] == 2
    assert "Solve the following math problem" in store[0]["prompt"] or task != "gsm8k"
    hf = Path(summary["checkpoint"]) / "hf"
    assert (hf / "config.json").is_file() and (hf / "model.safetensors").is_file()
    if cfg.model.lora.enabled:
        assert "lora" not in (hf / "model.safetensors").read_bytes()[:200_000].decode("latin-1")
    assert "Traceback" not in console.out + console.err
