"""GRPO samples cut at the generation budget (ray_s3ft/algo/overlong.py, DAPO §3.4): the soft
length penalty and the loss mask, with numbers computed by hand."""

import pytest
import torch

from ray_s3ft.algo.grpo import group_advantages, grpo_loss
from ray_s3ft.algo.overlong import OVERLONG, loss_weights, soft_penalty
from ray_s3ft.config import ConfigError, load_config
from ray_s3ft.workers.batches import grpo_batch
from ray_s3ft.workers.types import Generation


def test_soft_penalty_is_zero_then_linear_to_minus_one_at_the_budget():
    # L_max 100, L_cache 20: free up to 80 tokens, then -1/20 per token, -1 at 100 and beyond
    lengths = torch.tensor([50, 80, 81, 90, 95, 100, 120])
    got = soft_penalty(lengths, max_len=100, cache=20.0)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, -0.05, -0.5, -0.75, -1.0, -1.0]))
    # L_cache = L_max: the penalty starts at the first token (length 25 of 100: -0.25)
    torch.testing.assert_close(soft_penalty(torch.tensor([25]), 100, 100.0), torch.tensor([-0.25]))
    with pytest.raises(ValueError, match="cache"):
        soft_penalty(lengths, max_len=100, cache=0.0)
    with pytest.raises(ValueError, match="cache"):
        soft_penalty(lengths, max_len=100, cache=101.0)


def test_loss_weights_drop_cut_samples_only_under_mask():
    finished = torch.tensor([True, False, True])
    assert loss_weights(finished, "mask").tolist() == [1.0, 0.0, 1.0]
    assert loss_weights(finished, "keep").tolist() == [1.0, 1.0, 1.0]
    assert loss_weights(finished, "penalty").tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="keep, mask, penalty"):
        loss_weights(finished, "drop")


def _gen(n_tokens, finished):
    return Generation([1], [2] * n_tokens, "", [0.0] * n_tokens, finished=finished)


@pytest.mark.parametrize("mode, loss", [("keep", -0.25), ("mask", 0.2)])
def test_a_masked_cut_sample_keeps_its_group_baseline_but_leaves_the_loss(mode, loss):
    # One group of 4, rewards [1, 0, 1, 0]; sample 2 was cut (3 tokens) yet judged right.
    # Its reward stays in the group's mean 0.5 and std 0.5: A = [1, -1, 1, -1] either way.
    gens = [_gen(2, True), _gen(1, True), _gen(3, False), _gen(2, True)]
    adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 4, eps=0.0).advantages
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 1.0, -1.0]))
    weights = loss_weights(torch.tensor([g.finished for g in gens]), mode)
    b = grpo_batch(gens, adv, pad_id=0, max_new_tokens=4, weights=weights)
    # ratio 1 everywhere, so each token's loss is -A; dapo sums over tokens / their count:
    # keep: (-2 + 1 - 3 + 2) / 8 = -0.25; mask: row 2 out, (-2 + 1 + 2) / 5 = 0.2
    assert b.global_tokens == (8.0 if mode == "keep" else 5.0)
    assert b.loss_mask[2].tolist() == ([0, 1, 1, 1] if mode == "keep" else [0, 0, 0, 0])
    mask = b.loss_mask[:, 1:]
    logp = torch.zeros_like(mask)
    out = grpo_loss(logp, logp, b.advantages, mask, eps_low=0.2, eps_high=0.28, beta=0.0,
                    ref_logprobs=None, agg="dapo")  # fmt: skip
    assert out.loss.item() == pytest.approx(loss)


def test_the_config_offers_exactly_the_modes_and_names_a_bad_key():
    from ray_s3ft.config.schema import OVERLONG_MODES

    assert OVERLONG == OVERLONG_MODES
    cfg = load_config()
    assert cfg.algorithm.grpo.overlong == "keep" and cfg.algorithm.grpo.overlong_cache == 0.2
    with pytest.raises(ConfigError, match="algorithm.grpo.overlong"):
        load_config(overrides=["algorithm.grpo.overlong=filter"])
    with pytest.raises(ConfigError, match="algorithm.grpo.overlong_cache"):
        load_config(overrides=["algorithm.grpo.overlong_cache=0"])
    with pytest.raises(ConfigError, match="algorithm.grpo.overlong_cache"):
        load_config(overrides=["algorithm.grpo.overlong_cache=1.5"])
