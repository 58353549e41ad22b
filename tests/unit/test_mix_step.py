"""A mix step's loss and gradient, by hand (``LearnerActor.mix_step``, schedule kinds mix and
sasr_soft): (1 - mu) * GRPO + mu * SFT, each normalised by its own token count.

The learner runs its real step code (micro-batches, loss shares, gradient accumulation, the
SFT part's own gradient) on a toy policy whose logits are one bias vector b of 4 entries at
every position, b = 0: every token has p = 1/4, and the gradients are short sums. DeepSpeed's
engine and the collectives are replaced at their narrowest seams (one rank, ZeRO-0 semantics:
the gradient accumulates in ``.grad`` and its norm is read before the optimizer step); the
real engine over two ranks is ``tests/roles/test_distributed_roles.py``'s.
"""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from ray_s3ft.config import GRPOConfig, LearnerConfig
from ray_s3ft.workers.learner import LearnerActor
from ray_s3ft.workers.types import TrainBatch

V = 4


class Bias(torch.nn.Module):
    """Logits b at every position: p = softmax(b) whatever the input."""

    def __init__(self):
        super().__init__()
        self.b = torch.nn.Parameter(torch.zeros(V))

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.b.expand(*input_ids.shape, V))


class Engine:
    """What the learner uses of a DeepSpeed engine, one rank: backward adds to ``.grad``, and
    ``step`` keeps the gradient so the test can read it."""

    def __init__(self, module):
        self.module = module
        self.optimizer = SimpleNamespace(param_groups=[{"lr": 0.0}])
        self.boundaries = []

    def __call__(self, **kw):
        return self.module(**kw)

    def train(self):
        self.module.train()

    def eval(self):
        self.module.eval()

    def set_train_batch_size(self, n):
        self.batch_size = n

    def set_gradient_accumulation_boundary(self, last):
        self.boundaries.append(last)

    def backward(self, loss, scale_wrt_gas=False):
        loss.backward()

    def step(self):
        pass


def _learner(lr=1e-3, grpo_lr=1e-5):
    a = LearnerActor.__new__(LearnerActor)
    a.cfg = LearnerConfig(zero_stage=0, micro_batch_size=1)
    a.grpo = GRPOConfig(loss_agg="dapo", beta=0.04)
    a.world_size, a.device = 1, torch.device("cpu")
    a.lr_by_mode = {"sft": lr, "grpo": grpo_lr}
    a.engine = Engine(Bias())
    a.reference = copy.deepcopy(a.engine.module)
    a._all_reduce = lambda t, op="sum": t  # one rank
    return a


