"""The order the controller takes training examples in (``sampling.data_order``), and the
GRPO figures a checkpoint keeps (``sampling.GRPOStats`` in ``controller.TrainState``)."""

import json
from dataclasses import asdict

from ray_s3ft.run.controller import TrainState
from ray_s3ft.run.metrics import EVERY_ROW
from ray_s3ft.run.sampling import GRPOStats, data_order


def test_each_epoch_is_a_permutation_and_a_resumed_cursor_continues_it():
    first = data_order("sft", 5, 0, 15, seed=0)  # three epochs of 5
    for epoch in range(3):
        assert sorted(first[5 * epoch : 5 * epoch + 5]) == [0, 1, 2, 3, 4]
    assert first[:5] != first[5:10]  # a new permutation each epoch
    # a run resumed at cursor 7 takes exactly what the uninterrupted run took from there
    assert data_order("sft", 5, 7, 8, seed=0) == first[7:15]


def test_the_streams_and_seeds_are_independent():
    sft, grpo = data_order("sft", 50, 0, 50, seed=0), data_order("grpo", 50, 0, 50, seed=0)
    assert sft != grpo
    assert data_order("sft", 50, 0, 50, seed=1) != sft
    assert data_order("sft", 50, 0, 50, seed=0) == sft  # deterministic


def test_a_checkpoint_keeps_the_grpo_figures_and_reads_the_older_layout():
    state = TrainState(step=3)
    state.grpo.reward_mean, state.grpo.discarded = 0.5, 2
    assert TrainState.from_json(json.loads(json.dumps(asdict(state)))) == state
    # checkpoints written before GRPOStats kept them under "last", by metrics key
    old = {"step": 2, "last": {"reward/mean": 0.25, "rollout/staleness": 1}}
    assert TrainState.from_json(old).grpo == GRPOStats(reward_mean=0.25, staleness=1)


def test_every_row_reports_the_latest_grpo_figures_under_their_metrics_keys():
    stats = GRPOStats(reward_mean=0.75, undecided=1, undecided_frac=0.125)
    row = dict(map(stats.key, EVERY_ROW))
    assert row == {
        "reward/mean": 0.75, "reward/zero_std_groups": 0, "judge/undecided": 1,
        "judge/undecided_frac": 0.125, "rollout/unfinished": 0.0, "rollout/tokens_per_s": 0.0,
        "rollout/response_tokens": 0.0, "rollout/discarded": 0,
    }  # fmt: skip


def test_a_weights_version_is_a_train_step_however_many_optimizer_steps_it_makes():
    """``rollout.max_staleness`` counts weights versions: one per train step, so with
    ``algorithm.grpo.updates_per_batch`` 2 a version is two optimizer steps."""
    from types import SimpleNamespace

    from ray_s3ft.run.controller import Controller
    from ray_s3ft.workers.types import StepStats

    stats = StepStats(0.5, 1.0, 0.0, 1.0, tokens=8, sequences=4, updates=2)
    learner = SimpleNamespace(scatter=lambda fn, shards, mode, **kw: [stats] * len(shards))
    run = SimpleNamespace(g=SimpleNamespace(learner=learner), state=TrainState(version=3))
    assert Controller.train_on(run, ["rank 0", "rank 1"], "grpo") is stats
    assert run.state.version == 4 and run.state.steps == {"sft": 0, "grpo": 1}
