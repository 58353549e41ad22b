"""GRPO: group-relative advantages and the clipped policy-gradient loss (docs/methods.md §4).

Papers: DeepSeekMath (arXiv 2402.03300) for the group baseline and the k3 KL term, DAPO
(arXiv 2503.14476) for clip-higher and token-level aggregation, Dr. GRPO (arXiv 2503.20783) for
dropping the std scaling and the per-sequence length normalisation.

Shapes: N = num_groups * G responses laid out group-major (the G samples of a prompt are
contiguous); B sequences of T tokens in a loss batch; ``mask`` is 1.0 on response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Aggregation:
    """One loss aggregation (``algorithm.grpo.loss_agg``), everything it decides in one place:
    how the advantages are scaled, how a batch's per-token losses become one number
    (``reduce``), and which share of an update a micro-batch's loss is (``share``; the
    learner scales by it, so that micro-batches and ranks add up to the whole batch)."""

    name: str
    scale_by_std: bool  # advantages divided by the group's std (Dr. GRPO drops it)
    by_tokens: bool  # a micro-batch's share of its update: its tokens (else its sequences)

    def reduce(self, per_token: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
        """A [B, T] per-token loss to a scalar with this aggregation's normaliser."""
        total = (per_token * mask).sum()  # []
        if self.name == "grpo":
            # DeepSeekMath eq. 3: 1/|o_i| per sequence, so a long answer's tokens weigh less each.
            per_seq = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # [B]
            return per_seq.mean()  # []
        if self.name == "dapo":
            # DAPO §3.3: every token of the batch weighs the same, long answers are not discounted.
            return total / mask.sum().clamp(min=1.0)  # []
        # Dr. GRPO §3.1: a constant (B * generation budget) removes the length bias entirely;
        # per group this is G * max_len.
        if max_len is None or max_len < 1:
            raise ValueError(f"agg='dr_grpo' needs max_len >= 1, got {max_len}")
        return total / (per_token.shape[0] * max_len)  # []

    def share(self, tokens: float, all_tokens: float, sequences: int, all_sequences: int) -> float:
        """A micro-batch's share of its update (over every rank's micro-batches)."""
        return tokens / max(all_tokens, 1.0) if self.by_tokens else sequences / all_sequences


AGGREGATION = {
    a.name: a
    for a in (
        Aggregation("grpo", scale_by_std=True, by_tokens=False),
        Aggregation("dapo", scale_by_std=True, by_tokens=True),
        Aggregation("dr_grpo", scale_by_std=False, by_tokens=False),
    )
}
AGGREGATIONS = tuple(AGGREGATION)  # config.LOSS_AGGS lists the same (tested)


@dataclass(frozen=True)
class GroupAdvantages:
    advantages: Tensor  # [N] float32, one scalar per response, broadcast over its tokens
    zero_std_groups: int  # groups whose rewards were all equal: no learning signal
    num_groups: int


