"""The methods ``ray-s3ft compare`` knows: each a description and the config overrides that
make a run of it from a shared config."""

from __future__ import annotations

# Each method is a set of overrides of the keys a cell may change (CELL_KEYS): the actors are
# shared by every cell, so a method may not change what they were built with. The learners take
# the cell's learner.optimizer_state and algorithm.grpo.* when they reset (LearnerActor.reset).
CELL_KEYS = ("schedule.", "algorithm.", "learner.optimizer_state=", "guard.")
_SASR = ["schedule.kind=sasr", "algorithm.targets=s3ft"]
METHODS: dict[str, tuple[str, list[str]]] = {
    "base": ("the base model, no training", []),
    "sft_gold": ("SFT on the gold answers", ["schedule.kind=sft", "algorithm.targets=gold"]),
    "ssr": ("SFT on SSR targets (self | gold)", ["schedule.kind=sft", "algorithm.targets=ssr"]),
    "s3ft": (
        "SFT on S3FT targets (self | paraphrase | gold)",
        ["schedule.kind=sft", "algorithm.targets=s3ft"],
    ),
    "sdft": (
        "SFT on SDFT targets (paraphrase | gold)",
        ["schedule.kind=sft", "algorithm.targets=sdft"],
    ),
    "grpo": ("GRPO only", ["schedule.kind=grpo"]),
    "sft_then_grpo": (
        "S3FT SFT for warmup_steps, then GRPO",
        ["schedule.kind=sft_then_grpo", "algorithm.targets=s3ft"],
    ),
    "fixed_ratio": (
        "SFT (S3FT targets) with probability schedule.p_sft, else GRPO",
        ["schedule.kind=fixed_ratio", "algorithm.targets=s3ft"],
    ),
    "sasr_gold": ("SASR, SFT steps on gold", ["schedule.kind=sasr", "algorithm.targets=gold"]),
    "sasr": ("SASR, SFT steps on S3FT targets", ["schedule.kind=sasr", "algorithm.targets=s3ft"]),
    "sasr_probe": (
        "SASR + gradient probes every 4 GRPO steps (ours)",
        ["schedule.kind=sasr", "algorithm.targets=s3ft", "schedule.sasr.probe_every=4"],
    ),
    "sasr_kl": (
        "SASR + KL term in the gate (ours)",
        ["schedule.kind=sasr", "algorithm.targets=s3ft", "schedule.sasr.lam=1.0"],
    ),
    "sasr_base_ref": (
        "SASR with the base model as KL reference (the old baselines' rule)",
        [*_SASR, "schedule.reference=base"],
    ),
    "sasr_per_mode": (
        "SASR, one Adam state per mode",
        [*_SASR, "learner.optimizer_state=per_mode"],
    ),
    "sasr_ppo2": (
        "SASR, 2 PPO updates per rollout batch",
        [*_SASR, "algorithm.grpo.updates_per_batch=2"],
    ),
    "sasr_ppo4": (
        "SASR, 4 PPO updates per rollout batch",
        [*_SASR, "algorithm.grpo.updates_per_batch=4"],
    ),
    "sasr_dynamic": (
        "SASR, DAPO dynamic sampling of flat groups",
        [*_SASR, "algorithm.grpo.dynamic_sampling=true"],
    ),
    "sasr_all": (
        "SASR, per-mode Adam + 2 PPO updates + dynamic sampling",
        [*_SASR, "learner.optimizer_state=per_mode", "algorithm.grpo.updates_per_batch=2",
         "algorithm.grpo.dynamic_sampling=true"],
    ),  # fmt: skip
    "fixed_ratio_per_mode": (
        "fixed_ratio, one Adam state per mode",
        ["schedule.kind=fixed_ratio", "algorithm.targets=s3ft", "learner.optimizer_state=per_mode"],
    ),
    "sft_then_grpo_per_mode": (
        "sft_then_grpo, one Adam state per mode",
        ["schedule.kind=sft_then_grpo", "algorithm.targets=s3ft", "learner.optimizer_state=per_mode"],
    ),
    "mix": (
        "one-step mix (1 - mu) GRPO + mu SFT (S3FT targets), mu 0.5",
        ["schedule.kind=mix", "algorithm.targets=s3ft", "schedule.mix.mu_start=0.5",
         "schedule.mix.mu_end=0.5", "schedule.mix.decay=constant"],
    ),
    "mix_cosine": (
        "one-step mix, mu from 0.9 to 0.1 by a cosine over the run (CHORD's decaying mu)",
        ["schedule.kind=mix", "algorithm.targets=s3ft", "schedule.mix.mu_start=0.9",
         "schedule.mix.mu_end=0.1", "schedule.mix.decay=cosine"],
    ),
    "mix_phi": (
        "one-step mix, mu 0.5, SFT tokens weighted by p (1 - p) (CHORD's phi)",
        ["schedule.kind=mix", "algorithm.targets=s3ft", "schedule.mix.mu_start=0.5",
         "schedule.mix.mu_end=0.5", "schedule.mix.decay=constant",
         "schedule.mix.token_weight=chord_phi"],
    ),
    "sasr_soft": (
        "SASR without the coin: every step a mix with mu = the gate's p_sft (ours)",
        ["schedule.kind=sasr_soft", "algorithm.targets=s3ft"],
    ),
    "sasr_follow": (
        "SASR, targets that follow the policy: refreshed every 8 steps, accepted GRPO samples "
        "rehearsed (ours)",
        [*_SASR, "algorithm.targets_refresh_every=8", "algorithm.rehearse_rollouts=true"],
    ),
    "grpo_ppo2": ("GRPO only, 2 PPO updates per rollout batch",
                  ["schedule.kind=grpo", "algorithm.grpo.updates_per_batch=2"]),
    "grpo_dynamic": ("GRPO only, DAPO dynamic sampling",
                     ["schedule.kind=grpo", "algorithm.grpo.dynamic_sampling=true"]),
}  # fmt: skip
DEFAULT_METHODS = (
    "base", "sft_gold", "ssr", "s3ft", "grpo", "sft_then_grpo", "fixed_ratio", "sasr_gold", "sasr",
)  # fmt: skip

# The comparisons the results stand on (docs/results, "The claims"): method A minus method B,
# paired on the same questions (``experiments.questions``). SASR is also set against the best
# static schedule of the grid (STATIC, by mean task accuracy): a choice made after seeing the
# results, so that difference leans in the static schedule's favour.
CLAIMS = (
    ("s3ft", "sft_gold"),
    ("ssr", "sft_gold"),
    ("sasr", "fixed_ratio"),
    ("sasr", "sft_then_grpo"),
    ("sasr_per_mode", "fixed_ratio_per_mode"),
    ("sasr_soft", "sasr"),  # the coin against the soft gate
    ("mix", "fixed_ratio"),  # one-step mixing against per-step alternation at the same share
)
STATIC = ("fixed_ratio", "sft_then_grpo", "fixed_ratio_per_mode", "sft_then_grpo_per_mode")
