"""GRPO samples cut at the generation budget (``algorithm.grpo.overlong``), after DAPO
(arXiv 2503.14476 §3.4).

A cut sample's reward says little: a wrong verdict punishes reasoning that was merely long, and
flexible extraction can read a number from the middle of an unfinished derivation as a right
answer. Three ways to treat it:

- ``keep``: judged and trained on like a finished one (verl's default, and this project's);
- ``mask``: overlong filtering. A cut sample's tokens get loss weight 0 (``loss_weights``): no
  policy-gradient and no KL term, and they are left out of the token normaliser of ``dapo``
  aggregation. Its reward still enters its group's mean and std, as the advantages are
  computed before the loss mask is applied (DAPO, and TRL's ``mask_truncated_completions``),
  and the per-sequence aggregations (``grpo``, ``dr_grpo``) still count it in their sequence
  count: the batch's normalisers do not depend on how many samples were cut;
- ``penalty``: soft overlong punishment (``soft_penalty``, DAPO eq. 13) added to the reward.

Shapes: N samples, group-major as in ``algo.grpo``.
"""

from __future__ import annotations

import torch
from torch import Tensor

OVERLONG = ("keep", "mask", "penalty")  # config.schema.OVERLONG_MODES lists the same (tested)


def soft_penalty(lengths: Tensor, max_len: int, cache: float) -> Tensor:
    """DAPO eq. 13: 0 for a response of up to L_max - L_cache tokens, then falling linearly to
    -1 at L_max (and -1 beyond). ``lengths`` [N]: response tokens, end-of-turn included;
    ``max_len`` L_max: the generation budget; ``cache`` L_cache, in (0, L_max] tokens. DAPO uses
    L_max 20480 with L_cache 4096, a fifth of it (``algorithm.grpo.overlong_cache``: 0.2)."""
    if max_len < 1 or not 0 < cache <= max_len:
        raise ValueError(f"need max_len >= 1 and 0 < cache <= max_len, got {max_len}, {cache}")
    over = lengths.float() - (max_len - cache)  # [N] tokens into the cache
    return -(over / cache).clamp(0.0, 1.0)  # [N]


def loss_weights(finished: Tensor, mode: str) -> Tensor:
    """Each sample's loss weight [N] (float32): 0.0 for a cut sample (``finished`` False)
    under ``mask``, else 1.0."""
    if mode not in OVERLONG:
        raise ValueError(f"unknown overlong mode {mode!r}; allowed: {', '.join(OVERLONG)}")
    if mode != "mask":
        return torch.ones(finished.shape, dtype=torch.float32)  # [N]
    return finished.to(torch.float32)  # [N]
