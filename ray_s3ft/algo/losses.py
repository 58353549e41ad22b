"""Token-level likelihood pieces shared by SFT, SSR/S3FT (arXiv 2409.04787, 2502.08130) and GRPO.

Conventions: B = batch, T = sequence length, V = vocabulary. ``labels[b, t]`` is the token whose
probability ``logits[b, t]`` predicts, i.e. the caller has already shifted by one. ``mask`` is 1.0
on response tokens and 0.0 on prompt and padding: every method here trains on the
response only.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(labels) under ``logits``: [B, T, V], [B, T] -> [B, T], always float32.

    The log-softmax is taken in float32 even for bf16 logits: bf16 keeps 8 mantissa bits, and the
    PPO/GRPO ratio exp(logp - old_logp) amplifies a rounding error of ~1e-2 into a ~1% ratio
    error, enough to trip the clip. Negative labels (the usual -100 "ignore" id) give 0.0; those
    positions must be masked by the caller anyway.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    logp_all = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    safe = labels.clamp(min=0).long()  # [B, T]
    logp = logp_all.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return torch.where(labels < 0, torch.zeros_like(logp), logp)  # [B, T]


def masked_nll(logprobs: Tensor, mask: Tensor, normalizer: float | None = None) -> Tensor:
    """Per-token negative log-likelihood over the masked tokens of the whole batch (scalar).

    Dividing by the token count of the *batch* (not per sequence) weights every response token
    equally, the SFT objective (docs/methods.md §1). Under data parallelism each rank sees only its
    shard, so a learner passes ``normalizer`` = the global token count and the summed gradient
    equals the single-process one. No tokens -> 0.0 that still carries a (zero) gradient, so
    every rank runs the same backward.
    """
    mask = mask.to(logprobs.dtype)  # [B, T]
    total = -(logprobs * mask).sum()  # []
    if normalizer is None:
        return total / mask.sum().clamp(min=1.0)  # []
    if normalizer < 0:
        raise ValueError(f"normalizer must be >= 0, got {normalizer}")
    # A global count of 0 means this shard is empty too: total is 0, keep the result 0, not NaN.
    return total / max(float(normalizer), 1.0)  # []


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (scalar); 0.0 when the mask is empty."""
    mask = mask.to(x.dtype)  # [B, T]
    return (x * mask).sum() / mask.sum().clamp(min=1.0)  # []


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean per-token entropy of the predictive distribution over masked tokens (scalar, nats).

    Logged to watch for entropy collapse under RL, the failure DAPO's clip-higher targets
    (arXiv 2503.14476 §3.1). Computed in float32; the caller decides whether to keep the graph.
    """
    logp_all = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    # A -inf logit (a banned token) has p = 0 and log p = -inf; 0 * -inf is NaN, so floor log p
    # at the most negative float, which makes that term 0 with a finite gradient.
    logp_all = logp_all.clamp(min=torch.finfo(logp_all.dtype).min)  # [B, T, V]
    ent = -(logp_all.exp() * logp_all).sum(dim=-1)  # [B, T]
    return masked_mean(ent, mask)  # []
