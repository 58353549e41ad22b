"""The forgetting budget (``guard.*``, ray_s3ft/run/guard.py), by hand: the base model's held-out
mean on the in-loop questions, the checks, the state they leave and the weights chosen."""

import json
from dataclasses import asdict
from types import SimpleNamespace

import pytest

from ray_s3ft.config import ConfigError, GuardConfig, load_config
from ray_s3ft.run.checkpoints import prune
from ray_s3ft.run.guard import Guard, GuardState, base_heldout_mean, chosen


def _ex(i):
    return SimpleNamespace(id=f"q{i}")


def test_base_heldout_mean_on_the_in_loop_questions_only():
    items = [
        {"set": "arc", "id": "q0", "correct": True},
        {"set": "arc", "id": "q1", "correct": False},
        {"set": "arc", "id": "q2", "correct": True},  # not in-loop: left out
        {"set": "mmlu", "id": "q0", "correct": None},  # undecided counts as not correct
        {"set": "mmlu", "id": "q1", "correct": True},
        {"set": "task", "id": "q0", "correct": False},  # the task is not held-out
    ]
    head = {"task": [_ex(0)], "arc": [_ex(0), _ex(1)], "mmlu": [_ex(0), _ex(1)], "drift": [1]}
    # arc 1/2, mmlu 1/2: mean 0.5 (the whole arc set would be 2/3)
    assert base_heldout_mean(items, head) == pytest.approx(0.5)
    assert base_heldout_mean(items, {"task": [_ex(0)]}) is None
    with pytest.raises(ValueError, match=r"no verdict for 1 in-loop question\(s\) of 'arc'"):
        base_heldout_mean(items, {"arc": [_ex(0), _ex(7)]})


def _metrics(task, heldout, drift):
    return {"eval/task_accuracy": task, "eval/heldout_mean": heldout, "eval/drift_k3": drift}


def test_checks_against_the_budget_by_hand():
    g = Guard(GuardConfig(max_heldout_drop=2.0, max_drift=0.05), base_heldout=0.60)
    ok = g.check(8, _metrics(0.40, 0.59, 0.01))  # drop 1.0 point, drift 0.01
    assert ok.within and ok.heldout_drop == pytest.approx(1.0) and ok.drift == 0.01
    over = g.check(16, _metrics(0.50, 0.575, 0.08))  # drop 2.5 points, drift 0.08
    assert over.reasons == [
        "held-out drop 2.5 points > guard.max_heldout_drop 2",
        "drift 0.08 nats/token > guard.max_drift 0.05",
    ]
    drift_only = Guard(GuardConfig(max_drift=0.05), None).check(4, _metrics(0.5, 0.1, 0.04))
    assert drift_only.within and drift_only.heldout_drop is None  # held-out not budgeted
    assert not Guard(GuardConfig(), None).enabled


def test_stop_keeps_the_best_within_budget_and_chooses_it():
    g, state = Guard(GuardConfig(max_heldout_drop=2.0), base_heldout=0.60), GuardState()
    first = g.check(8, _metrics(0.40, 0.59, 0.0))
    assert g.update(state, first) == "save"
    g.set_best(state, first, "run/checkpoints/step_8")
    worse = g.check(16, _metrics(0.35, 0.595, 0.0))  # within, lower task accuracy: no save
    assert g.update(state, worse) is None and state.best["step"] == 8
    breach = g.check(24, _metrics(0.55, 0.55, 0.0))  # drop 5 points
    assert g.update(state, breach) == "stop" and state.breaches == 1
    pick = chosen(state, final_step=24)
    assert pick["weights"] == "best" and pick["checkpoint"] == "run/checkpoints/step_8"
    assert pick["why"] == (
        "over budget at step 24 (held-out drop 5.0 points > guard.max_heldout_drop 2); "
        "the best within budget: task 40.0 % at step 8"
    )
    # the state goes through a checkpoint as JSON
    again = GuardState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state


def test_rehearse_until_back_within_budget_and_the_base_when_never_within():
    g = Guard(GuardConfig(max_drift=0.05, action="rehearse"), None)
    state = GuardState()
    assert g.update(state, g.check(4, _metrics(0.3, 0.0, 0.09))) is None
    assert state.rehearsing and state.breaches == 1
    assert chosen(state, 4)["weights"] == "base"  # over budget at every check so far
    assert g.update(state, g.check(8, _metrics(0.3, 0.0, 0.02))) == "save"
    assert not state.rehearsing
    assert chosen(state, 12) == {
        "weights": "final", "step": 12, "why": "the final weights: within budget at step 8",
    }  # fmt: skip
    assert chosen(GuardState(), 3)["why"] == "the final weights: no in-loop check yet"


