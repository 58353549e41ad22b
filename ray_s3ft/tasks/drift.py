"""A label-free measure of forgetting: how far the policy has drifted from the base model on the
base model's own answers to general instructions.

``eval.drift: true`` adds the eval set ``drift``. Once per run, the base model answers the first
``eval.drift_size`` of ``PROMPTS`` greedily and scores its own tokens (``base.json`` in the run
directory keeps the prompt ids, the answer ids and their base logprobs; it is reused while its
model, prompts and token budget match). Each evaluation then scores the same tokens under the
current policy, on the engines (``RolloutWorker.token_logprobs``), and reports

    kl = mean over every answer token t of (log p_base(y_t) - log p_policy(y_t))

pooled over all answers: the Monte Carlo (k1) estimate of the per-token KL(base || policy) on
tokens the base model produced, with the base's greedy answer standing in for a sample of it.
Greedy tokens are not samples, so this is a log-ratio on the base model's likeliest answers, not
an unbiased KL; it is 0 for the base model itself and grows as the policy moves away from what
the base would say. ``k3`` is the mean of ``r - 1 - log r`` with ``r = p_policy / p_base``, the
non-negative estimator of the same KL (the GRPO loss's KL term). Both in nats per token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

NAME = "drift"  # the eval set's name; its scores are {"kl", "k3", "tokens", "n"}

PROMPTS = (
    "Give three tips for staying healthy.",
    "Explain what a noun is, with two examples.",
    "Write a short poem about the sea.",
    "What is the capital of France?",
    "Describe how to make a cup of tea.",
    "Summarize the water cycle in two sentences.",
    "Why is the sky blue?",
    "Name the planets of the solar system in order.",
    "Write a polite email asking a colleague for a meeting.",
    "What are the main differences between cats and dogs as pets?",
    "Translate 'good morning' into Spanish and French.",
    "Explain photosynthesis to a ten-year-old.",
    "List five fruits that are red.",
    "How do you say thank you in a job interview follow-up?",
    "What is the boiling point of water at sea level?",
    "Give a short definition of democracy.",
    "Write a Python function that returns the square of a number.",
    "What causes the seasons on Earth?",
    "Suggest a name for a small bakery.",
    "Explain the difference between weather and climate.",
    "Tell me a fun fact about octopuses.",
    "How many days are there in a leap year?",
    "Describe a good morning routine.",
    "What is the largest ocean on Earth?",
    "Write a one-sentence story about a lost key.",
    "Explain what a computer's memory is used for.",
    "Give two reasons why reading is useful.",
    "What is the opposite of 'generous'?",
    "How do plants get water from the soil?",
    "Write a haiku about autumn.",
    "What does a thermometer measure?",
    "Explain in simple words what gravity is.",
)


@dataclass(frozen=True)
class DriftItem:
    prompt: str
    prompt_ids: list[int]  # the chat-formatted prompt, as the engine saw it
    token_ids: list[int]  # the base model's greedy answer (end-of-turn token included)
    base_logprobs: list[float]  # log p_base of each answer token (nats)


def make_base(
    prompts: Sequence[str],
    greedy_tokens: Callable[[list[str]], list[tuple[list[int], list[int]]]],
    token_logprobs: Callable[[list[tuple[list[int], list[int]]]], list[list[float]]],
) -> list[DriftItem]:
    """The base model's greedy answers (prompt ids, answer ids) and its logprobs of them, both
    from engines that serve the base weights. The logprobs come from the same scoring pass the
    policy's later go through (not from decoding), so the base against itself gives exactly 0."""
    pairs = [(list(p), list(t)) for p, t in greedy_tokens(list(prompts))]
    logps = token_logprobs(pairs)
    return [
        DriftItem(q, p, t, list(lp)) for q, (p, t), lp in zip(prompts, pairs, logps, strict=True)
    ]


def load_or_make_base(path: Path, fingerprint: dict, make: Callable[[], list[DriftItem]]):
    """``make()`` once, kept in ``path`` with ``fingerprint``; reused while it matches."""
    path = Path(path)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == fingerprint:
            return [DriftItem(**x) for x in saved["items"]]
    items = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "items": [asdict(x) for x in items]}))
    tmp.replace(path)
    return items


def drift_score(items: Sequence[DriftItem], policy_logprobs: Sequence[Sequence[float]]) -> dict:
    """``{"kl", "k3", "tokens", "n"}``: see the module docstring. Answers with no token add
    nothing; no token at all gives kl = k3 = None."""
    k1 = k3 = 0.0
    tokens = 0
    for item, pol in zip(items, policy_logprobs, strict=True):
        if len(pol) != len(item.base_logprobs):
            raise ValueError(f"{len(pol)} policy logprobs for {len(item.base_logprobs)} tokens")
        for b, p in zip(item.base_logprobs, pol, strict=True):
            log_r = p - b  # log p_policy / p_base
            k1 -= log_r
            k3 += math.expm1(log_r) - log_r
            tokens += 1
    return {
        "kl": k1 / tokens if tokens else None,
        "k3": k3 / tokens if tokens else None,
        "tokens": tokens,
        "n": len(items),
    }


def fingerprint(model: str, prompts: Sequence[str], max_new_tokens: int) -> dict:
    return {"model": str(model), "prompts": list(prompts), "max_new_tokens": max_new_tokens}
