"""Hand-computed checks of GRPO advantages, k3 and the clipped loss (ray_s3ft/algo/grpo.py)."""

import math

import pytest
import torch

from ray_s3ft.algo.grpo import group_advantages, grpo_loss, kl_k3

LN2 = math.log(2.0)


def test_group_advantages_population_std_and_zero_std_group():
    # Group 0: [1, 0, 0, 1]: mean 0.5, population std sqrt(((.5)^2 * 4) / 4) = 0.5
    #   -> A = +-0.5 / (0.5 + 1e-6).
    # Group 1: [1, 1, 1, 1]: all equal -> exactly 0, counted.
    out = group_advantages(torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1]), group_size=4)
    a = 0.5 / (0.5 + 1e-6)
    torch.testing.assert_close(out.advantages, torch.tensor([a, -a, -a, a, 0, 0, 0, 0]))
    assert out.zero_std_groups == 1
    assert out.num_groups == 2


def test_group_advantages_population_not_sample_std():
    # [1, 0]: population std 0.5 -> A = +-1 (eps = 0); sample std would be 0.7071 -> +-0.7071.
    out = group_advantages(torch.tensor([1.0, 0.0]), group_size=2, eps=0.0)
    torch.testing.assert_close(out.advantages, torch.tensor([1.0, -1.0]))
    # [3, 1, 2, 2]: mean 2, deviations [1, -1, 0, 0], variance 2/4 = 0.5, std = 1/sqrt(2)
    # -> A = [sqrt(2), -sqrt(2), 0, 0].
    out = group_advantages(torch.tensor([3.0, 1.0, 2.0, 2.0]), group_size=4, eps=0.0)
    r2 = math.sqrt(2.0)
    torch.testing.assert_close(out.advantages, torch.tensor([r2, -r2, 0.0, 0.0]))
    assert out.zero_std_groups == 0


def test_group_advantages_dr_grpo_no_std():
    # [1, 0, 0, 0]: mean 0.25 -> [0.75, -0.25, -0.25, -0.25], no division.
    out = group_advantages(torch.tensor([1.0, 0, 0, 0]), group_size=4, scale_by_std=False)
    torch.testing.assert_close(out.advantages, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_group_advantages_equal_non_integer_rewards_exactly_zero():
    out = group_advantages(torch.tensor([0.1, 0.1, 0.1]), group_size=3)
    assert torch.equal(out.advantages, torch.zeros(3))
    assert out.zero_std_groups == 1


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="not divisible by group_size"):
        group_advantages(torch.zeros(5), group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), group_size=0)


def test_kl_k3_hand_values():
    logp = torch.tensor([[-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.0, -1.0 + LN2, -1.0 - LN2]])
    # d = ref - logp = [0, ln2, -ln2]
    # k3 = [1 - 0 - 1, 2 - ln2 - 1, 0.5 + ln2 - 1] = [0, 0.306853, 0.193147]
    expected = torch.tensor([[0.0, 1.0 - LN2, LN2 - 0.5]])
    torch.testing.assert_close(kl_k3(logp, ref), expected)


def _clip_batch():
    # Four one-token sequences. old = log 0.4; logp = log 0.6 (r = 1.5) or log 0.2 (r = 0.5).
    old = torch.full((4, 1), math.log(0.4))
    logp = torch.log(torch.tensor([[0.6], [0.2], [0.2], [0.6]])).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    return logp, old, adv, torch.ones(4, 1)


def test_grpo_loss_clipping_hand_values():
    logp, old, adv, mask = _clip_batch()
    out = grpo_loss(
        logp, old, adv, mask, eps_low=0.2, eps_high=0.28, beta=0.0, ref_logprobs=None, agg="dapo"
    )
    # Per-token surrogate min(r*A, clip(r, 0.8, 1.28)*A):
    #   r=1.5, A=+1: min(1.5, 1.28) = 1.28   clipped  -> loss -1.28
    #   r=0.5, A=+1: min(0.5, 0.8)  = 0.5    not      -> loss -0.5
    #   r=0.5, A=-1: min(-0.5, -0.8) = -0.8  clipped  -> loss  0.8
    #   r=1.5, A=-1: min(-1.5, -1.28) = -1.5 not      -> loss  1.5
    # dapo mean: (-1.28 - 0.5 + 0.8 + 1.5) / 4 = 0.52 / 4 = 0.13
    assert out.loss.item() == pytest.approx(0.13, abs=1e-6)
    assert out.pg_loss == pytest.approx(0.13, abs=1e-6)
    assert out.clip_frac == pytest.approx(0.5)
    assert out.ratio_mean == pytest.approx(1.0, abs=1e-6)  # (1.5 + 0.5 + 0.5 + 1.5) / 4
    assert out.kl == 0.0
    # Gradient: clipped tokens get 0; else d(-r*A)/dlogp / 4 = -r*A/4 -> [0, -0.125, 0, 0.375].
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0], [-0.125], [0.0], [0.375]]))


def _agg_batch():
    # ratio 1 everywhere (logp = old), so per-token loss = -A.
    # Seq 0 has 3 tokens with A = 1 -> [-1, -1, -1]; seq 1 has 1 token with A = -2 -> [2].
    logp = torch.full((2, 3), -0.7)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    return logp, logp.clone(), torch.tensor([1.0, -2.0]), mask


