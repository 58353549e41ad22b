"""The knobs that make the schedules comparable: one KL-reference rule for every schedule, Adam
state per mode, several PPO updates per rollout batch and DAPO's dynamic sampling.

Unit tests check the rules by hand; the learner tests run real DeepSpeed ranks (Ray actors,
the built-in model) and check the weights against Adam's update computed by hand: a fresh Adam
state's first step moves every weight by exactly lr * g / (|g| + eps), that is by lr for every
weight whose gradient is far above eps.
"""

import itertools

import pytest
import torch

from ray_s3ft.config import ConfigError, load_config

ADAM_EPS = 1e-8  # torch AdamW's default, what the learner builds


# ------------------------------------------------------------------------- rules, by hand


@pytest.mark.parametrize(
    "kind, warmup, rule, expected",
    [
        ("sasr", 3, "after_warmup", 2),
        ("sft_then_grpo", 3, "after_warmup", 2),
        ("fixed_ratio", 3, "after_warmup", 2),
        ("fixed_ratio", 0, "after_warmup", None),  # no warm-up: the base model stays
        ("grpo", 3, "after_warmup", None),  # the pure schedules have no warm-up
        ("sft", 3, "after_warmup", None),
        ("sasr", 3, "base", None),
        ("sft_then_grpo", 3, "base", None),
    ],
)
def test_one_reference_rule_for_every_schedule(kind, warmup, rule, expected):
    from ray_s3ft.algo.schedules import make_schedule
    from ray_s3ft.run.controller import reference_reset_step

    schedule = make_schedule(kind, seed=0, warmup_steps=warmup)
    assert reference_reset_step(rule, schedule.warmup_steps) == expected


def test_the_default_reference_rule_is_the_same_for_every_schedule():
    cfgs = [load_config(overrides=[f"schedule.kind={k}"]) for k in ("sasr", "fixed_ratio")]
    assert {c.schedule.reference for c in cfgs} == {"after_warmup"}


def test_flat_groups_are_told_from_informative_ones():
    from ray_s3ft.run.rewards import split_flat_groups

    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.0])  # 4 groups of G = 2
    gens = list("abcdefgh")
    kept, flat = split_flat_groups(["p0", "p1", "p2", "p3"], gens, rewards, 2)
    assert [ex for ex, _, _ in kept] == ["p0", "p3"]
    assert [ex for ex, _, _ in flat] == ["p1", "p2"]
    assert kept[1][1] == ["g", "h"] and kept[1][2].tolist() == [0.5, 0.0]


def test_a_dynamic_sampling_round_draws_new_seeds_and_round_zero_keeps_the_old_ones():
    import numpy as np

    from ray_s3ft.run.sampling import rollout_seed

    old = int(np.random.SeedSequence([0, 5, 7]).generate_state(1)[0]) >> 2
    assert rollout_seed(0, 5, 7) == old  # runs without dynamic sampling sample as before
    assert len({rollout_seed(0, 5, 7, r) for r in range(4)}) == 4


@pytest.mark.parametrize(
    "overrides, text",
    [
        (["schedule.reference=policy"], "schedule.reference"),
        (["learner.optimizer_state=both"], "learner.optimizer_state"),
        (["algorithm.grpo.updates_per_batch=0"], "algorithm.grpo.updates_per_batch"),
        # 4 prompts x G 4 = 16 sequences over 2 ranks: 8 per rank do not cut into 3
        (["algorithm.grpo.updates_per_batch=3"], "into whole mini-batches"),
        (["algorithm.grpo.max_extra_rollouts=-1"], "algorithm.grpo.max_extra_rollouts"),
    ],
)
def test_bad_values_of_the_new_knobs_name_their_key(overrides, text):
    with pytest.raises(ConfigError, match=text):
        load_config(overrides=overrides)


# ------------------------------------------------------------- real DeepSpeed ranks, by hand


