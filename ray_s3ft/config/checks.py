"""Validation of a loaded ``Config``: single values, then the rules that span sections.

``validate(cfg)`` raises one ``ConfigError`` listing every problem, each by its full dotted key
and what is allowed. ``ray_s3ft.config.validate`` (called by ``load_config``) is this.

This module imports only the standard library, ``ray_s3ft.config.schema`` and
``ray_s3ft.tasks`` modules that use the standard library only (the held-out set names), for the
same reason: every process may validate a config, and none should pull torch or ray in.
"""

from __future__ import annotations

import functools
import math

from ray_s3ft.config.schema import (
    CHOICE_TARGETS,
    DIST_BACKENDS,
    DTYPES,
    ENGINES,
    LLM_JUDGE_MODES,
    LOGGERS,
    LOSS_AGGS,
    MATH_EXTRACT,
    OPTIMIZER_STATES,
    REFERENCES,
    SCHEDULE_KINDS,
    TARGET_KINDS,
    TASK_VERIFIERS,
    TASKS,
    VERIFIERS,
    WANDB_MODES,
    Config,
    ConfigError,
    _show,
)
from ray_s3ft.tasks.benchmarks import is_choice_file
from ray_s3ft.tasks.builtin import HELDOUT_SKILLS
from ray_s3ft.tasks.humaneval import is_humaneval_entry
from ray_s3ft.tasks.suites import SUITES

_CHOICES = {
    "model.dtype": DTYPES,
    "data.task": TASKS,
    "rollout.backend": ENGINES,
    "rollout.dtype": DTYPES,
    "judge.verifier": VERIFIERS,
    "judge.llm_backend": ENGINES,
    "judge.math_extract": MATH_EXTRACT,
    "judge.llm_mode": LLM_JUDGE_MODES,
    "learner.zero_stage": (0, 1, 2, 3),
    "learner.backend": DIST_BACKENDS,
    "algorithm.targets": TARGET_KINDS,
    "algorithm.grpo.loss_agg": LOSS_AGGS,
    "schedule.kind": SCHEDULE_KINDS,
    "schedule.reference": REFERENCES,
    "learner.optimizer_state": OPTIMIZER_STATES,
    "eval.backend": ENGINES,
    "eval.choice_target": CHOICE_TARGETS,
}


def _finite(test):
    return lambda v: isinstance(v, (int, float)) and math.isfinite(v) and test(v)


# (keys, test, what is allowed); nan and inf fail every test.
_RANGES = (
    (
        """model.max_model_len model.lora.r model.lora.alpha data.train_size
        data.max_prompt_tokens data.max_response_tokens rollout.max_new_tokens
        judge.llm_max_new_tokens judge.batch_size learner.micro_batch_size
        algorithm.grpo.group_size algorithm.grpo.updates_per_batch resources.rollout_workers
        resources.judge_workers resources.learner_ranks trainer.max_steps trainer.sft_batch_size
        trainer.grpo_prompts_per_step trainer.checkpoint_every rollout.max_staleness eval.task_size eval.heldout_size eval.every_size
        eval.max_new_tokens eval.batch_size eval.drift_size""",
        _finite(lambda v: v >= 1),
        "must be >= 1",
    ),
    (
        """data.seed rollout.seed rollout.threads trainer.seed schedule.warmup_steps schedule.sasr.probe_every
        eval.every trainer.max_learner_restarts algorithm.grpo.max_extra_rollouts""",
        _finite(lambda v: v >= 0),
        "must be >= 0",
    ),
    # a Python interpreter needs tens of MiB of address space just to start
    ("judge.sandbox_memory_mb", _finite(lambda v: v >= 64), "must be >= 64 (MiB)"),
    (
        """rollout.kv_cache_gib rollout.is_cap judge.sandbox_timeout_s judge.timeout_s
        algorithm.grpo.eps_high
        algorithm.grpo.adv_eps schedule.sasr.gamma schedule.sasr.kl_target learner.lr""",
        _finite(lambda v: v > 0),
        "must be a finite number > 0",
    ),
    (
        """rollout.temperature learner.grad_clip algorithm.grpo.beta schedule.sasr.lam
        resources.wait_for_resources_s
        learner.weight_decay resources.cpus_per_rollout resources.gpus_per_rollout
        resources.cpus_per_judge resources.gpus_per_judge resources.cpus_per_learner
        resources.gpus_per_learner""",
        _finite(lambda v: v >= 0),
        "must be a finite number >= 0",
    ),
    (
        """data.max_bad_fraction schedule.p_sft schedule.sasr.p_min schedule.sasr.p_max
        algorithm.grpo.undecided_reward""",
        _finite(lambda v: 0 <= v <= 1),
        "must be in [0, 1]",
    ),
    (
        "model.lora.dropout algorithm.grpo.eps_low schedule.sasr.ema_decay",
        _finite(lambda v: 0 <= v < 1),
        "must be in [0, 1)",
    ),
    (
        "rollout.top_p rollout.gpu_memory_utilization",
        _finite(lambda v: 0 < v <= 1),
        "must be in (0, 1]",
    ),
)

