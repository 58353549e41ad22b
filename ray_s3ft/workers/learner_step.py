"""What one micro-batch of a learner step computes: its loss by mode, and the step's sums.

``LOSSES[mode]`` turns a micro-batch's token logprobs into the loss to back-propagate, already
scaled to the micro-batch's share of the whole update (over every micro-batch and rank), and
adds its statistics to the step's ``StepSums``. ``LearnerActor._update`` runs the micro-batches
and the optimizer; ``LearnerActor.train_step`` turns the all-reduced sums into ``StepStats``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ray_s3ft.workers.types import StepStats, TrainBatch

# a step's sums over this rank's micro-batches; "*_tokens" ones are token-weighted sums, divided
# by the token count at the end
SUMS = (
    "objective",  # the losses back-propagated (each already its share of the update)
    "kl_tokens",  # k3 KL to the reference, summed over tokens
    "entropy_tokens",
    "tokens",
    "sequences",
    "pg",  # GRPO's policy-gradient term, as its share of the update
    "clip_tokens",  # tokens whose ratio was clipped
    "logprob_diff_tokens",  # |pi_old - engine| logprob gap
    "is_weight_tokens",  # truncated importance weights (async rollouts)
    "is_capped_tokens",  # tokens whose importance weight hit the cap
    "ratio_dev_tokens",  # |pi / pi_old - 1|
)
_INDEX = {name: i for i, name in enumerate(SUMS)}


class StepSums:
    """The step's sums by name, kept as one float64 vector (one all-reduce over ranks), and
    the largest learner-vs-engine logprob gap (a max-reduce)."""

    def __init__(self) -> None:
        self.values = torch.zeros(len(SUMS), dtype=torch.float64)
        self.max_diff = torch.zeros(1, dtype=torch.float64)

    def add(self, **sums: float) -> None:
        for name, value in sums.items():
            self.values[_INDEX[name]] += value

    def __getitem__(self, name: str) -> float:
        return self.values[_INDEX[name]].item()

    def reduced(self, all_reduce) -> StepSums:
        """These sums over every rank: ``all_reduce(tensor, op)`` is the learner's collective."""
        out = StepSums()
        out.values = all_reduce(self.values)
        out.max_diff = all_reduce(self.max_diff, op="max")
        return out


def step_stats(
    s: StepSums, *, updates: int, with_kl: bool, is_cap, grad_norm: float, lr: float
) -> StepStats:
    """A step's ``StepStats`` from its sums over every rank: losses as means over its
    ``updates`` optimizer steps, token statistics as means over its response tokens."""
    tok = max(s["tokens"], 1.0)
    return StepStats(
        loss=s["objective"] / updates,
        grad_norm=grad_norm,
        kl=s["kl_tokens"] / tok if with_kl else float("nan"),
        entropy=s["entropy_tokens"] / tok,
        tokens=int(s["tokens"]),
        sequences=int(s["sequences"]),
        pg_loss=s["pg"] / updates,
        clip_frac=s["clip_tokens"] / tok,
        logprob_diff=s["logprob_diff_tokens"] / tok,
        logprob_max_diff=s.max_diff.item(),
        is_weight=s["is_weight_tokens"] / tok if is_cap is not None else 1.0,
        is_clip_frac=s["is_capped_tokens"] / tok,
        updates=updates,
        ratio_dev=s["ratio_dev_tokens"] / tok,
        lr=lr,
    )


@dataclass
class MicroBatch:
    """One micro-batch's inputs to its loss (all [b, T-1] tensors on the learner's device)."""

    batch: TrainBatch  # the whole update's rows (is_cap, max_new_tokens)
    mb: TrainBatch  # this micro-batch
    logp: torch.Tensor  # the policy's token logprobs (with graph)
    mask: torch.Tensor  # 1.0 on response tokens
    ref_logp: torch.Tensor | None  # the reference's, when a KL is computed
    old_logp: torch.Tensor | None  # pi_old when the update has several mini-batches
    all_tokens: float  # the update's tokens over every rank
    all_sequences: int  # the update's sequences over every rank
    device: Any
    token_weight: str = "none"  # SFT: "chord_phi" weighs each token by p * (1 - p)


def sft_loss(m: MicroBatch, grpo, sums: StepSums) -> tuple[torch.Tensor, float, float]:
    """The NLL of the response tokens, as its share of the update's tokens. With CHORD's
    token weight (``chord_phi``, arXiv 2508.11408) each token's NLL is weighed by p * (1 - p),
    p = exp(logp) its probability, held constant (no gradient through the weight); the
    normaliser stays the token count, so the weight shrinks the loss of tokens the policy
    already finds certain or hopeless instead of being divided out again."""
    from ray_s3ft.algo.losses import masked_nll

    logp = m.logp
    if m.token_weight == "chord_phi":
        p = logp.detach().exp()
        logp = logp * (p * (1.0 - p))
    return masked_nll(logp, m.mask, normalizer=m.all_tokens), 0.0, 0.0


def grpo_micro_loss(m: MicroBatch, grpo, sums: StepSums) -> tuple[torch.Tensor, float, float]:
    """The clipped GRPO objective (``algo.grpo.grpo_loss``) with the KL term, truncated
    importance weights for samples of an older policy, and the engine-vs-pi_old logprob gap;
    scaled to its share of the update by the loss aggregation's rule."""
    from ray_s3ft.algo.grpo import AGGREGATION, grpo_loss

    mb, mask, tokens = m.mb, m.mask, m.mask.sum()
    # pi_old: the policy before this step's first update (one update: pi_theta)
    old_logp = m.logp.detach() if m.old_logp is None else m.old_logp
    weights = None
    if m.batch.is_cap is not None:  # samples of an older policy (async rollout)
        behaviour = mb.rollout_logprobs[:, 1:].to(m.device)
        raw = torch.exp(old_logp - behaviour)  # pi_old / pi_behaviour
        weights = raw.clamp(max=m.batch.is_cap)  # [b, T-1]
        sums.add(is_weight_tokens=(weights * mask).sum().item())
        sums.add(is_capped_tokens=((raw > m.batch.is_cap).float() * mask).sum().item())
    out = grpo_loss(
        m.logp,
        old_logp,
        mb.advantages.to(m.device),
        mask,
        eps_low=grpo.eps_low,
        eps_high=grpo.eps_high,
        beta=grpo.beta,
        ref_logprobs=m.ref_logp,
        agg=grpo.loss_agg,
        max_len=m.batch.max_new_tokens,
        is_weights=weights,
    )
    # grpo_loss averages within the micro-batch; rescale to its share of the update
    share = AGGREGATION[grpo.loss_agg].share(
        tokens.item(), m.all_tokens, mask.shape[0], m.all_sequences
    )
    sums.add(ratio_dev_tokens=out.ratio_dev * tokens.item())
    if mb.rollout_logprobs is not None:  # the engine against pi_old
        engine_logp = mb.rollout_logprobs[:, 1:].to(m.device)
        diff = (old_logp - engine_logp).abs() * mask  # [b, T-1]
        sums.add(logprob_diff_tokens=diff.sum().item())
        sums.max_diff.copy_(torch.maximum(sums.max_diff, diff.max().double().cpu()))
    return out.loss * share, out.pg_loss * share, out.clip_frac * tokens.item()


# mode -> (micro-batch, GRPOConfig, sums) -> (loss to back-propagate, pg share, clipped tokens)
LOSSES = {"sft": sft_loss, "grpo": grpo_micro_loss}
