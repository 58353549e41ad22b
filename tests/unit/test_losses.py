"""Hand-computed checks of the token-level loss pieces (ray_s3ft/algo/losses.py)."""

import math

import pytest
import torch

from ray_s3ft.algo.losses import entropy_from_logits, masked_mean, masked_nll, token_logprobs

LN2 = math.log(2.0)


def test_token_logprobs_simple_softmax():
    # Position 0: logits [0, 0, 0] -> uniform 1/3 -> log p = -ln 3.
    # Position 1: logits [0, ln2, 0] -> exp [1, 2, 1] / 4 = [1/4, 1/2, 1/4]; label 0 -> -2 ln2.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, LN2, 0.0]]])  # [1, 2, 3]
    labels = torch.tensor([[1, 0]])  # [1, 2]
    out = token_logprobs(logits, labels)
    torch.testing.assert_close(out, torch.tensor([[-math.log(3.0), -2 * LN2]]))


def test_token_logprobs_bf16_computes_in_float32_and_ignores_negative_labels():
    logits = torch.zeros(1, 2, 4, dtype=torch.bfloat16)  # uniform over 4 -> log(1/4) = -2 ln2
    labels = torch.tensor([[3, -100]])
    out = token_logprobs(logits, labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[-2 * LN2, 0.0]]))


def test_token_logprobs_shape_mismatch():
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs(torch.zeros(1, 3, 4), torch.zeros(1, 2, dtype=torch.long))


def test_masked_nll_per_token_mean_over_batch():
    # Masked tokens: -ln2, -2ln2, -ln2 (the 9.0 is masked out).
    # NLL = (ln2 + 2ln2 + ln2) / 3 = 4 ln2 / 3 = 0.924196...
    logprobs = torch.tensor([[-LN2, -2 * LN2], [-LN2, 9.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    torch.testing.assert_close(masked_nll(logprobs, mask), torch.tensor(4 * LN2 / 3))
    # A data-parallel learner divides by the global count, e.g. 6 tokens: 4 ln2 / 6.
    torch.testing.assert_close(masked_nll(logprobs, mask, normalizer=6), torch.tensor(4 * LN2 / 6))


def test_masked_nll_zero_tokens_is_zero_with_finite_grad():
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    mask = torch.zeros(1, 2)
    loss = masked_nll(logprobs, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logprobs.grad, torch.zeros(1, 2))
    assert masked_nll(logprobs.detach(), mask, normalizer=0).item() == 0.0
    with pytest.raises(ValueError, match="normalizer"):
        masked_nll(logprobs, mask, normalizer=-1)


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    mask = torch.tensor([[1, 0, 1], [0, 1, 0]])
    # (1 + 3 + 20) / 3 = 8
    assert masked_mean(x, mask).item() == pytest.approx(8.0)
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0


def test_entropy_from_logits():
    # [1/2, 1/2, 0]: H = ln2 (the -inf logit has p = 0 and must add 0, not NaN).
    # [1/4, 1/2, 1/4]: H = 2 * (1/4) * 2ln2 + (1/2) * ln2 = 1.5 ln2.
    # Mean over the two masked tokens: (ln2 + 1.5 ln2) / 2 = 1.25 ln2; third token masked out.
    logits = torch.tensor(
        [[[0.0, 0.0, -math.inf], [0.0, LN2, 0.0], [5.0, 0.0, 0.0]]], requires_grad=True
    )
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    ent = entropy_from_logits(logits, mask)
    torch.testing.assert_close(ent, torch.tensor(1.25 * LN2))
    ent.backward()
    assert torch.isfinite(logits.grad).all()
