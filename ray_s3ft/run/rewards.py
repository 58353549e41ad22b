"""GRPO rewards: every sample judged, a verdict made a reward, and DAPO's dynamic sampling.

``Rewards.score`` judges a step's samples on the judge actors (a program past
``judge.sandbox_timeout_s``, or a hung judge actor's missing verdicts, are undecided) and gives
1 for correct, 0 for wrong and ``algorithm.grpo.undecided_reward`` for undecided; with
``algorithm.grpo.overlong: penalty`` DAPO's soft length penalty is added (``algo.overlong``).
With ``algorithm.grpo.dynamic_sampling``, ``Rewards.refill`` replaces groups whose rewards are
all equal by groups of further prompts. The figures go to the run's ``TrainState`` (``grpo``:
the step's, over all its rounds; ``judged``: the run's; ``faults``).
"""

from __future__ import annotations

import torch

from ray_s3ft.algo.overlong import soft_penalty
from ray_s3ft.config import Config
from ray_s3ft.run.sampling import SyncSampler, sample_digest
from ray_s3ft.tasks.types import Example
from ray_s3ft.timing import Timer
from ray_s3ft.workers.group import ActorGroup
from ray_s3ft.workers.judge import judge_on
from ray_s3ft.workers.types import JudgeItem, Verdict


class Rewards:
    def __init__(self, cfg: Config, judge: ActorGroup, sampler: SyncSampler) -> None:
        self.cfg, self.judge, self.sampler = cfg, judge, sampler
        # each sample's verdict (by id of its Generation) since the controller cleared it
        # (algorithm.rehearse_rollouts reads which samples the judge accepted)
        self.correct: dict[int, bool | None] = {}

    def score(self, examples: list[Example], gens, state) -> torch.Tensor:
        """The rewards of ``gens`` (G per example, example-major): [P * G]. The step's
        figures (``state.grpo``) are those of these samples; ``refill`` sums its rounds'."""
        grpo = self.cfg.algorithm.grpo
        items = [
            JudgeItem(ex.prompt, gen.text, ex.answer, ex.verifier, tuple(ex.tests))
            for i, gen in enumerate(gens)
            for ex in [examples[i // grpo.group_size]]
        ]
        verdicts = self.verdicts(items, state)
        self.correct.update((id(g), v.correct) for g, v in zip(gens, verdicts, strict=True))
        rewards = torch.tensor([reward(v, grpo) for v in verdicts])  # [N]
        if grpo.overlong == "penalty":
            budget = self.cfg.rollout.max_new_tokens
            lengths = torch.tensor([len(g.token_ids) for g in gens])  # [N]
            rewards = rewards + soft_penalty(lengths, budget, grpo.overlong_cache * budget)
        undecided = sum(v.correct is None for v in verdicts)
        judged = state.judged
        judged["samples"] += len(verdicts)
        judged["reward_sum"] += rewards.sum().item()
        judged["undecided"] += undecided
        judged["unfinished"] = judged.get("unfinished", 0) + unfinished(gens)
        step_figures(state.grpo, gens, undecided, rewards)
        return rewards

    def verdicts(self, items: list[JudgeItem], state) -> list[Verdict]:
        """Verdicts in order; a hung judge actor's missing ones are undecided (``judge_on``)."""
        verdicts, late = judge_on(self.judge, items, self.cfg.judge.timeout_s)
        state.faults["judge_timeouts"] += late
        return verdicts

    def refill(self, timer: Timer, step: int, state, examples: list[Example], gens, rewards):
        """DAPO's dynamic sampling (arXiv 2503.14476 §3.2): a group whose rewards are all equal
        has zero advantage and only dilutes the batch's normalisers. Drop such groups and
        sample groups of the next prompts in their place, with the current weights, at most
        ``algorithm.grpo.max_extra_rollouts`` rounds; if groups are still missing then, the
        batch is filled with flat groups (its size stays the same). Returns the batch's
        (examples, generations, rewards), informative groups first."""
        grpo, G = self.cfg.algorithm.grpo, self.cfg.algorithm.grpo.group_size
        P = len(examples)
        kept, flat = split_flat_groups(examples, gens, rewards, G)
        # ``score`` of the first round set the step's figures for its samples
        rounds, all_gens, all_rewards, undecided = 0, list(gens), [rewards], state.grpo.undecided
        while len(kept) < P and rounds < grpo.max_extra_rollouts:
            rounds += 1
            exs, more = self.sampler.more(step, state, timer, P - len(kept), rounds)
            r = timer.run("judge", self.score, exs, more, state)
            all_gens, undecided = all_gens + more, undecided + state.grpo.undecided
            all_rewards.append(r)
            k, f = split_flat_groups(exs, more, r, G)
            kept, flat = kept + k, flat + f
        batch = (kept + flat)[:P]
        dropped = len(kept) + len(flat) - len(batch)  # flat groups left out (and no others)
        last = state.grpo
        last.dynamic_rounds, last.dynamic_dropped = rounds, dropped
        judged = state.judged
        judged["extra_rounds"] = judged.get("extra_rounds", 0) + rounds
        judged["dropped_groups"] = judged.get("dropped_groups", 0) + dropped
        step_figures(last, all_gens, undecided, torch.cat(all_rewards))  # every round's samples
        last.sample_digest = sample_digest([g for _, gs, _ in batch for g in gs])
        return (
            [ex for ex, _, _ in batch],
            [g for _, gs, _ in batch for g in gs],
            torch.cat([r for _, _, r in batch]),
        )


def split_flat_groups(examples: list, gens: list, rewards: torch.Tensor, group_size: int):
    """Groups (example, its G generations, its G rewards) split into those with some reward
    spread (kept) and those whose rewards are all equal (flat: zero advantage), in order."""
    kept, flat = [], []
    for j, ex in enumerate(examples):
        r = rewards[j * group_size : (j + 1) * group_size]
        group = (ex, gens[j * group_size : (j + 1) * group_size], r)
        (flat if bool((r == r[0]).all()) else kept).append(group)
    return kept, flat


def unfinished(gens) -> int:
    """Samples cut at the generation budget."""
    return sum(not g.finished for g in gens)


def step_figures(stats, gens, undecided: int, rewards: torch.Tensor) -> None:
    """The step's figures in ``stats`` (``GRPOStats``) from all of its judged samples."""
    n = max(len(gens), 1)
    stats.undecided, stats.undecided_frac = undecided, undecided / n
    stats.unfinished = unfinished(gens) / n
    stats.reward_mean = rewards.mean().item()


def reward(verdict: Verdict, grpo) -> float:
    """A verdict's GRPO reward: 1 correct, 0 wrong, ``grpo.undecided_reward`` undecided."""
    if verdict.correct is None:
        return float(grpo.undecided_reward)
    return 1.0 if verdict.correct else 0.0