def group_advantages(
    rewards: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> GroupAdvantages:
    """A_i = (R_i - mean_g) / (std_g + eps), or R_i - mean_g with ``scale_by_std=False``.

    std is the *population* std (divide by G, not G - 1), so the advantages of a group have
    exactly unit variance (up to eps) whatever G is; the sample std would shrink them by
    sqrt((G-1)/G), e.g. +-0.71 instead of +-1 for rewards [1, 0]. ``scale_by_std=False`` is
    Dr. GRPO's fix (§3.1): dividing by std up-weights near-unanimous groups, a difficulty bias.
    A group with all-equal rewards gets exactly 0 (not a rounding residue) and is counted;
    DAPO's dynamic sampling (§3.2) replaces such groups with new prompts' groups
    (``algorithm.grpo.dynamic_sampling``, ``Rewards.refill``).
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    n = rewards.numel()
    if n % group_size != 0:
        raise ValueError(
            f"number of rewards ({n}) is not divisible by group_size ({group_size}); "
            "rewards must hold whole groups, group-major"
        )
    num_groups = n // group_size
    r = rewards.float().view(num_groups, group_size)  # [num_groups, G]
    mean = r.mean(dim=1, keepdim=True)  # [num_groups, 1]
    adv = r - mean  # [num_groups, G]
    if scale_by_std:
        std = r.std(dim=1, unbiased=False, keepdim=True)  # [num_groups, 1]
        adv = adv / (std + eps)  # [num_groups, G]
    # Exact equality, not std < eps: rewards like [0.1]*G can give a mean that differs from 0.1
    # by one ulp, and dividing that residue by eps would make a large spurious advantage.
    flat = (r.max(dim=1).values == r.min(dim=1).values).unsqueeze(1)  # [num_groups, 1]
    adv = torch.where(flat, torch.zeros_like(adv), adv)  # [num_groups, G]
    return GroupAdvantages(
        advantages=adv.reshape(n),  # [N]
        zero_std_groups=int(flat.sum().item()),
        num_groups=num_groups,
    )


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref): exp(d) - d - 1 with d = ref - logp.

    Unbiased for the KL when tokens are sampled from pi_theta, and >= 0 for every token, unlike
    the plain log-ratio (Schulman's "Approximating KL divergence"; DeepSeekMath eq. 4).
    """
    delta = ref_logprobs - logprobs  # [B, T]
    return torch.exp(delta) - delta - 1.0  # [B, T]


@dataclass(frozen=True)
class GRPOLossOutput:
    loss: Tensor  # [] the value to backpropagate
    pg_loss: float  # the clipped-surrogate part alone, same aggregation as loss
    kl: float  # mean per-token k3 over masked tokens (0.0 without a reference)
    clip_frac: float  # fraction of masked tokens where the clipped branch won (zero gradient)
    ratio_mean: float  # mean of pi_theta / pi_old over masked tokens
    ratio_dev: float = 0.0  # mean |pi_theta / pi_old - 1| over masked tokens


def _aggregate(per_token: Tensor, mask: Tensor, agg: str, max_len: int | None) -> Tensor:
    if agg not in AGGREGATION:
        raise ValueError(f"unknown agg {agg!r}; allowed: {', '.join(AGGREGATIONS)}")
    return AGGREGATION[agg].reduce(per_token, mask, max_len)


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    beta: float,
    ref_logprobs: Tensor | None,
    agg: str,
    max_len: int | None = None,
    is_weights: Tensor | None = None,
) -> GRPOLossOutput:
    """Clipped GRPO objective, negated for minimisation (DeepSeekMath eq. 3, DAPO eq. 8).

    Per token: -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A) + beta * k3, r = exp(logp - old).
    Asymmetric eps is DAPO's clip-higher (eps_high=0.28): it lets unlikely tokens with positive
    advantage grow. ``beta > 0`` needs ``ref_logprobs``; a reference given with beta = 0 is only
    used to report ``kl``. ``max_len`` is used by ``agg='dr_grpo'`` only.

    ``is_weights`` [B, T]: per-token importance weights of off-policy samples (truncated IS,
    ``min(pi_old / pi_behaviour, cap)``, computed by the caller), multiplying the surrogate; the
    ratio r stays against ``old_logprobs``, so the clip works as on-policy.
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown agg {agg!r}; allowed: {', '.join(AGGREGATIONS)}")
    if not 0.0 <= eps_low < 1.0 or eps_high < 0.0:
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}")
    if beta < 0.0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0.0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs (the KL term would silently vanish)")
    if old_logprobs.shape != logprobs.shape or mask.shape != logprobs.shape:
        raise ValueError("logprobs, old_logprobs and mask must share one [B, T] shape")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"advantages must be [B]={logprobs.shape[0]}, got {tuple(advantages.shape)}"
        )

    mask = mask.to(logprobs.dtype)  # [B, T]
    adv = advantages.detach().to(logprobs.dtype).unsqueeze(1)  # [B, 1]
    ratio = torch.exp(logprobs - old_logprobs.detach())  # [B, T]
    unclipped = ratio * adv  # [B, T]
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv  # [B, T]
    surrogate = torch.minimum(unclipped, clipped)  # [B, T]
    if is_weights is not None:
        if is_weights.shape != logprobs.shape:
            raise ValueError("is_weights must share the [B, T] shape of logprobs")
        surrogate = surrogate * is_weights.detach().to(logprobs.dtype)  # [B, T]
    per_token = -surrogate  # [B, T]

    kl_value = 0.0
    if ref_logprobs is not None:
        k3 = kl_k3(logprobs, ref_logprobs.detach())  # [B, T]
        kl_value = _masked_item(k3, mask)
        if beta > 0.0:
            per_token = per_token + beta * k3  # [B, T]

    with torch.no_grad():
        # The clipped branch "wins" where it is strictly smaller: there the gradient is zero.
        was_clipped = (clipped < unclipped).to(mask.dtype)  # [B, T]  (before IS weighting)
        pg_value = _aggregate(-surrogate, mask, agg, max_len).item()
        clip_frac = _masked_item(was_clipped, mask)
        ratio_mean = _masked_item(ratio, mask)
        ratio_dev = _masked_item((ratio - 1.0).abs(), mask)
    return GRPOLossOutput(
        loss=_aggregate(per_token, mask, agg, max_len),
        pg_loss=pg_value,
        kl=kl_value,
        clip_frac=clip_frac,
        ratio_mean=ratio_mean,
        ratio_dev=ratio_dev,
    )


def _masked_item(x: Tensor, mask: Tensor) -> float:
    """Detached masked mean as a Python float (0.0 for an empty mask), for logging."""
    return ((x.detach() * mask).sum() / mask.sum().clamp(min=1.0)).item()
