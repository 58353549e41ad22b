"""What crosses actor boundaries: named dataclasses with shapes and units, never dict bags.

Tensors here are CPU tensors; Ray stores them in its object store once and readers map them.
Shapes: B sequences of T tokens; a rollout of P prompts with n samples each is laid out
prompt-major (the n samples of a prompt are contiguous), which is the group layout GRPO needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: a judge worker never loads torch
    import torch


@dataclass(frozen=True)
class Sampling:
    n: int = 1  # samples per prompt (GRPO's G)
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 96
    logprobs: bool = True  # each token's logprob wanted (text-only greedy calls: False)


@dataclass(frozen=True)
class Generation:
    prompt_ids: list[int]  # the chat-formatted prompt exactly as the engine saw it
    token_ids: list[int]  # sampled response tokens, including the end-of-turn token if emitted
    text: str  # decoded response, special tokens removed
    logprobs: list[float]  # log p of each sampled token under the engine's weights (nats)
    finished: bool  # stopped on end-of-turn (False = cut at max_new_tokens)


@dataclass(frozen=True)
class Answer:
    """A greedy answer's text and whether it ended: a cut one may still hold a number that
    flexible extraction reads, so it is never a training target (``algo.targets``)."""

    text: str  # decoded response, special tokens removed
    finished: bool  # stopped on end-of-turn (False = cut at max_new_tokens)


@dataclass(frozen=True)
class RolloutResult:
    generations: list[Generation]  # len(prompts) * n, prompt-major
    weights_version: int  # version of the weights that produced them
    seconds: float  # wall time of the engine call
    new_tokens: int  # response tokens generated


@dataclass(frozen=True)
class JudgeItem:
    prompt: str  # the question (without chat formatting)
    response: str  # candidate answer
    answer: str  # gold final answer (math), gold code (code) or gold text (llm)
    verifier: str  # "math" | "code" | "llm" | "exact" | "nq_match": the example's verifier
    tests: tuple[str, ...] = ()  # code: assert statements


@dataclass(frozen=True)
class Verdict:
    correct: bool | None  # None = the verifier could not decide (error, timeout, unparseable)
    reason: str = ""


@dataclass(frozen=True)
class TrainBatch:
    """One rank's share of a step's batch. Token ids, never text: the learner must score exactly
    the tokens the rollout engine sampled."""

    input_ids: torch.Tensor  # [B, T] int64, right-padded
    attention_mask: torch.Tensor  # [B, T] int64
    loss_mask: torch.Tensor  # [B, T] float32, 1.0 on response tokens (input positions)
    global_tokens: float  # response tokens in the whole step's batch, over all ranks
    advantages: torch.Tensor | None = None  # [B] float32, GRPO only
    rollout_logprobs: torch.Tensor | None = None  # [B, T] float32, engine logprobs, GRPO only
    max_new_tokens: int = 0  # generation budget, the Dr. GRPO normaliser
    is_cap: float | None = None  # off-policy rollouts: truncated importance weights, this cap
    # GRPO: the rollout's sampling temperature T (> 0); the learner scores logits / T, the
    # distribution the engine sampled from (SFT batches: 1.0, plain NLL)
    temperature: float = 1.0

    @property
    def num_sequences(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class MixStats:
    """A mix step's SFT part (``LearnerActor.mix_step``)."""

    mu: float  # the SFT loss's weight
    sft_loss: float  # the SFT part's loss (token mean NLL), before its weight
    sft_grad_norm: float  # its gradient's global L2 norm alone; NaN when not measured


@dataclass(frozen=True)
class StepStats:
    """One learner step, already reduced over ranks (every rank returns the same values)."""

    loss: float  # the objective that was minimised (token mean NLL for SFT)
    grad_norm: float  # global L2 norm before clipping
    kl: float  # mean per-token k3 KL to the reference over the batch's response tokens
    entropy: float  # mean per-token entropy of the policy over response tokens (nats; GRPO: at T)
    tokens: int  # response tokens trained on, all ranks
    sequences: int  # sequences trained on, all ranks
    pg_loss: float = 0.0  # GRPO: clipped-surrogate part
    clip_frac: float = 0.0  # GRPO: share of tokens where the clip was active
    logprob_diff: float = 0.0  # GRPO: mean |learner logp - engine logp| before the update
    logprob_max_diff: float = 0.0  # GRPO: the largest such difference over the batch
    is_weight: float = 1.0  # async GRPO: mean truncated importance weight over response tokens
    is_clip_frac: float = 0.0  # async GRPO: share of tokens whose weight hit the cap
    updates: int = 1  # optimizer steps taken (GRPO: algorithm.grpo.updates_per_batch)
    ratio_dev: float = 0.0  # GRPO: mean |pi / pi_old - 1| over tokens (0 with one update)
    lr: float = 0.0  # learning rate of the step's updates (mean over them), after warm-up
    mix: MixStats | None = None  # a mix step: its SFT part (the fields above: its GRPO part)