@pytest.fixture(scope="module")
def built_in():
    from transformers import AutoTokenizer

    from ray_s3ft.model.paths import resolve_model_path
    from ray_s3ft.tasks.builtin import task_split
    from ray_s3ft.workers.batches import grpo_batch, sft_batch
    from ray_s3ft.workers.types import Generation

    path = resolve_model_path("builtin")
    tok = AutoTokenizer.from_pretrained(path)
    examples = task_split("train", 16, seed=0)
    sft = sft_batch(tok, [e.prompt for e in examples[:8]], [e.gold for e in examples[:8]], 256)
    # a GRPO batch of 8 responses (the gold answers of 8 other prompts), advantages +-1
    gens = []
    for e in examples[8:]:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": e.prompt}], add_generation_prompt=True, tokenize=True
        )
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        ids = tok(e.gold, add_special_tokens=False)["input_ids"]
        gens.append(Generation(prompt, ids, e.gold, [0.0] * len(ids), True))
    adv = torch.tensor([1.0, -1.0] * 4)
    grpo = grpo_batch(gens, adv, tok.pad_token_id, 32, temperature=1.0)
    return path, sft, grpo


_GROUPS = itertools.count()  # groups alive together need names of their own


def _start(path, stage, overrides=(), lr=1e-3, grpo_lr=1e-4):
    """A one-rank learner group, created and set up without waiting: ``_ready`` waits. Groups
    started together set up side by side (one process each, one core each)."""
    from ray_s3ft.workers.group import ActorGroup, Resources
    from ray_s3ft.workers.learner import LearnerActor

    cfg = load_config(
        overrides=[f"learner.zero_stage={stage}", "learner.micro_batch_size=8",
                   "schedule.kind=sft", "algorithm.grpo.beta=0.0", *overrides]
    )  # fmt: skip
    group = ActorGroup(
        LearnerActor, 1, name=f"learner-fair-z{stage}-{next(_GROUPS)}",
        resources=Resources(cpus=1),
        kwargs=dict(world_size=1, model_path=path, model=cfg.model, cfg=cfg.learner,
                    grpo=cfg.algorithm.grpo, lr=lr, weight_decay=0.0, seed=0, grpo_lr=grpo_lr),
        rank_kwargs=lambda i: {"rank": i},
    )  # fmt: skip
    addr, port = group.call_one(LearnerActor.master_address)
    return group, group.submit(LearnerActor.setup, addr, port)


def _ready(*started):
    """The groups of ``_start``, once set up (all of them shut down if one fails)."""
    try:
        for group, setup in started:
            group.wait(setup)
    except BaseException:
        for group, _ in started:
            group.shutdown()
        raise
    return [group for group, _ in started]


def _weights(group):
    from ray_s3ft.workers.learner import LearnerActor

    state = group.call_one(LearnerActor.full_state_dict)
    return torch.cat([v.flatten().double() for _, v in sorted(state.items())])


