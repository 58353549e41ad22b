"""The typed config: YAML files, overrides, each rejection by its full key, save/load round trip."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ray_s3ft.config import (
    Config,
    ConfigError,
    config_to_yaml,
    load_config,
    resolved_judge,
    save_config,
    validate,
)
from ray_s3ft.config.precision import resolve

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        out |= _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def _error(overrides=(), path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# ------------------------------------------------------------------------------ config files


def test_default_yaml_is_the_builtin_default():
    # load_config resolves "auto" (rollout.tis: stale in fp32); the rest is the schema's
    assert load_config(ROOT / "configs" / "default.yaml") == resolve(Config())
    assert load_config() == resolve(Config())


def test_default_yaml_spells_out_every_key():
    written = _keys(yaml.safe_load((ROOT / "configs" / "default.yaml").read_text()))
    schema = _keys(yaml.safe_load(config_to_yaml(Config())))
    assert written == schema


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_validates(path):
    assert isinstance(load_config(path), Config)


def test_gpu_configs_say_what_their_names_promise():
    qwen = load_config(ROOT / "configs/gpu/qwen2.5-0.5b-gsm8k-sasr.yaml")
    assert (qwen.model.path, qwen.data.task, qwen.schedule.kind) == (
        "Qwen/Qwen2.5-0.5B-Instruct",
        "gsm8k",
        "sasr",
    )
    assert qwen.algorithm.targets == "s3ft" and qwen.algorithm.grpo.group_size == 8
    assert (
        qwen.learner.bf16 and qwen.learner.zero_stage == 2 and qwen.resources.gpus_per_learner == 1
    )
    for task, verifier in (("gsm8k", "math"), ("mbpp", "code"), ("nq", "llm")):
        cfg = load_config(ROOT / f"configs/gpu/s3ft-paper-mistral7b-{task}.yaml")
        assert cfg.model.path == "mistralai/Mistral-7B-Instruct-v0.2"
        lora = cfg.model.lora
        assert (lora.enabled, lora.r, lora.alpha, lora.dropout) == (True, 8, 16, 0.1)
        assert (cfg.data.task, cfg.algorithm.targets, cfg.schedule.kind) == (task, "s3ft", "sft")
        judge = resolved_judge(cfg)
        assert judge.verifier == verifier and judge.llm_model == cfg.model.path


# -------------------------------------------------------------------------------- overrides


def test_overrides_apply_with_their_types_after_the_file():
    cfg = load_config(
        ROOT / "configs/gpu/qwen2.5-0.5b-gsm8k-sasr.yaml",
        [
            "trainer.max_steps=50",
            "learner.lr=3e-6",  # PyYAML reads this as a string; the schema makes it a float
            "eval.heldout=[compare,sort]",
            "model.lora.enabled=true",
            "data.eval_path=null",
            "data.eval_path=openai/gsm8k",  # later overrides win
            "rollout.temperature=1",  # an int where a float is expected
            "schedule.sasr={p_min: 0.1}",  # a mapping merges into its section
        ],
    )
    assert cfg.trainer.max_steps == 50 and type(cfg.trainer.max_steps) is int
    assert cfg.learner.lr == 3e-6 and type(cfg.learner.lr) is float
    assert cfg.eval.heldout == ["compare", "sort"] and type(cfg.eval.heldout) is list
    assert cfg.model.lora.enabled is True
    assert cfg.data.eval_path == "openai/gsm8k"
    assert cfg.rollout.temperature == 1.0 and type(cfg.rollout.temperature) is float
    assert cfg.schedule.sasr.p_min == 0.1 and cfg.schedule.sasr.p_max == 1.0
    assert cfg.model.path == "Qwen/Qwen2.5-0.5B-Instruct"  # untouched by the overrides
    assert type(cfg.learner) is type(Config().learner)  # real dataclasses, not DictConfig


def test_interpolations_resolve():
    cfg = load_config(overrides=["eval.output_dir=${trainer.output_dir}/eval"])
    assert cfg.eval.output_dir == "runs/default/eval"


def test_config_is_frozen_and_sections_travel_alone():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.trainer.max_steps = 3  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(cfg.learner)) == cfg.learner


def test_resolved_judge_fills_auto_and_base():
    judge = resolved_judge(load_config(overrides=["model.path=/models/x"]))
    assert (judge.verifier, judge.llm_model) == ("steps", "/models/x")
    judge = resolved_judge(load_config(overrides=["judge.llm_model=some/judge"]))
    assert judge.llm_model == "some/judge"


def test_importing_config_stays_cheap():
    heavy = ("torch", "ray", "vllm", "deepspeed", "transformers")
    code = f"import sys, ray_s3ft.config; print([m for m in {heavy} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -------------------------------------------------------------------------------- rejections

# (overrides, texts that must all appear in the message); the first text is the full key.
REJECTIONS = [
    # unknown keys: named, with the valid keys of their section
    (["trainer.max_step=5"], ["trainer.max_step", "unknown key", "max_steps", "did you mean"]),
    (["optimizer.lr=1"], ["optimizer", "unknown key", "model, data, rollout"]),
    (["model.lora.rank=4"], ["model.lora.rank", "valid keys of model.lora", "target_modules"]),
    # wrong types: key, value, expected type
    (["trainer.max_steps=abc"], ["trainer.max_steps", "an integer", "'abc'"]),
    (["trainer.max_steps=2.5"], ["trainer.max_steps", "an integer", "2.5"]),
    (["learner.lr=fast"], ["learner.lr", "a number", "'fast'"]),
    # the optimizer's keys moved from trainer to learner: the message says where
    (["trainer.lr=1e-4"], ["trainer.lr: moved to learner.lr"]),
    (["trainer.grpo_lr=null"], ["trainer.grpo_lr: moved to learner.grpo_lr"]),
    (["model.lora.enabled=2"], ["model.lora.enabled", "true or false", "2"]),
    (["eval.heldout=compare"], ["eval.heldout", "a list of strings", "'compare'"]),
    (["eval.heldout=[a, {b: 1}]"], ["eval.heldout", "a list of strings"]),
    (["model.path=null"], ["model.path", "a string", "null"]),
    (["data.train_path=[a]"], ["data.train_path", "a string or null"]),
    (["trainer=5"], ["trainer", "a section with keys max_steps"]),
    (["trainer.max_steps.x=1"], ["trainer.max_steps", "an integer"]),
    (["trainer.max_steps=${learner.lr}"], ["trainer.max_steps", "Integer"]),
    (["trainer.output_dir=${nope}"], ["trainer.output_dir", "nope"]),
    # malformed overrides
    (["trainer.max_steps"], ["trainer.max_steps", "key=value"]),
    (["trainer..max_steps=3"], ["trainer..max_steps", "key=value"]),
    (["=3"], ["'=3'", "key=value"]),
    (["eval.heldout=[a"], ["eval.heldout", "not valid YAML"]),
    # choices list what is allowed
    (["model.dtype=fp32"], ["model.dtype", "float32, bfloat16, float16"]),
    (["data.task=math"], ["data.task", "builtin, gsm8k, mbpp, nq"]),
    (["rollout.backend=sglang"], ["rollout.backend", "vllm, hf"]),
    (["rollout.dtype=int8"], ["rollout.dtype", "float32, bfloat16, float16"]),
    (["judge.verifier=regex"], ["judge.verifier", "auto, steps, math, code, llm"]),
    (["judge.llm_backend=tgi"], ["judge.llm_backend", "vllm, hf"]),
    (["learner.zero_stage=4"], ["learner.zero_stage", "0, 1, 2, 3"]),
    (["learner.backend=mpi"], ["learner.backend", "auto, gloo, nccl"]),
    (["algorithm.targets=self"], ["algorithm.targets", "gold, ssr, s3ft"]),
    (["algorithm.grpo.loss_agg=mean"], ["algorithm.grpo.loss_agg", "grpo, dapo, dr_grpo"]),
    (["schedule.kind=sars"], ["schedule.kind", "sft, grpo, sft_then_grpo, fixed_ratio, sasr"]),
    (["eval.backend=sglang"], ["eval.backend", "hf"]),
    # ranges
    (["trainer.max_steps=0"], ["trainer.max_steps", ">= 1"]),
    (["resources.learner_ranks=0"], ["resources.learner_ranks", ">= 1"]),
    (["data.seed=-1"], ["data.seed", ">= 0"]),
    (["learner.lr=0"], ["learner.lr", "> 0"]),
    (["learner.lr=nan"], ["learner.lr", "finite"]),
    (["learner.lr=.inf"], ["learner.lr", "finite"]),
    (["schedule.p_sft=1.5"], ["schedule.p_sft", "[0, 1]"]),
    (["schedule.sasr.p_max=-0.1"], ["schedule.sasr.p_max", "[0, 1]"]),
    (["schedule.sasr.p_min=0.9", "schedule.sasr.p_max=0.5"], ["schedule.sasr.p_min", "p_max"]),
    (["schedule.sasr.ema_decay=1.0"], ["schedule.sasr.ema_decay", "[0, 1)"]),
    (["schedule.sasr.kl_target=0"], ["schedule.sasr.kl_target", "> 0"]),
    (["schedule.sasr.probe_every=-1"], ["schedule.sasr.probe_every", ">= 0"]),
    (["eval.every=-2"], ["eval.every", ">= 0"]),
    (["learner.grpo_lr=0"], ["learner.grpo_lr", "> 0"]),
    (["algorithm.grpo.eps_low=1.0"], ["algorithm.grpo.eps_low", "[0, 1)"]),
    (["algorithm.grpo.eps_high=0"], ["algorithm.grpo.eps_high", "> 0"]),
    (["algorithm.grpo.beta=-0.01"], ["algorithm.grpo.beta", ">= 0"]),
    (["rollout.top_p=0"], ["rollout.top_p", "(0, 1]"]),
    (["rollout.gpu_memory_utilization=1.2"], ["rollout.gpu_memory_utilization", "(0, 1]"]),
    (["model.lora.r=0"], ["model.lora.r", ">= 1"]),
    (["model.lora.dropout=1"], ["model.lora.dropout", "[0, 1)"]),
    (["model.lora.target_modules=[]"], ["model.lora.target_modules", "at least one"]),
    (["eval.heldout=[sort, sort]"], ["eval.heldout", "distinct"]),
    (["trainer.output_dir=''"], ["trainer.output_dir", "non-empty"]),
    (["judge.sandbox_memory_mb=16"], ["judge.sandbox_memory_mb", ">= 64"]),
    (["judge.sandbox_timeout_s=0"], ["judge.sandbox_timeout_s", "> 0"]),
    (["judge.sandbox_timeout_s=300"], ["judge.timeout_s", "> judge.sandbox_timeout_s (300)"]),
    (["resources.cpus_per_judge=-1"], ["resources.cpus_per_judge", ">= 0"]),
    # the LLM judge
    (["judge.llm_max_new_tokens=0"], ["judge.llm_max_new_tokens", ">= 1"]),
    (["judge.llm_model=''"], ["judge.llm_model", "non-empty"]),
    (["judge.verifier=code"], ["judge.verifier", "data.task=builtin", "math, llm"]),
    # combinations
    (["algorithm.grpo.group_size=1"], ["algorithm.grpo.group_size", ">= 2", "schedule.kind=sasr"]),
    (["rollout.temperature=0"], ["rollout.temperature", "> 0", "schedule.kind=sasr"]),
    (["schedule.warmup_steps=0"], ["schedule.warmup_steps", "[1, trainer.max_steps)"]),
    (
        ["schedule.kind=sft_then_grpo", "schedule.warmup_steps=100"],
        ["schedule.warmup_steps", "100"],
    ),
    (["trainer.sft_batch_size=15"], ["trainer.sft_batch_size", "resources.learner_ranks (2)"]),
    (
        ["trainer.grpo_prompts_per_step=3", "algorithm.grpo.group_size=3"],
        ["trainer.grpo_prompts_per_step", "group_size = 9", "learner_ranks (2)"],
    ),
    (["learner.micro_batch_size=3"], ["learner.micro_batch_size", "per-rank batch 8"]),
    (["data.task=gsm8k", "data.eval_path=x"], ["data.train_path", "required", "data.task=gsm8k"]),
    (["data.task=mbpp", "data.train_path=x"], ["data.eval_path", "required"]),
    (["model.dtype=bfloat16"], ["learner.bf16", "model.dtype=bfloat16"]),
    (["model.dtype=float16", "learner.bf16=true"], ["learner.bf16", "float16"]),
    (["learner.offload_optimizer=true", "learner.zero_stage=0"], ["learner.offload_optimizer"]),
    (
        ["learner.zero_stage=3", "schedule.sasr.probe_every=4"],
        ["learner.zero_stage", "<= 2 with schedule.sasr.probe_every > 0"],
    ),
    (
        ["schedule.kind=sasr_soft", "learner.zero_stage=3"],
        ["learner.zero_stage", "<= 2 with sasr_soft"],
    ),
    (
        ["schedule.kind=mix", "learner.optimizer_state=per_mode"],
        ["learner.optimizer_state", "must be shared for schedule.kind=mix"],
    ),
    (
        ["schedule.kind=sasr_soft", "algorithm.grpo.updates_per_batch=2"],
        ["algorithm.grpo.updates_per_batch", "must be 1 for schedule.kind=sasr_soft"],
    ),
    (["schedule.kind=mix", "schedule.mix.mu_end=0.1"], ["schedule.mix.mu_end", "no effect"]),
    (["schedule.mix.decay=exp"], ["schedule.mix.decay", "constant, linear, cosine"]),
    (["schedule.mix.mu_start=2"], ["schedule.mix.mu_start", "[0, 1]"]),
    (["schedule.kind=sasr_soft", "schedule.warmup_steps=0"], ["[1, trainer.max_steps)"]),
    (["schedule.kind=mix", "schedule.warmup_steps=100"], ["schedule.warmup_steps", "< trainer"]),
    (["learner.backend=nccl"], ["learner.backend", "gpus_per_learner"]),
    (["resources.gpus_per_learner=0.5"], ["resources.gpus_per_learner", "NCCL"]),
    (["resources.gpus_per_rollout=1.5"], ["resources.gpus_per_rollout", "whole number"]),
    (["data.max_prompt_tokens=450"], ["model.max_model_len", "= 578"]),
    (["rollout.max_new_tokens=200"], ["rollout.max_new_tokens", "max_response_tokens (128)"]),
    (["eval.max_new_tokens=300"], ["eval.max_new_tokens", "(256)"]),
    (["judge.math_extract=loose"], ["judge.math_extract", "flexible, strict"]),
    (["algorithm.grpo.undecided_reward=1.5"], ["algorithm.grpo.undecided_reward", "[0, 1]"]),
    (["data.prompt_template=Solve it."], ["data.prompt_template", "must contain {question}"]),
    (["data.prompt_template='{question} {answer}'"], ["data.prompt_template", "not {answer}"]),
    (["data.prompt_template='{question'"], ["data.prompt_template", "literal brace"]),
    (
        ["data.paraphrase_template='{question} again'"],
        ["data.paraphrase_template", "missing {reference}"],
    ),
]


@pytest.mark.parametrize(
    ("overrides", "texts"), REJECTIONS, ids=[" ".join(o) for o, _ in REJECTIONS]
)
def test_rejection_names_the_key_and_what_is_allowed(overrides, texts):
    message = _error(overrides)
    for text in texts:
        assert text in message
    # OmegaConf's own report (full_key/object_type lines) never leaks into the message
    assert "object_type" not in message and "full_key" not in message


def test_combinations_that_are_fine_for_the_schedule_pass():
    # one-sample groups and greedy rollouts are fine when no GRPO step can happen
    load_config(
        overrides=["schedule.kind=sft", "algorithm.grpo.group_size=1", "rollout.temperature=0"]
    )
    # an odd SFT batch is fine when no SFT step can happen
    load_config(overrides=["schedule.kind=grpo", "trainer.sft_batch_size=15"])
    # a mix without a warm-up (CHORD's setting), mu decaying
    load_config(
        overrides=["schedule.kind=mix", "schedule.warmup_steps=0", "schedule.mix.mu_end=0.1",
                   "schedule.mix.decay=cosine"]
    )  # fmt: skip


def test_every_problem_is_reported_at_once():
    message = _error(["trainer.max_steps=0", "learner.lr=-1", "model.dtype=fp8"])
    assert message.startswith("3 config problems:")
    for key in ("trainer.max_steps", "learner.lr", "model.dtype"):
        assert f"  - {key}:" in message


def test_errors_come_without_omegaconf_traceback():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["trainer.max_steps=abc"])
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_validate_checks_a_config_built_in_code():
    cfg = Config()
    bad = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, max_steps=-3))
    with pytest.raises(ConfigError, match=r"trainer\.max_steps: must be >= 1; got -3"):
        validate(bad)


# ------------------------------------------------------------------------------------ files


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert str(missing) in _error(path=missing)


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("trainer:\n  max_steps: [1\n")
    message = _error(path=path)
    assert str(path) in message and "invalid YAML" in message and "line 3" in message


def test_duplicate_yaml_keys_are_rejected(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("trainer:\n  max_steps: 1\n  max_steps: 2\n")
    assert "duplicate key" in _error(path=path)


def test_a_moved_key_in_a_file_names_where_it_went(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("trainer:\n  max_steps: 5\n  weight_decay: 0.1\n")
    message = _error(path=path)
    assert "trainer.weight_decay: moved to learner.weight_decay" in message
    assert "unknown key" not in message


def test_file_errors_name_the_key_and_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("trainer:\n  max_stepz: 5\nlearner:\n  zero_stage: two\n")
    message = _error(path=path)
    assert "trainer.max_stepz: unknown key" in message and str(path) in message
    path.write_text("learner:\n  zero_stage: two\n")
    assert "learner.zero_stage: expected an integer, got 'two'" in _error(path=path)
    path.write_text("- model\n")
    assert "top level must be a mapping" in _error(path=path)
    path.write_text("model: null\n")
    assert "model: expected a section" in _error(path=path)


def test_empty_file_gives_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(path) == resolve(Config())


# ------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("path", [None, *CONFIGS], ids=lambda p: p.name if p else "defaults")
def test_save_then_load_gives_an_equal_config(tmp_path, path):
    cfg = load_config(path, ["learner.lr=3.3e-7", "data.seed=7"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(config_to_yaml(cfg))
    assert not list(out.parent.glob("*.tmp"))
