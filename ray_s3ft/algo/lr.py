"""The learning rate of each optimizer step: a linear warm-up per mode.

SASR interleaves SFT and GRPO steps on one set of weights, each mode with its own learning rate
(``learner.lr``, ``learner.grpo_lr``). Without a warm-up the first GRPO step after the SFT
warm-up runs at the full ``grpo_lr`` at once; with a fresh Adam state
(``learner.optimizer_state: per_mode``) that first step moves every weight by about
``grpo_lr``, since Adam's first update is m / sqrt(v) = sign(g). A warm-up counted in the mode's
own optimizer steps ramps each mode in from its first step, whenever the schedule first picks it.
"""

from __future__ import annotations


def warmup_lr(base_lr: float, step: int, warmup_steps: int) -> float:
    """``base_lr * min(1, (step + 1) / (warmup_steps + 1))``: the mode's ``step``-th optimizer
    step (from 0). The W warm-up steps run at 1/(W+1), ..., W/(W+1) of ``base_lr``, never at 0
    (unlike a ramp from step / W, whose first step would be wasted); W = 0 is ``base_lr``."""
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"need step >= 0 and warmup_steps >= 0, got {step}, {warmup_steps}")
    return base_lr * min(1.0, (step + 1) / (warmup_steps + 1))
