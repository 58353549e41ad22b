"""Validation of a loaded ``Config``: each field's own value rule, declared beside the field in
``schema`` (``checked(default, check)``, ``rules``), then the rules kept here: list entries,
prompt templates, and the rules that span fields and sections.

``validate(cfg)`` raises one ``ConfigError`` listing every problem, each by its full dotted key
and what is allowed. ``ray_s3ft.config.validate`` (called by ``load_config``) is this.

This module imports only the standard library, ``ray_s3ft.config.schema`` and ``rules``, and
``ray_s3ft.tasks`` modules that use the standard library only (the held-out set names), for the
same reason: every process may validate a config, and none should pull torch or ray in.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import typing

from ray_s3ft.config.rules import Check
from ray_s3ft.config.schema import (
    LOGGERS,
    TASK_VERIFIERS,
    VLLM_LORA_RANKS,
    Config,
    ConfigError,
    _show,
)
from ray_s3ft.tasks.benchmarks import is_choice_file
from ray_s3ft.tasks.builtin import HELDOUT_SKILLS
from ray_s3ft.tasks.humaneval import is_humaneval_entry
from ray_s3ft.tasks.math500 import is_math500_entry
from ray_s3ft.tasks.olmo_tasks import NAMED
from ray_s3ft.tasks.suites import SUITES


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


def field_checks(cls: type, prefix: str = "") -> list[tuple[str, Check]]:
    """Every field's own rule (``rules.checked``), by full dotted key, sections walked."""
    out = []
    types = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    for f in dataclasses.fields(cls):
        tp = types[f.name]
        if dataclasses.is_dataclass(tp):
            out += field_checks(tp, f"{prefix}{f.name}.")
        elif "check" in f.metadata:
            out.append((f"{prefix}{f.name}", f.metadata["check"]))
    return out


def _get(cfg: Config, key: str):
    return functools.reduce(getattr, key.split("."), cfg)