def _steps(group, batches):
    from ray_s3ft.workers.learner import LearnerActor

    return [group.call_one(LearnerActor.train_step, b, mode=m) for m, b in batches]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_a_grpo_step_after_sft_steps_moves_by_its_own_adam_at_grpo_lr(ray_cluster, built_in, stage):
    path, sft, grpo = built_in
    lr, grpo_lr = 1e-3, 1e-4
    deltas, states = {}, ("per_mode", "shared")
    groups = _ready(
        *(_start(path, stage, [f"learner.optimizer_state={s}"], lr, grpo_lr) for s in states)
    )
    try:
        for state, group in zip(states, groups, strict=True):
            _steps(group, [("sft", sft)] * 3)
            before = _weights(group)
            _steps(group, [("grpo", grpo)])
            deltas[state] = _weights(group) - before
    finally:
        for group in groups:
            group.shutdown()
    per_mode, shared = deltas["per_mode"], deltas["shared"]
    moved = per_mode.abs() > 0
    assert moved.sum() > 1000  # the step reached most of the 1.1 M weights
    # per mode: the GRPO state's first step, |dw| = grpo_lr * |g| / (|g| + eps) <= grpo_lr,
    # and = grpo_lr for every weight whose gradient is above 100 * eps; to 1 %, the rounding
    # of an fp32 weight of size 1 (1.2e-7) against a step of 1e-4
    assert per_mode.abs().max() <= grpo_lr * 1.01
    full = (per_mode.abs() - grpo_lr).abs() <= 0.01 * grpo_lr
    assert full.double().mean() > 0.5 * moved.double().mean()
    print(
        f"ZeRO-{stage}: per-mode |dw| = grpo_lr on {full.double().mean():.1%} of the weights; "
        f"shared: median |dw| / grpo_lr {shared[moved].abs().median() / grpo_lr:.3f}, "
        f"sign agreement with the GRPO gradient {(shared[moved].sign() == per_mode[moved].sign()).double().mean():.1%}"
    )
    # shared: the SFT steps' momentum carries the update: its direction is not the GRPO
    # gradient's (whose sign the per-mode step gives exactly)
    agree = (shared[moved].sign() == per_mode[moved].sign()).double().mean()
    assert agree < 0.9


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_per_mode_state_is_checkpointed_and_resumed_exactly(ray_cluster, built_in, tmp_path, stage):
    from ray_s3ft.workers.learner import LearnerActor

    path, sft, grpo = built_in
    over = ["learner.optimizer_state=per_mode"]
    # a trains and saves; b, a fresh group, loads that. ZeRO-3 keys Adam's state by its flat
    # fp32 sub-group partitions and holds them in the param groups only inside its step (and
    # its own save and load). At one stage (a check of the files, before DeepSpeed loads):
    # a shared-state group cannot load it
    started = [_start(path, stage, over), _start(path, stage, over)]
    if stage == 2:
        started.append(_start(path, stage))
    a, b, *shared = _ready(*started)
    try:
        _steps(a, [("sft", sft), ("grpo", grpo), ("sft", sft)])  # the SFT state is active
        a.call(LearnerActor.save, str(tmp_path / "ds"), None)
        after_a = _steps(a, [("grpo", grpo), ("sft", sft)])
        w_a = _weights(a)
        a.shutdown()
        b.call(LearnerActor.load, str(tmp_path / "ds"))
        after_b = _steps(b, [("grpo", grpo), ("sft", sft)])
        torch.testing.assert_close(_weights(b), w_a, rtol=0, atol=1e-7)
        assert [s.loss for s in after_b] == pytest.approx([s.loss for s in after_a], abs=1e-7)
        for group in shared:
            with pytest.raises(Exception, match="learner.optimizer_state"):
                group.call(LearnerActor.load, str(tmp_path / "ds"))
    finally:
        for group in (a, b, *shared):
            group.shutdown()


@pytest.mark.slow
def test_several_updates_per_batch_make_the_clip_act(ray_cluster, built_in):
    path, _, grpo = built_in
    stats, ks = {}, (1, 2, 4)
    # a large GRPO lr, so the second mini-batch's ratio leaves the clip range at once
    groups = _ready(
        *(_start(path, 0, [f"algorithm.grpo.updates_per_batch={k}"], grpo_lr=3e-2) for k in ks)
    )
    try:
        for k, group in zip(ks, groups, strict=True):
            stats[k] = _steps(group, [("grpo", grpo)])[0]
    finally:
        for group in groups:
            group.shutdown()
    assert [stats[k].updates for k in (1, 2, 4)] == [1, 2, 4]
    print({k: (v.clip_frac, v.ratio_dev) for k, v in stats.items()})
    assert stats[1].clip_frac == 0.0 and stats[1].ratio_dev == 0.0  # pi_old is pi_theta
    assert stats[2].ratio_dev > 0.0
    assert stats[2].clip_frac > 0.0 and stats[4].clip_frac > stats[2].clip_frac
    for k in (1, 2, 4):  # every token was trained on once, whatever the mini-batching
        assert stats[k].tokens == int(grpo.loss_mask[:, 1:].sum())
    # the gap to the engine is the policy's before its first update, as with k = 1
    assert stats[2].logprob_diff == pytest.approx(stats[1].logprob_diff, rel=1e-5)
