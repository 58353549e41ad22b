"""Targets that follow the policy (ray_s3ft/run/follow.py), their bookkeeping by hand: which
examples a refresh asks again, what an accepted answer replaces, what a GRPO sample the judge
accepted becomes, and the split the rows and the summary report."""

import json
from types import SimpleNamespace

import pytest

from ray_s3ft.config import ConfigError, load_config
from ray_s3ft.run import follow
from ray_s3ft.run.controller import Controller, TrainState
from ray_s3ft.run.target_store import TargetRecord, TargetSet
from ray_s3ft.workers.types import Answer, Verdict


def _controller(refresh_self=0.5, fits=None):
    # targets: 0 self, 1 paraphrase, 2 gold, 3 self, 4 gold
    records = [
        TargetRecord("e0", "q0", "g0", "s0", True),
        TargetRecord("e1", "q1", "g1", "s1", False, "p1", True),
        TargetRecord("e2", "q2", "g2", "s2", False, "p2", False),
        TargetRecord("e3", "q3", "g3", "s3", True),
        TargetRecord("e4", "q4", "g4", None, None),
    ]
    c = Controller.__new__(Controller)
    c.cfg = load_config(
        None,
        ["algorithm.targets_refresh_every=2", f"algorithm.targets_refresh_self={refresh_self}"],
    )
    c.targets = TargetSet(records, "s3ft", 5, 0, fits=fits)
    c.fractions = c.targets.fractions()
    c.examples = [SimpleNamespace(id=r.id, prompt=r.prompt, answer="7", verifier="math", tests=())
                  for r in records]  # fmt: skip
    c.state, c._index = TrainState(step=4), None
    c.synced = 0
    c.sync_weights = lambda: setattr(c, "synced", c.synced + 1)
    return c


def _engines(c, monkeypatch, answers: dict, verdicts: dict):
    """The rollout engines answer prompt -> Answer, the judge answers -> Verdict."""
    asked = []

    def rollout_map(fn, prompts, max_new_tokens):
        asked.extend(prompts)
        return [answers[p] for p in prompts]

    c.g = SimpleNamespace(rollout=SimpleNamespace(map=rollout_map), judge=None)
    monkeypatch.setattr(
        follow, "judge_on", lambda g, items, t: ([verdicts[i.response] for i in items], 0)
    )
    return asked


def test_a_refresh_asks_the_non_self_targets_and_a_share_of_the_self_ones(monkeypatch):
    c = _controller(refresh_self=0.5)
    answers = {f"q{i}": Answer(f"new{i}", finished=True) for i in range(5)}
    answers["q2"] = Answer("new2", finished=False)  # cut: never a target
    verdicts = {"new0": Verdict(False), "new1": Verdict(True), "new2": Verdict(True),
                "new3": Verdict(True), "new4": Verdict(None)}  # fmt: skip
    asked = _engines(c, monkeypatch, answers, verdicts)
    assert c.target_fractions() == {"self": 0.4, "paraphrase": 0.2, "gold": 0.4}
    row = c.refresh_targets()
    # the 3 non-self (1, 2, 4) and round(0.5 * 2) = 1 of the self ones (0 or 3), seeded
    assert len(asked) == 4 and {"q1", "q2", "q4"} <= set(asked) and c.synced == 1
    extra = ({"q0", "q3"} & set(asked)).pop()
    # accepted and ended: new1 (was paraphrase), new3 if asked; new0 wrong keeps s0
    replaced = {"1": "new1"} | ({"3": "new3"} if extra == "q3" else {})
    assert {k: v["text"] for k, v in c.state.followed.items()} == replaced
    assert all(v == {"text": v["text"], "step": 4, "from": "refresh"}
               for v in c.state.followed.values())  # fmt: skip
    assert row == {"targets/refresh_asked": 4, "targets/refresh_accepted": len(replaced)}
    assert c.target_fractions() == {"self": 0.6, "paraphrase": 0.0, "gold": 0.4}
    texts = [t for t, _ in c.target_texts()]
    assert texts[:2] == ["s0", "new1"] and texts[2] == "g2" and texts[4] == "g4"
    assert c.self_targets() == [0, 1, 3]
    assert c.state.follow_counts == {
        "refreshes": 1, "asked": 4, "accepted": len(replaced), "rollouts": 0,
    }  # fmt: skip
    # the state goes through a checkpoint as JSON and back
    again = TrainState.from_json(json.loads(json.dumps(c.state.__dict__, default=vars)))
    assert again.followed == c.state.followed


def test_an_answer_over_the_response_budget_is_not_taken(monkeypatch):
    c = _controller(refresh_self=0.0, fits=lambda text: len(text) <= 4)
    answers = {f"q{i}": Answer("long answer" if i == 1 else f"n{i}", True) for i in range(5)}
    verdicts = {"long answer": Verdict(True), "n2": Verdict(True), "n4": Verdict(True)}
    asked = _engines(c, monkeypatch, answers, verdicts)
    c.refresh_targets()
    assert sorted(asked) == ["q1", "q2", "q4"]  # no self one: refresh_self 0
    assert sorted(c.state.followed) == ["2", "4"]


def test_accepted_grpo_samples_become_self_targets(monkeypatch):
    c = _controller()
    c.cfg = load_config(
        None,
        [
            "algorithm.rehearse_rollouts=true",
            "algorithm.grpo.group_size=2",
            "learner.micro_batch_size=4",
        ],
    )
    g = [SimpleNamespace(text=t, finished=f) for t, f in
         [("a1", True), ("a2", True), ("b1", False), ("b2", True), ("c1", True), ("c2", True)]]  # fmt: skip
    # prompt e2: both right, the first wins; e4: the right one was cut, the other wrong;
    # e0: none right
    c.rewards = SimpleNamespace(correct={id(g[0]): True, id(g[1]): True, id(g[2]): True,
                                         id(g[3]): False, id(g[4]): False, id(g[5]): None})  # fmt: skip
    exs = [c.examples[2], c.examples[4], c.examples[0]]
    assert c.rehearse_rollouts(exs, g) == 1
    assert c.state.followed == {"2": {"text": "a1", "step": 4, "from": "rollout"}}
    assert c.state.follow_counts["rollouts"] == 1


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        (
            ["algorithm.targets_refresh_every=4", "algorithm.targets=gold"],
            "needs algorithm.targets ssr or s3ft",
        ),
        (["algorithm.rehearse_rollouts=true", "schedule.kind=sft"], "needs GRPO samples"),
        (
            ["algorithm.targets_refresh_every=4", "rollout.async=true"],
            "not supported with rollout.async",
        ),
        (["algorithm.targets_refresh_self=1.5"], "algorithm.targets_refresh_self"),
    ],
)
def test_config_rejects_following_without_a_self_rung(overrides, text):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert text in str(info.value)