@pytest.mark.parametrize(
    ("agg", "max_len", "expected"),
    [
        ("grpo", None, 0.5),  # mean(-3/3, 2/1) = (-1 + 2) / 2
        ("dapo", None, -0.25),  # (-3 + 2) / 4 tokens
        ("dr_grpo", 4, -0.125),  # (-3 + 2) / (B=2 * max_len=4)
    ],
)
def test_grpo_loss_aggregations(agg, max_len, expected):
    logp, old, adv, mask = _agg_batch()
    out = grpo_loss(
        logp,
        old,
        adv,
        mask,
        eps_low=0.2,
        eps_high=0.2,
        beta=0.0,
        ref_logprobs=None,
        agg=agg,
        max_len=max_len,
    )
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.clip_frac == 0.0


def test_grpo_loss_kl_term():
    # One token, A = 0 so the surrogate is 0; ref - logp = ln2 -> k3 = 1 - ln2.
    # beta = 0.1 -> loss = 0.1 * (1 - ln2) = 0.0306853; pg_loss 0; kl metric 1 - ln2.
    logp = torch.tensor([[-1.0]])
    ref = logp + LN2
    kw = {"eps_low": 0.2, "eps_high": 0.2, "agg": "grpo"}
    out = grpo_loss(logp, logp, torch.zeros(1), torch.ones(1, 1), beta=0.1, ref_logprobs=ref, **kw)
    assert out.loss.item() == pytest.approx(0.1 * (1 - LN2), abs=1e-6)
    assert out.pg_loss == 0.0
    assert out.kl == pytest.approx(1 - LN2, abs=1e-6)
    # beta = 0 with a reference: KL only reported, not in the loss.
    out = grpo_loss(logp, logp, torch.zeros(1), torch.ones(1, 1), beta=0.0, ref_logprobs=ref, **kw)
    assert out.loss.item() == 0.0
    assert out.kl == pytest.approx(1 - LN2, abs=1e-6)


def test_grpo_loss_errors():
    logp, old, adv, mask = _agg_batch()
    kw = {"eps_low": 0.2, "eps_high": 0.2}
    with pytest.raises(ValueError, match="grpo, dapo, dr_grpo"):
        grpo_loss(logp, old, adv, mask, beta=0.0, ref_logprobs=None, agg="ppo", **kw)
    with pytest.raises(ValueError, match="max_len"):
        grpo_loss(logp, old, adv, mask, beta=0.0, ref_logprobs=None, agg="dr_grpo", **kw)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logp, old, adv, mask, beta=0.1, ref_logprobs=None, agg="grpo", **kw)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, old, adv[:1], mask, beta=0.0, ref_logprobs=None, agg="grpo", **kw)


def test_truncated_is_weights_scale_each_tokens_surrogate_and_its_gradient():
    import torch

    from ray_s3ft.algo.grpo import grpo_loss

    logp = torch.zeros(1, 2, requires_grad=True)  # r = 1 on both tokens, A = 1
    out = grpo_loss(
        logp, torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2), eps_low=0.2, eps_high=0.2,
        beta=0.0, ref_logprobs=None, agg="dapo", is_weights=torch.tensor([[0.5, 2.0]]),
    )  # fmt: skip
    assert out.loss.item() == pytest.approx(-(0.5 + 2.0) / 2)  # -(w1 r A + w2 r A) / tokens
    out.loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-0.25, -1.0])  # -w_t / 2
    assert out.clip_frac == 0.0


def test_one_spec_per_loss_aggregation_and_the_config_offers_exactly_them():
    from ray_s3ft.algo.grpo import AGGREGATION, AGGREGATIONS
    from ray_s3ft.config import LOSS_AGGS

    assert AGGREGATIONS == LOSS_AGGS
    assert [AGGREGATION[a].scale_by_std for a in AGGREGATIONS] == [True, True, False]
    # a micro-batch of 2 of the update's 8 sequences, holding 30 of its 100 tokens
    assert AGGREGATION["dapo"].share(30.0, 100.0, 2, 8) == 0.3
    assert AGGREGATION["grpo"].share(30.0, 100.0, 2, 8) == 0.25
    assert AGGREGATION["dr_grpo"].share(30.0, 100.0, 2, 8) == 0.25


def test_step_sums_add_by_name_and_reduce_as_one_vector():
    from ray_s3ft.workers.learner_step import SUMS, StepSums

    s = StepSums()
    s.add(tokens=12, objective=0.5)
    s.add(tokens=3.0, clip_tokens=2)
    assert (s["tokens"], s["objective"], s["clip_tokens"], s["pg"]) == (15.0, 0.5, 2.0, 0.0)
    calls = []

    def twice(t, op="sum"):  # two identical ranks
        calls.append(op)
        return t * 2 if op == "sum" else t

    s.max_diff[0] = 0.25
    r = s.reduced(twice)
    assert (r["tokens"], r.max_diff.item(), calls) == (30.0, 0.25, ["sum", "max"])
    assert len(r.values) == len(SUMS) == 11