def _batch(rows, advantages=None):
    """``rows``: (prompt length, response token ids); input positions of the response carry
    the loss mask (the learner scores logp of input_ids[t] from logits[t - 1])."""
    width = max(p + len(r) for p, r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    attn, mask = torch.zeros_like(ids), torch.zeros(len(rows), width)
    for i, (p, r) in enumerate(rows):
        ids[i, p : p + len(r)] = torch.tensor(r)
        attn[i, : p + len(r)] = 1
        mask[i, p : p + len(r)] = 1.0
    extra = {}
    if advantages is not None:
        extra = dict(
            advantages=torch.tensor(advantages),
            rollout_logprobs=mask * -math.log(V),  # the engine's: p = 1/4 as well
            max_new_tokens=8,
        )
    return TrainBatch(ids, attn, mask, float(mask.sum()), **extra)


# SFT: one row answering [1], one answering [2, 2, 3]: 4 tokens, each NLL log 4.
SFT = _batch([(2, [1]), (1, [2, 2, 3])])
# GRPO: advantage +1 on a row [0, 0], -1 on a row [3]: 3 tokens.
RL = _batch([(2, [0, 0]), (1, [3])], advantages=[1.0, -1.0])
# d NLL(y) / db = softmax(b) - e_y = 1/4 - e_y; the mean over the 4 SFT tokens:
G_SFT = torch.tensor([0.25, 0.25 - 0.25, 0.25 - 0.5, 0.25 - 0.25])  # [0.25, 0, -0.25, 0]
# GRPO at ratio 1 (one update): loss = -(1/3) sum_t A_t ratio_t, d ratio / db = e_y - 1/4;
# the KL term's gradient is 0 where the policy equals its reference
G_RL = -(torch.tensor([2.0, 0.0, 0.0, -1.0]) - 0.25 * (2 - 1)) / 3  # [-7/12, 1/12, 1/12, 5/12]


def test_mix_step_loss_and_gradient_by_hand():
    a, mu = _learner(), 0.25
    stats = a.mix_step((RL, SFT), mu=mu, sft_norm=True)
    # loss: 0.75 * (-1/3) + 0.25 * log 4 = 0.096574
    assert stats.loss == pytest.approx(0.75 * (-1 / 3) + 0.25 * math.log(4), abs=1e-6)
    want = (1 - mu) * G_RL + mu * G_SFT  # [-0.375, 0.0625, 0.0, 0.3125]
    assert want == pytest.approx(torch.tensor([-0.375, 0.0625, 0.0, 0.3125]))
    assert a.engine.module.b.grad == pytest.approx(want, abs=1e-6)
    assert stats.grad_norm == pytest.approx(math.sqrt(0.2421875), abs=1e-6)  # 0.49213
    # the SFT part alone, unweighted: |G_SFT| = sqrt(2 * 0.0625) = 0.35355
    assert stats.mix.sft_grad_norm == pytest.approx(math.sqrt(0.125), abs=1e-6)
    assert stats.mix.sft_loss == pytest.approx(math.log(4), abs=1e-6)
    assert stats.mix.mu == mu
    assert stats.pg_loss == pytest.approx(-1 / 3, abs=1e-6) and stats.kl == pytest.approx(0.0)
    assert stats.tokens == 7 and stats.sequences == 4
    # 4 micro-batches of one row, one optimizer step: the boundary only on the last
    assert a.engine.boundaries == [False, False, False, True] and a.engine.batch_size == 4
    # lr 1e-3 ** 0.25 * 1e-5 ** 0.75 = 10 ** (-0.75 - 3.75) = 3.1623e-5
    assert (
        stats.lr == pytest.approx(10**-4.5) and a.engine.optimizer.param_groups[0]["lr"] == stats.lr
    )


def test_each_part_is_normalised_by_its_own_tokens():
    # doubling the SFT rows (8 tokens, the same mean) leaves the step unchanged: the SFT part
    # is a token mean over its own batch, not over SFT + GRPO tokens
    a, b = _learner(), _learner()
    twice = _batch([(2, [1]), (1, [2, 2, 3])] * 2)
    one = a.mix_step((RL, SFT), mu=0.5)
    two = b.mix_step((RL, twice), mu=0.5)
    assert one.loss == pytest.approx(two.loss, abs=1e-6)
    assert a.engine.module.b.grad == pytest.approx(b.engine.module.b.grad, abs=1e-6)
    assert math.isnan(one.mix.sft_grad_norm)  # not asked for: not measured


def test_chord_phi_weighs_sft_tokens_by_p_times_one_minus_p():
    # p = 1/4 on every token: phi = 3/16, held constant; the normaliser stays the 4 tokens
    a, mu, phi = _learner(), 0.25, 3 / 16
    stats = a.mix_step((RL, SFT), mu=mu, sft_norm=True, token_weight="chord_phi")
    assert stats.mix.sft_loss == pytest.approx(phi * math.log(4), abs=1e-6)  # 0.25993
    assert stats.mix.sft_grad_norm == pytest.approx(phi * math.sqrt(0.125), abs=1e-6)
    want = (1 - mu) * G_RL + mu * phi * G_SFT
    assert a.engine.module.b.grad == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("mu", [0.0, 1.0])
def test_a_mix_step_needs_both_parts(mu):
    with pytest.raises(ValueError, match="0 < mu < 1"):
        _learner().mix_step((RL, SFT), mu=mu)
