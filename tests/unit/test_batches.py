"""Batch layout: the learner must score exactly the sampled tokens at the right positions."""

import dataclasses

import pytest
import torch

from ray_s3ft.workers.batches import grpo_batch, shard
from ray_s3ft.workers.types import Generation


def _gen(prompt, tokens, logprobs):
    return Generation(prompt, tokens, "", logprobs, finished=True)


def test_grpo_batch_aligns_tokens_mask_and_engine_logprobs():
    gens = [_gen([5, 6, 7], [8, 9], [-0.5, -0.25]), _gen([5], [10, 11, 12], [-1.0, -2.0, -3.0])]
    b = grpo_batch(gens, torch.tensor([1.0, -1.0]), pad_id=0, max_new_tokens=4)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 10, 11, 12, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # response tokens are at input positions 3-4 and 1-3
    assert b.loss_mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]
    assert b.rollout_logprobs.tolist() == [[0, 0, 0, -0.5, -0.25], [0, -1.0, -2.0, -3.0, 0]]
    assert b.global_tokens == 5.0 and b.max_new_tokens == 4
    assert b.advantages.tolist() == [1.0, -1.0]


def test_shard_splits_rows_and_keeps_the_global_token_count():
    gens = [_gen([1], [2] * (i + 1), [-0.1] * (i + 1)) for i in range(4)]
    b = grpo_batch(gens, torch.arange(4.0), pad_id=0, max_new_tokens=8)
    parts = shard(b, 2, by_length=False)
    assert [p.num_sequences for p in parts] == [2, 2]
    assert parts[1].advantages.tolist() == [2.0, 3.0]
    assert all(p.global_tokens == 1 + 2 + 3 + 4 for p in parts)
    assert torch.equal(parts[1].input_ids, b.input_ids[2:])
    # rows 0-1 are 2 and 3 tokens long: their shard drops the two all-padding columns
    assert torch.equal(parts[0].input_ids, b.input_ids[:2, :3])


def test_shard_by_length_groups_similar_rows_and_moves_every_field_with_its_row():
    gens = [_gen([1], [2] * n, [-0.1 * n] * n) for n in (1, 4, 2, 3)]  # lengths 2, 5, 3, 4
    b = grpo_batch(gens, torch.tensor([0.0, 1.0, 2.0, 3.0]), pad_id=0, max_new_tokens=8)
    long, short = shard(b, 2)
    assert long.advantages.tolist() == [1.0, 3.0] and short.advantages.tolist() == [2.0, 0.0]
    assert long.input_ids.shape == (2, 5) and short.input_ids.shape == (2, 3)
    assert short.rollout_logprobs[1].tolist() == pytest.approx([0.0, -0.1, 0.0])
    assert short.loss_mask.tolist() == [[0, 1, 1], [0, 1, 0]]
    assert long.global_tokens == short.global_tokens == 10


def test_shard_keeps_the_batch_wide_fields():
    gens = [_gen([1], [2], [-0.1]) for _ in range(4)]
    b = dataclasses.replace(
        grpo_batch(gens, torch.zeros(4), pad_id=0, max_new_tokens=8), is_cap=2.0
    )
    assert all((p.is_cap, p.max_new_tokens) == (2.0, 8) for p in shard(b, 2))


def test_grpo_batch_carries_the_sampling_temperature_and_refuses_greedy_rollouts():
    gens = [_gen([1], [2], [-0.1]) for _ in range(4)]
    b = grpo_batch(gens, torch.zeros(4), pad_id=0, max_new_tokens=8, temperature=0.7)
    assert b.temperature == 0.7 and all(p.temperature == 0.7 for p in shard(b, 2))
    assert grpo_batch(gens, torch.zeros(4), pad_id=0, max_new_tokens=8).temperature == 1.0
    with pytest.raises(ValueError, match="temperature must be > 0"):
        grpo_batch(gens, torch.zeros(4), pad_id=0, max_new_tokens=8, temperature=0.0)


@pytest.mark.parametrize(
    "tis, staleness, cap", [("stale", 0, None), ("stale", 1, 1.5), ("always", 0, 1.5)]
)
def test_rollout_tis_always_weights_synchronous_batches_too(tis, staleness, cap):
    from types import SimpleNamespace

    from ray_s3ft.config import load_config
    from ray_s3ft.run.controller import Controller, TrainState

    c = Controller.__new__(Controller)  # only what grpo_batch reads
    c.cfg = load_config(overrides=[f"rollout.tis={tis}", "rollout.is_cap=1.5"])
    c.tok, c.state = SimpleNamespace(pad_token_id=0), TrainState()
    c.g = SimpleNamespace(learner=[None, None])
    gens = [_gen([1], [2, 3], [-0.1, -0.2]) for _ in range(4)]  # one group of G = 4
    shards = c.grpo_batch(gens, torch.tensor([1.0, 0.0, 0.0, 0.0]), staleness)
    assert [s.is_cap for s in shards] == [cap, cap]
