"""Step-wise choice between an SFT step and a GRPO step: SASR and its baselines (docs/methods.md §5),
and the one-step mixes of both (docs/methods.md §6).

SASR (arXiv 2505.13026) runs W pure SFT warm-up steps, then draws each step's mode from a
probability driven by the SFT gradient norm. ``SASRSchedule``'s default is the paper's rule as
docs/methods.md §5 records it, ``p_t = G_last / (G_last + gamma * G_warm)``; probes,
an EMA, a KL term and clipping are our extensions, off unless configured. The baselines
``sft``, ``grpo``, ``sft_then_grpo`` and ``fixed_ratio`` share this interface so one controller
runs them all by config. Steps are 0-indexed; step < warmup_steps is warm-up.

A mix step (``mix``, ``sasr_soft``) is neither: one optimizer step on (1 - mu) * GRPO + mu * SFT.
``mix`` takes mu from a schedule (constant, or a linear or cosine decay, as CHORD's global mu,
arXiv 2508.11408); ``sasr_soft`` (ours) takes SASR's p_sft as mu instead of drawing a mode from
it. A mu of exactly 1 or 0 is a plain SFT or GRPO step.

Every kind tracks the same signals (so baseline logs are comparable with SASR's):
  G_t    the SFT grad norm (L2, before clipping) of the latest SFT step (G_last), or with
         ema_decay > 0 an EMA over SFT steps and probes; re-anchored to G_warm at the end of
         warm-up.
  G_warm the SFT grad norm observed at step W-1 (absent when W = 0).
  KL_t   the most recent observed KL; 0.0 until the first observation (docs/methods.md §5).
Non-finite observations (an fp16 overflow step) are skipped and counted, not folded into G_t.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ray_s3ft.config import MIX_DECAYS as DECAYS  # the one list each, config checks included
from ray_s3ft.config import SCHEDULE_KINDS, MixConfig

MODES = ("sft", "grpo", "mix")
KL_ROUNDING = 1e-6  # a mean k3 this far below 0 is float rounding, not a negative KL


@dataclass(frozen=True)
class Decision:
    mode: str  # "sft" | "grpo" | "mix"
    # probability of SFT the draw used (1.0 / 0.0 for deterministic steps); of a mix step,
    # mu: the weight of its SFT loss
    p_sft: float
    probe: bool = False  # run a gradient-only SFT probe (no optimizer step) at this GRPO step

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")


def _draw(seed: int, step: int, p_sft: float) -> str:
    """Bernoulli(p_sft) from a generator keyed by (seed, step) alone, never by history, so a
    resumed run draws the same u at every step; sft iff u < p_sft (p=1 -> always, p=0 -> never).
    """
    u = np.random.default_rng([seed, step]).random()
    return "sft" if u < p_sft else "grpo"


class Schedule:
    """Base: signal tracking, checkpointing and logging; subclasses implement ``_decide``.

    ``decide`` does not change the signals, so calling it twice for a step is harmless; the
    controller reports what happened with ``observe`` (every step) and ``observe_probe``.
    """

    kind = ""

    def __init__(self, *, seed: int, warmup_steps: int = 0, ema_decay: float = 0.0) -> None:
        _check(isinstance(seed, int) and seed >= 0, "seed", "an int >= 0", seed)
        _check(warmup_steps >= 0, "warmup_steps", ">= 0", warmup_steps)
        _check(0.0 <= ema_decay < 1.0, "ema_decay", "in [0, 1)", ema_decay)
        self.seed, self.warmup_steps, self.ema_decay = seed, warmup_steps, ema_decay
        self.grad_norm: float | None = None  # G_t; None = not observed yet
        self.grad_norm_warm: float | None = None  # G_warm; None = not observed yet
        self.kl = 0.0  # KL_t
        self.grpo_steps = 0  # GRPO steps observed, for the probe cadence
        self.last_p_sft: float | None = None  # p_sft of the latest decide(), for stats()
        self.nonfinite_obs = 0

    def decide(self, step: int) -> Decision:
        _check(step >= 0, "step", ">= 0", step)
        decision = self._decide(step)
        self.last_p_sft = decision.p_sft
        return decision

    def _decide(self, step: int) -> Decision:
        raise NotImplementedError

    def observe(
        self, step: int, mode: str, *, sft_grad_norm: float | None = None, kl: float | None = None
    ) -> None:
        """Learner stats after ``step`` ran in ``mode``: SFT grad norm on SFT steps, KL on GRPO;
        a mix step may report both (the SFT part's norm, measured alone, and the KL)."""
        _check(mode in MODES, "mode", f"one of {MODES}", mode)
        if mode == "grpo":
            self.grpo_steps += 1
        if sft_grad_norm is not None and self._finite(sft_grad_norm, "sft_grad_norm"):
            self._update_grad_norm(sft_grad_norm)
            if step == self.warmup_steps - 1:
                # End of warm-up: G_warm is this norm, and G_t restarts from it so the gate's
                # ratio G_t / G_warm starts at exactly 1 (first p_sft = 1 / (1 + gamma) at
                # KL = 0) instead of inheriting the lagging EMA of early, larger warm-up norms.
                self.grad_norm_warm = self.grad_norm = float(sft_grad_norm)
        # k3 >= 0 per token; float rounding of exp(d) - d - 1 makes a rare -1e-9 where the
        # policy equals its reference (no dropout in RL: the first GRPO step's KL is 0): clamped
        if kl is not None and self._finite(kl, "kl", tolerance=KL_ROUNDING):
            self.kl = max(float(kl), 0.0)

    def observe_probe(self, step: int, sft_grad_norm: float) -> None:
        """SFT grad norm from a gradient-only probe at a GRPO step: keeps G_t from freezing."""
        if self._finite(sft_grad_norm, "sft_grad_norm"):
            self._update_grad_norm(sft_grad_norm)

    def _finite(self, value: float, name: str, tolerance: float = 0.0) -> bool:
        if not math.isfinite(value):
            self.nonfinite_obs += 1
            return False
        _check(value >= -tolerance, name, ">= 0", value)
        return True

    def _update_grad_norm(self, g: float) -> None:
        ema = self.grad_norm
        self.grad_norm = (
            float(g) if ema is None else self.ema_decay * ema + (1 - self.ema_decay) * g
        )

    _STATE = ("grad_norm", "grad_norm_warm", "kl", "grpo_steps", "last_p_sft", "nonfinite_obs")

    def state_dict(self) -> dict[str, Any]:
        """Mutable state only, JSON-plain (None, not NaN, for unobserved); config stays config."""
        return {"kind": self.kind, **{k: getattr(self, k) for k in self._STATE}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"state is for schedule kind {state.get('kind')!r}, not {self.kind!r}")
        for key in self._STATE:
            setattr(self, key, state[key])

    def stats(self) -> dict[str, float]:
        """For logging: NaN marks a value not observed yet (G_t, G_warm, p_sft before decide());
        kl is 0.0 until observed because that is the value the gate uses."""
        nan = float("nan")
        return {
            "p_sft": nan if self.last_p_sft is None else self.last_p_sft,
            "grad_norm": nan if self.grad_norm is None else self.grad_norm,
            "grad_norm_warm": nan if self.grad_norm_warm is None else self.grad_norm_warm,
            "kl": self.kl,
            "nonfinite_obs": float(self.nonfinite_obs),
        }


class ConstantSchedule(Schedule):
    """The pure baselines ``sft`` (p = 1) and ``grpo`` (p = 0): the same mode every step."""

    def __init__(self, mode: str, **kw: Any) -> None:
        _check(mode in MODES, "mode", f"one of {MODES}", mode)
        super().__init__(**kw)
        self.kind = mode

    def _decide(self, step: int) -> Decision:
        return Decision(self.kind, 1.0 if self.kind == "sft" else 0.0)


class SFTThenGRPOSchedule(Schedule):
    """The static two-stage baseline: SFT for step < W, GRPO from step W on."""

    kind = "sft_then_grpo"

    def _decide(self, step: int) -> Decision:
        return Decision("sft", 1.0) if step < self.warmup_steps else Decision("grpo", 0.0)


class FixedRatioSchedule(Schedule):
    """Static interleaving: after the (optional) warm-up, SFT with probability p every step."""

    kind = "fixed_ratio"

    def __init__(self, *, p_sft: float, **kw: Any) -> None:
        super().__init__(**kw)
        _check(0.0 <= p_sft <= 1.0, "p_sft", "in [0, 1]", p_sft)
        self.p_sft = p_sft

    def _decide(self, step: int) -> Decision:
        if step < self.warmup_steps:
            return Decision("sft", 1.0)
        return Decision(_draw(self.seed, step, self.p_sft), self.p_sft)


class SASRSchedule(Schedule):
    """The SASR gate, after W >= 1 warm-up SFT steps (docs/methods.md §5):

    p_sft = clip( G_t / (G_t + gamma * G_warm) * (1 + lam * KL_t / kl_target), p_min, p_max )

    With the defaults (lam = 0, p_min = 0, p_max = 1, ema_decay = 0, probe_every = 0) this is the
    paper's rule: G_t = G_last moves on SFT steps only, p = 1 / (1 + gamma) right after warm-up,
    and an SFT step whose gradient is still large (far from the demonstrations) makes the next
    step more likely SFT; as the SFT loss settles, GRPO takes over. Our options, each labelled
    as ours: gradient-only probes every ``probe_every`` GRPO steps keep G_t from freezing during
    a run of GRPO steps; ``lam`` adds the policy's KL to its post-warm-up reference (which can feed
    itself: SFT on gold-style targets raises KL, which raises p_sft). If G_t = G_warm = 0 the SFT
    loss is flat, so the ratio is taken as 0 instead of 0/0.
    """

    kind = "sasr"

    def __init__(
        self,
        *,
        gamma: float,
        lam: float,
        kl_target: float,
        p_min: float,
        p_max: float,
        probe_every: int,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        _check(self.warmup_steps >= 1, "warmup_steps", ">= 1 for sasr", self.warmup_steps)
        _check(gamma > 0.0, "gamma", "> 0", gamma)
        _check(lam >= 0.0, "lam", ">= 0", lam)
        _check(kl_target > 0.0, "kl_target", "> 0", kl_target)
        _check(0.0 <= p_min <= p_max, "p_min", f"in [0, p_max={p_max}]", p_min)
        _check(p_max <= 1.0, "p_max", "<= 1", p_max)
        _check(probe_every >= 0, "probe_every", ">= 0 (0 = no probes)", probe_every)
        self.gamma, self.lam, self.kl_target = gamma, lam, kl_target
        self.p_min, self.p_max, self.probe_every = p_min, p_max, probe_every

    def gate(self) -> float:
        """p_sft from the current signals (see the class docstring)."""
        g_t, g_warm = self.grad_norm, self.grad_norm_warm
        if g_warm is None or g_t is None:
            raise RuntimeError(
                f"sasr: no SFT grad norm observed at the last warm-up step "
                f"(step {self.warmup_steps - 1}); call observe(step, 'sft', sft_grad_norm=...)"
            )
        denom = g_t + self.gamma * g_warm
        ratio = g_t / denom if denom > 0.0 else 0.0
        p = ratio * (1.0 + self.lam * self.kl / self.kl_target)
        return min(max(p, self.p_min), self.p_max)

    def _decide(self, step: int) -> Decision:
        if step < self.warmup_steps:
            return Decision("sft", 1.0)
        p = self.gate()
        mode = _draw(self.seed, step, p)
        # This would be GRPO step number grpo_steps + 1; probe on every probe_every-th one.
        probe = (
            mode == "grpo"
            and self.probe_every > 0
            and (self.grpo_steps + 1) % self.probe_every == 0
        )
        return Decision(mode, p, probe)


def _mix(mu: float) -> Decision:
    """A mix step of SFT weight ``mu``; at 1 or 0 one loss has no weight: a plain step."""
    if mu >= 1.0:
        return Decision("sft", 1.0)
    if mu <= 0.0:
        return Decision("grpo", 0.0)
    return Decision("mix", mu)


class MixSchedule(Schedule):
    """W warm-up SFT steps, then one-step mixes whose SFT weight mu goes from ``mu_start`` to
    ``mu_end`` over ``decay_steps`` steps (constant: mu_start throughout). With t the steps
    since the warm-up and f = min(t / decay_steps, 1):

        linear: mu = mu_start + (mu_end - mu_start) * f
        cosine: mu = mu_end + (mu_start - mu_end) * (1 + cos(pi * f)) / 2
    """

    kind = "mix"

    def __init__(
        self, *, mu_start: float, mu_end: float, decay: str, decay_steps: int, **kw: Any
    ) -> None:
        super().__init__(**kw)
        _check(0.0 <= mu_start <= 1.0, "mu_start", "in [0, 1]", mu_start)
        _check(0.0 <= mu_end <= 1.0, "mu_end", "in [0, 1]", mu_end)
        _check(decay in DECAYS, "decay", f"one of {DECAYS}", decay)
        _check(decay_steps >= 1, "decay_steps", ">= 1", decay_steps)
        self.mu_start, self.mu_end, self.decay = mu_start, mu_end, decay
        self.decay_steps = decay_steps

    def mu(self, step: int) -> float:
        if self.decay == "constant":
            return self.mu_start
        f = min(max(step - self.warmup_steps, 0) / self.decay_steps, 1.0)
        if self.decay == "linear":
            return self.mu_start + (self.mu_end - self.mu_start) * f
        return self.mu_end + (self.mu_start - self.mu_end) * (1.0 + math.cos(math.pi * f)) / 2

    def _decide(self, step: int) -> Decision:
        if step < self.warmup_steps:
            return Decision("sft", 1.0)
        return _mix(self.mu(step))


class SoftSASRSchedule(SASRSchedule):
    """SASR without the coin (ours): after the warm-up every step is a mix whose SFT weight mu
    is the gate's p_sft (``SASRSchedule.gate``). Each mix step measures its SFT part's gradient
    norm alone, so G_t moves every step and probes have nothing to add (``probe_every`` is not
    used)."""

    kind = "sasr_soft"

    def _decide(self, step: int) -> Decision:
        if step < self.warmup_steps:
            return Decision("sft", 1.0)
        return _mix(self.gate())


def make_schedule(
    kind: str,
    *,
    seed: int,
    warmup_steps: int = 0,
    p_sft: float = 0.5,
    gamma: float = 1.0,
    lam: float = 0.0,
    kl_target: float = 0.05,
    p_min: float = 0.0,
    p_max: float = 1.0,
    ema_decay: float = 0.0,
    probe_every: int = 0,
    mix: dict[str, Any] | None = None,
    total_steps: int = 0,
) -> Schedule:
    """Build a schedule by name; parameters a kind does not use are ignored (one config serves
    all kinds). ``sft`` and ``grpo`` ignore warmup_steps: they are the pure baselines. ``mix``:
    ``mu_start``, ``mu_end``, ``decay``, ``decay_steps`` (0: to the last of ``total_steps``,
    the run's steps; other keys, ``token_weight``, are the learner's)."""
    base: dict[str, Any] = {"seed": seed, "warmup_steps": warmup_steps, "ema_decay": ema_decay}
    if kind in ("sft", "grpo"):
        return ConstantSchedule(kind, **{**base, "warmup_steps": 0})
    if kind == "sft_then_grpo":
        _check(warmup_steps >= 1, "warmup_steps", ">= 1 for sft_then_grpo", warmup_steps)
        return SFTThenGRPOSchedule(**base)
    if kind == "fixed_ratio":
        return FixedRatioSchedule(p_sft=p_sft, **base)
    if kind == "mix":
        m = {**dataclasses.asdict(MixConfig()), **(mix or {})}
        # decay_steps 0: mu_end on the run's last step, total_steps - 1 (at least one step on)
        steps = m["decay_steps"] or max(total_steps - 1 - warmup_steps, 1)
        return MixSchedule(
            mu_start=m["mu_start"], mu_end=m["mu_end"], decay=m["decay"], decay_steps=steps,
            **base,
        )  # fmt: skip
    if kind in ("sasr", "sasr_soft"):
        cls = SASRSchedule if kind == "sasr" else SoftSASRSchedule
        return cls(
            gamma=gamma,
            lam=lam,
            kl_target=kl_target,
            p_min=p_min,
            p_max=p_max,
            probe_every=probe_every,
            **base,
        )
    raise ValueError(f"unknown schedule kind {kind!r}; allowed: {', '.join(SCHEDULE_KINDS)}")


def _check(ok: bool, name: str, requirement: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{name} must be {requirement}, got {value!r}")