def test_prune_never_deletes_the_protected_checkpoint(tmp_path):
    for n in (2, 4, 6, 8):
        d = tmp_path / "checkpoints" / f"step_{n}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text("{}")
    gone = prune(tmp_path, keep=1, protect=tmp_path / "checkpoints" / "step_4")
    assert sorted(p.name for p in gone) == ["step_2", "step_6"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_4", "step_8"]


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        (["guard.max_drift=0.1", "eval.every=0"], "guard.max_drift: needs in-loop evaluations"),
        (["guard.max_drift=0.1", "eval.every=5"], "guard.max_drift: needs eval.drift=true"),
        (["guard.max_heldout_drop=-1"], "guard.max_heldout_drop: must be"),
        (["guard.max_heldout_drop=2", "eval.heldout=[]"], "needs held-out sets"),
        (["guard.action=rehearse", "algorithm.targets=gold"], "guard.action: rehearse"),
        (["guard.action=pause"], "guard.action"),
    ],
)
def test_config_rejects_a_budget_it_cannot_check(overrides, text):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert text in str(info.value)


def test_rehearsal_draws_the_sft_side_from_self_targets_only(monkeypatch):
    from ray_s3ft.run import controller as ctl_module
    from ray_s3ft.run.controller import Controller, TrainState
    from ray_s3ft.run.target_store import TargetRecord, TargetSet

    # examples 0, 2, 3 have an accepted self answer; 1 and 4 fall back to paraphrase / gold
    records = [
        TargetRecord(f"e{i}", f"q{i}", f"gold{i}", f"self{i}", ok, None if ok else f"para{i}",
                     None if ok else i == 1)
        for i, ok in enumerate([True, False, True, True, False])
    ]  # fmt: skip
    c = Controller.__new__(Controller)
    c.cfg = load_config(None, ["trainer.sft_batch_size=4", "learner.micro_batch_size=2"])
    c.targets, c.examples, c.tok = TargetSet(records, "s3ft", 5, 0), records, None
    c.g = SimpleNamespace(learner=[0, 1])
    c.state, c._self_targets = TrainState(), None
    seen = []
    monkeypatch.setattr(ctl_module, "sft_batch", lambda tok, p, t, n: seen.append((p, t)))
    monkeypatch.setattr(ctl_module, "shard", lambda batch, n: batch)
    c.sft_batch(advance=True)
    # over the whole store: its targets, the paraphrase and the gold among them
    assert len(seen[-1][1]) == 4
    assert set(seen[-1][1]) <= {"self0", "para1", "self2", "self3", "gold4"}
    assert c.state.cursors == {"sft": 4, "grpo": 0}
    c.state.guard.rehearsing = True
    c.sft_batch(advance=True)
    prompts, texts = seen[-1]
    assert c.self_targets() == [0, 2, 3]
    # 4 rows from 3 self targets: one epoch of them, then the next epoch's first
    assert set(texts) <= {"self0", "self2", "self3"} and len(texts) == 4
    assert set(texts[:3]) == {"self0", "self2", "self3"}
    assert [p for p in prompts] == [t.replace("self", "q") for t in texts]
    assert c.state.cursors == {"sft": 4, "grpo": 0, "rehearse": 4}  # its own stream


@pytest.mark.parametrize(("within", "action", "stopped"), [
    (False, "stop", True), (True, "stop", False), (False, "rehearse", False),
])  # fmt: skip
def test_a_resumed_run_the_budget_stopped_stays_stopped(tmp_path, within, action, stopped):
    from ray_s3ft.algo.schedules import make_schedule
    from ray_s3ft.run.controller import Controller, TrainState

    ckpt = tmp_path / "checkpoints" / "step_2"
    ckpt.mkdir(parents=True)
    state = TrainState(step=2, schedule=make_schedule("sft", seed=0).state_dict())
    state.guard.last = {"step": 2, "within": within, "reasons": [] if within else ["drift"]}
    (ckpt / "trainer_state.json").write_text(json.dumps(asdict(state)))
    c = Controller.__new__(Controller)
    c.cfg = load_config(
        None, ["schedule.kind=sft", "eval.drift=true", "guard.max_drift=0.1",
               f"guard.action={action}"],
    )  # fmt: skip
    c.state, c.schedule = TrainState(), make_schedule("sft", seed=0)
    c.guard = Guard(c.cfg.guard, None)
    c.g = SimpleNamespace(learner=SimpleNamespace(call=lambda *a: None))
    c.sampler = SimpleNamespace(restore=lambda pending: None)
    assert c.restore(ckpt) is True
    assert c.state.step == 2 and c.stopped is stopped