def validate(cfg: Config) -> None:
    """Raise ConfigError listing every invalid value or combination in `cfg`, each by full key."""
    problems: list[str] = []

    def bad(key: str, allowed: str) -> None:
        problems.append(f"{key}: {allowed}; got {_show(_get(cfg, key))}")

    for key, check in field_checks(Config):
        if not check.test(_get(cfg, key)):
            bad(key, check.allowed)
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
                and not is_math500_entry(x)
                and x not in SUITES
            ]
        ):
            bad(
                key,
                f"entries must be built-in skills ({', '.join(HELDOUT_SKILLS)}), paths to "
                f"multiple-choice .jsonl files, {', '.join(SUITES)}, humaneval, math500 or a HumanEval .jsonl / .jsonl.gz "
                f"file, not {', '.join(map(repr, odd))}",
            )
    if odd := [x for x in cfg.trainer.loggers if x not in LOGGERS]:
        bad(
            "trainer.loggers",
            f"entries must be {', '.join(LOGGERS)}, not {', '.join(map(repr, odd))}",
        )
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

    # Data: only the builtin task generates its own examples; a named set (gsm8k, mbpp,
    # nq_open) serves its own task.
    if d.task != "builtin":
        for key in ("data.train_path", "data.eval_path"):
            if not (source := _get(cfg, key)):
                bad(key, f"is required for data.task={d.task} (a file, saved dataset or hub name)")
            elif source in NAMED and NAMED[source].task != d.task:
                bad(
                    key,
                    f"must be data for data.task={d.task}; the named set {source} is for "
                    f"data.task={NAMED[source].task}",
                )
    if j.verifier != "auto" and j.verifier not in TASK_VERIFIERS[d.task]:
        bad(
            "judge.verifier",
            f"for data.task={d.task} must be auto or one of " + ", ".join(TASK_VERIFIERS[d.task]),
        )
    if j.timeout_s <= j.sandbox_timeout_s:
        # a program that runs to its own limit would be taken for a hung judge actor
        bad("judge.timeout_s", f"must be > judge.sandbox_timeout_s ({j.sandbox_timeout_s:g})")

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

    # LoRA served as adapters: only a vLLM engine takes them, up to vLLM's largest rank.
    if ro.lora_sync == "adapter":
        if not m.lora.enabled:
            bad("rollout.lora_sync", "adapter needs model.lora.enabled=true (or use merged)")
        if ro.backend != "vllm":
            bad("rollout.lora_sync", f"adapter needs rollout.backend=vllm, not {ro.backend}")
        if m.lora.r > VLLM_LORA_RANKS[-1]:
            bad("model.lora.r", f"must be <= {VLLM_LORA_RANKS[-1]} with rollout.lora_sync=adapter")

    # Schedule: which step kinds can happen decides which batch rules apply.
    takes_grpo = s.kind != "sft"
    takes_sft = s.kind != "grpo"
    if s.kind in ("sasr", "sft_then_grpo", "sasr_soft") and not 1 <= s.warmup_steps < t.max_steps:
        bad(
            "schedule.warmup_steps",
            f"must be in [1, trainer.max_steps) = [1, {t.max_steps}) for schedule.kind={s.kind}",
        )
    if s.kind == "mix" and s.warmup_steps >= t.max_steps:
        bad("schedule.warmup_steps", f"must be < trainer.max_steps ({t.max_steps}) for mix")
    if s.kind == "mix" and s.mix.decay == "constant" and s.mix.mu_end != s.mix.mu_start:
        bad(
            "schedule.mix.mu_end",
            f"has no effect with schedule.mix.decay=constant (mu stays mu_start="
            f"{s.mix.mu_start}); set decay to linear or cosine, or mu_end to mu_start",
        )
    if s.kind in ("mix", "sasr_soft"):
        # one optimizer step carries both losses: there is one Adam state, and one update
        if le.optimizer_state != "shared":
            bad(
                "learner.optimizer_state",
                f"must be shared for schedule.kind={s.kind}: each step's one update carries "
                "both losses, so there is no mode to keep a state for",
            )
        if alg.grpo.updates_per_batch != 1:
            bad(
                "algorithm.grpo.updates_per_batch",
                f"must be 1 for schedule.kind={s.kind}: a mix step is one optimizer step",
            )
    if le.zero_stage == 3 and (s.kind == "sasr_soft" or (s.kind == "sasr" and s.sasr.probe_every)):
        # the SFT gradient alone (a probe, or the SFT part of a sasr_soft step) is taken with
        # torch.autograd.grad on the full parameters, which ZeRO-3 partitions
        why = "sasr_soft" if s.kind == "sasr_soft" else "schedule.sasr.probe_every > 0"
        bad(
            "learner.zero_stage",
            f"must be <= 2 with {why}: the SFT gradient norm needs the full parameters on "
            "every rank, which ZeRO-3 partitions",
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

    # Targets that follow the policy replace a target by the model's own accepted answer.
    if alg.follows_policy and alg.targets not in ("ssr", "s3ft"):
        key = "targets_refresh_every" if alg.targets_refresh_every else "rehearse_rollouts"
        bad(
            f"algorithm.{key}",
            f"needs algorithm.targets ssr or s3ft (targets with a self rung), not {alg.targets}",
        )
    if alg.targets_refresh_every and ro.async_:
        bad(
            "algorithm.targets_refresh_every",
            "is not supported with rollout.async=true: a refresh syncs the engines while "
            "they sample the prefetched batch",
        )
    if alg.rehearse_rollouts and s.kind == "sft":
        bad("algorithm.rehearse_rollouts", "needs GRPO samples: schedule.kind sft has none")

    # The forgetting budget is checked at the in-loop evaluations, on what they measure.
    gu, ev = cfg.guard, cfg.eval
    if (gu.max_heldout_drop is not None or gu.max_drift is not None) and ev.every == 0:
        key = "max_heldout_drop" if gu.max_heldout_drop is not None else "max_drift"
        bad(f"guard.{key}", "needs in-loop evaluations (eval.every > 0): it is checked at them")
    if gu.max_heldout_drop is not None and not ev.heldout:
        bad("guard.max_heldout_drop", "needs held-out sets (eval.heldout) to measure the drop")
    if gu.max_drift is not None and not ev.drift:
        bad("guard.max_drift", "needs eval.drift=true to measure the drift")
    if gu.action == "rehearse" and (alg.targets not in ("ssr", "s3ft") or s.kind == "grpo"):
        bad(
            "guard.action",
            "rehearse trains the SFT side on the model's own accepted answers: it needs SFT "
            f"steps over a store with them (algorithm.targets ssr or s3ft, not {alg.targets}; "
            f"schedule.kind not grpo, here {s.kind})",
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