_NONEMPTY_STRINGS = (
    "model.path",
    "judge.llm_model",
    "trainer.output_dir",
    "eval.output_dir",
    "trainer.mlflow.experiment",
    "trainer.wandb.project",
)


def _template_problem(template: str | None, fields: tuple[str, ...]) -> str | None:
    """Why a prompt template is unusable (None when it is fine, or null = the task's own)."""
    import string

    if template is None:
        return None
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:  # a lone "{" or "}"
        return f"is not a valid template ({e}; write a literal brace as {{{{ or }}}})"
    want = ", ".join("{" + f + "}" for f in fields)
    if missing := [f for f in fields if f not in names]:
        return f"must contain {want} (missing {', '.join('{' + f + '}' for f in missing)})"
    if extra := sorted(names - set(fields)):
        return f"may only use {want}, not {', '.join('{' + f + '}' for f in extra)}"
    return None


def _get(cfg: Config, key: str):
    return functools.reduce(getattr, key.split("."), cfg)


def validate(cfg: Config) -> None:
    """Raise ConfigError listing every invalid value or combination in `cfg`, each by full key."""
    problems: list[str] = []

    def bad(key: str, allowed: str) -> None:
        problems.append(f"{key}: {allowed}; got {_show(_get(cfg, key))}")

    for key, allowed in _CHOICES.items():
        if _get(cfg, key) not in allowed:
            bad(key, "must be one of " + ", ".join(map(str, allowed)))
    for keys, test, allowed in _RANGES:
        for key in keys.split():
            if not test(_get(cfg, key)):
                bad(key, allowed)
    for key in _NONEMPTY_STRINGS:
        if not (isinstance(_get(cfg, key), str) and _get(cfg, key).strip()):
            bad(key, "must be a non-empty string")
    for key, need_one in (
        ("model.lora.target_modules", True),
        ("eval.heldout", False),
        ("eval.lm_eval_tasks", False),
        ("trainer.loggers", False),
    ):
        items = _get(cfg, key)
        if not all(isinstance(x, str) and x.strip() for x in items) or len(set(items)) < len(items):
            bad(key, "must be a list of distinct non-empty strings")
        elif need_one and not items:
            bad(key, "must name at least one module")
        elif key == "eval.heldout" and (
            odd := [
                x
                for x in items
                if x not in HELDOUT_SKILLS
                and not is_choice_file(x)
                and not is_humaneval_entry(x)
                and x not in SUITES
            ]
        ):
            bad(
                key,
                f"entries must be built-in skills ({', '.join(HELDOUT_SKILLS)}), paths to "
                f"multiple-choice .jsonl files, {', '.join(SUITES)}, humaneval or a HumanEval .jsonl / .jsonl.gz "
                f"file, not {', '.join(map(repr, odd))}",
            )
    if odd := [x for x in cfg.trainer.loggers if x not in LOGGERS]:
        bad(
            "trainer.loggers",
            f"entries must be {', '.join(LOGGERS)}, not {', '.join(map(repr, odd))}",
        )
    if cfg.trainer.wandb.mode is not None and cfg.trainer.wandb.mode not in WANDB_MODES:
        bad("trainer.wandb.mode", "must be null ($WANDB_MODE) or one of " + ", ".join(WANDB_MODES))
    if cfg.eval.lm_eval_limit is not None and not _finite(lambda v: v >= 1)(cfg.eval.lm_eval_limit):
        bad("eval.lm_eval_limit", "must be null (every example) or >= 1")
    if cfg.learner.grpo_lr is not None and not _finite(lambda v: v > 0)(cfg.learner.grpo_lr):
        bad("learner.grpo_lr", "must be null (= learner.lr) or a finite number > 0")
    for key, fields in (
        ("data.prompt_template", ("question",)),
        ("data.paraphrase_template", ("question", "reference")),
    ):
        if (why := _template_problem(_get(cfg, key), fields)) is not None:
            bad(key, why)
    if problems:  # the cross-section rules below assume sane single values
        raise ConfigError(problems)

    m, d, ro, j, le = cfg.model, cfg.data, cfg.rollout, cfg.judge, cfg.learner
    alg, s, res, t = cfg.algorithm, cfg.schedule, cfg.resources, cfg.trainer

    # Data: only the builtin task generates its own examples.
    if d.task != "builtin":
        for key in ("data.train_path", "data.eval_path"):
            if not _get(cfg, key):
                bad(key, f"is required for data.task={d.task} (a file, saved dataset or hub name)")
    if j.verifier != "auto" and j.verifier not in TASK_VERIFIERS[d.task]:
        bad(
            "judge.verifier",
            f"for data.task={d.task} must be auto or one of " + ", ".join(TASK_VERIFIERS[d.task]),
        )

    # Token budgets: every training sequence and every generation must fit the model.
    if d.max_prompt_tokens + d.max_response_tokens > m.max_model_len:
        bad(
            "model.max_model_len",
            f"must be >= data.max_prompt_tokens + data.max_response_tokens "
            f"= {d.max_prompt_tokens + d.max_response_tokens}",
        )
    if ro.max_new_tokens > d.max_response_tokens:
        # a longer rollout would be cut before training, so its reward and its loss disagree
        bad(
            "rollout.max_new_tokens",
            f"must be <= data.max_response_tokens ({d.max_response_tokens})",
        )
    if d.max_prompt_tokens + cfg.eval.max_new_tokens > m.max_model_len:
        bad(
            "eval.max_new_tokens",
            f"must be <= model.max_model_len - data.max_prompt_tokens "
            f"({m.max_model_len - d.max_prompt_tokens})",
        )

    # Schedule: which step kinds can happen decides which batch rules apply.
    takes_grpo = s.kind != "sft"
    takes_sft = s.kind != "grpo"
    if s.kind in ("sasr", "sft_then_grpo") and not 1 <= s.warmup_steps < t.max_steps:
        bad(
            "schedule.warmup_steps",
            f"must be in [1, trainer.max_steps) = [1, {t.max_steps}) for schedule.kind={s.kind}",
        )
    if s.sasr.p_min > s.sasr.p_max:
        bad("schedule.sasr.p_min", f"must be <= schedule.sasr.p_max ({s.sasr.p_max})")
    if takes_grpo and alg.grpo.group_size < 2:
        bad(
            "algorithm.grpo.group_size",
            f"must be >= 2 for schedule.kind={s.kind}: a group of one has no advantage",
        )
    if takes_grpo and ro.temperature == 0:
        bad(
            "rollout.temperature",
            f"must be > 0 for schedule.kind={s.kind}: "
            "greedy groups are identical and carry no advantage",
        )

    # Batches split evenly over ranks, then into whole micro-batches (DeepSpeed requires
    # batch = micro_batch_size * accumulation_steps * ranks).
    batches = []  # (key blamed, how the batch is named, its size in sequences)
    if takes_sft:
        batches.append(("trainer.sft_batch_size", "it", t.sft_batch_size))
    if takes_grpo:
        size = t.grpo_prompts_per_step * alg.grpo.group_size
        what = f"it * algorithm.grpo.group_size = {size}"
        batches.append(("trainer.grpo_prompts_per_step", what, size))
    ranks = res.learner_ranks
    k = alg.grpo.updates_per_batch
    if takes_grpo and k > 1 and (t.grpo_prompts_per_step * alg.grpo.group_size) % (ranks * k):
        size = t.grpo_prompts_per_step * alg.grpo.group_size
        bad(
            "algorithm.grpo.updates_per_batch",
            f"must divide each rank's GRPO batch ({size} sequences / "
            f"resources.learner_ranks {ranks}) into whole mini-batches",
        )
    for key, what, size in batches:
        if size % ranks:
            bad(key, f"{what} must be divisible by resources.learner_ranks ({ranks})")
        elif (size // ranks) % le.micro_batch_size:
            bad(
                "learner.micro_batch_size",
                f"must divide the per-rank batch {size // ranks} "
                f"({key} batch {size} / resources.learner_ranks {ranks})",
            )

    # Learner precision and distribution.
    if m.dtype == "bfloat16" and not le.bf16:
        bad(
            "learner.bf16",
            "must be true when model.dtype=bfloat16: without it DeepSpeed keeps "
            "no fp32 master weights and small updates round away",
        )
    if le.bf16 and m.dtype == "float16":
        bad("learner.bf16", "conflicts with model.dtype=float16; use bfloat16 or float32")
    if s.kind == "sasr" and s.sasr.probe_every > 0 and le.zero_stage == 3:
        bad(
            "learner.zero_stage",
            "must be <= 2 with schedule.sasr.probe_every > 0: the gradient-only probe needs "
            "the full parameters on every rank, which ZeRO-3 partitions",
        )
    if le.offload_optimizer and le.zero_stage == 0:
        bad("learner.offload_optimizer", "needs learner.zero_stage >= 1")
    if le.backend == "nccl" and res.gpus_per_learner == 0:
        bad("learner.backend", "nccl needs resources.gpus_per_learner > 0")
    nccl = le.backend == "nccl" or (le.backend == "auto" and res.gpus_per_learner > 0)
    if nccl and res.learner_ranks > 1 and 0 < res.gpus_per_learner < 1:
        bad(
            "resources.gpus_per_learner",
            "must be >= 1 with nccl and several ranks: ranks sharing a GPU make NCCL fail",
        )
    for key in ("gpus_per_rollout", "gpus_per_judge", "gpus_per_learner"):
        gpus = getattr(res, key)
        if gpus > 1 and gpus != int(gpus):
            bad(f"resources.{key}", "must be a whole number when above 1 (Ray's rule)")

    if problems:
        raise ConfigError(problems)
