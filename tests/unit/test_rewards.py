"""GRPO rewards and the step's figures (ray_s3ft/run/rewards.py): the soft overlong penalty,
the share of samples cut at the budget, and dynamic sampling's counts over all its rounds.
The judge and the sampler are plain stand-ins: a response's text says its verdict."""

import pytest
import torch

from ray_s3ft.config import load_config
from ray_s3ft.run.controller import TrainState
from ray_s3ft.run.metrics import EVERY_ROW
from ray_s3ft.run.rewards import Rewards
from ray_s3ft.tasks.types import Example
from ray_s3ft.timing import Timer
from ray_s3ft.workers.types import Generation, Verdict

VERDICT = {"right": True, "wrong": False, "?": None}


def _ex(i):
    return Example(f"e{i}", "arith", f"q{i}", "gold", "7")


def _gen(text, n_tokens=3, finished=True):
    return Generation([1], [2] * n_tokens, text, [0.0] * n_tokens, finished=finished)


class JudgedByText(Rewards):
    def verdicts(self, items, state):
        return [Verdict(VERDICT[it.response]) for it in items]


class Rounds:
    """``more``: the groups of one further prompt per call, from a list."""

    def __init__(self, groups):
        self.groups, self.calls = list(groups), 0

    def more(self, step, state, timer, n, round):
        assert n == 1
        self.calls += 1
        return [_ex(10 + self.calls)], self.groups.pop(0)


def test_the_soft_penalty_is_added_to_the_verdicts_reward_and_cut_samples_are_counted():
    cfg = load_config(overrides=[
        "algorithm.grpo.group_size=4", "algorithm.grpo.overlong=penalty",
        "algorithm.grpo.overlong_cache=0.2", "rollout.max_new_tokens=10",
    ])  # fmt: skip
    # budget 10, L_cache 2: free up to 8 tokens; 9 tokens -0.5; 10 (cut) -1
    gens = [_gen("right", 5), _gen("right", 9), _gen("right", 10, False), _gen("wrong", 10, False)]
    state = TrainState()
    rewards = JudgedByText(cfg, None, None).score([_ex(0)], gens, state)
    torch.testing.assert_close(rewards, torch.tensor([1.0, 0.5, 0.0, -1.0]))
    assert state.grpo.unfinished == 0.5 and state.judged["unfinished"] == 2
    assert state.grpo.reward_mean == pytest.approx(0.125)
    row = dict(map(state.grpo.key, EVERY_ROW))
    assert row["rollout/unfinished"] == 0.5
    # keep: the verdict's reward alone
    keep = load_config(overrides=["algorithm.grpo.group_size=4", "rollout.max_new_tokens=10"])
    rewards = JudgedByText(keep, None, None).score([_ex(0)], gens, TrainState())
    assert rewards.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_dynamic_sampling_counts_the_undecided_and_cut_samples_of_every_round():
    cfg = load_config(overrides=[
        "algorithm.grpo.group_size=2", "algorithm.grpo.dynamic_sampling=true",
        "algorithm.grpo.max_extra_rollouts=2", "learner.micro_batch_size=4",
    ])  # fmt: skip
    # round 0: e0 [?, wrong] flat (1 undecided, 1 cut), e1 [right, wrong] informative
    # round 1: [?, ?] flat (2 undecided, 1 cut); round 2: [right, wrong] informative
    # -> 3 undecided and 2 cut of 8 samples (the last round alone: 0 and 0)
    sampler = Rounds([[_gen("?"), _gen("?", finished=False)], [_gen("right"), _gen("wrong")]])
    rewards = JudgedByText(cfg, None, sampler)
    state = TrainState()
    gens = [_gen("?", finished=False), _gen("wrong"), _gen("right"), _gen("wrong")]
    first = rewards.score([_ex(0), _ex(1)], gens, state)
    exs, kept, r = rewards.refill(Timer(), 0, state, [_ex(0), _ex(1)], gens, first)
    assert sampler.calls == 2 and [ex.id for ex in exs] == ["e1", "e12"]
    assert r.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert state.grpo.undecided == 3 and state.grpo.undecided_frac == 3 / 8
    assert state.grpo.unfinished == 2 / 8
    assert state.grpo.reward_mean == 2 / 8
    assert state.judged["undecided"] == 3 and state.judged["unfinished"] == 2
    assert state.judged["samples"] == 8 and state.grpo.dynamic_rounds == 2
