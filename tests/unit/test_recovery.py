"""The controller's handling of a lost node (``run/recovery.py``), on hand-made run states:
what is counted, what the run goes back to, and the messages a stopped run leaves."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from ray_s3ft.errors import RunFailed
from ray_s3ft.run.controller import TrainState
from ray_s3ft.run.recovery import Recovery
from ray_s3ft.workers.group import ActorDied


def lost(group: str) -> ActorDied:
    return ActorDied(group, ActorUnavailableError("socket closed", b"\x01" * 16))


def crashed(group: str) -> ActorDied:
    return ActorDied(group, ActorDiedError())


class Group:
    def __init__(self, back: bool = True) -> None:
        self.back, self.waits = back, 0

    def wait_back(self, deadline: float, progress) -> None:
        self.waits += 1
        if not self.back:
            raise ActorDied("rollout", TimeoutError("not back in time"))


class Run(Recovery):
    def __init__(self, node_wait_s: float = 30.0, back: bool = True) -> None:
        self.cfg = SimpleNamespace(trainer=SimpleNamespace(node_wait_s=node_wait_s))
        self.g = SimpleNamespace(rollout=Group(back), judge=Group(back))
        self.state = TrainState(step=5, version=5, cursors={"sft": 24, "grpo": 8})
        self.sampler = SimpleNamespace(discarded=0)
        self.sampler.discard = lambda: setattr(self.sampler, "discarded", 1)
        self.weights = SimpleNamespace(version=5)
        self.last_checkpoint = Path("/runs/x/checkpoints/step_4")
        self.run_dir = Path("/runs/x")


def test_only_an_unreachable_actor_counts_as_a_lost_node():
    assert lost("rollout").lost and not crashed("rollout").lost
    assert str(lost("learner")).startswith("learner: an actor died: ActorUnavailableError")


def test_a_step_broken_by_a_lost_engine_runs_again_from_its_start():
    run = Run()
    before = TrainState(step=5, version=5, cursors={"sft": 24, "grpo": 8})
    run.state.cursors["grpo"] = 12  # the broken step had taken its prompts
    run.state.faults["judge_timeouts"] = 1  # and counted a fault on the way
    run.redo_after_lost_node(lost("rollout"), before)
    assert run.state.step == 5 and run.state.cursors == {"sft": 24, "grpo": 8}
    assert run.state.faults["node_losses"] == 1 and run.state.faults["judge_timeouts"] == 1
    assert run.g.rollout.waits == 1 and run.g.judge.waits == 0
    assert run.weights.version == -1 and run.sampler.discarded == 1


def test_a_lost_judge_is_waited_for_in_its_own_group():
    run = Run()
    run.redo_after_lost_node(lost("judge"), TrainState(step=5, version=5))
    assert (run.g.judge.waits, run.g.rollout.waits) == (1, 0)


def test_node_wait_0_stops_at_once_with_the_resume_command():
    run = Run(node_wait_s=0)
    with pytest.raises(RunFailed) as e:
        run.redo_after_lost_node(lost("rollout"), TrainState(step=5, version=5))
    text = str(e.value)
    assert "node was lost at step 5 and trainer.node_wait_s=0: the run stopped" in text
    assert "Its latest checkpoint is /runs/x/checkpoints/step_4" in text
    assert "ray-s3ft train --config /runs/x/config.yaml" in text
    assert run.g.rollout.waits == 0 and run.state.faults["node_losses"] == 1


def test_no_replacement_in_time_stops_the_run():
    run = Run(node_wait_s=20, back=False)
    with pytest.raises(RunFailed, match="within trainer.node_wait_s=20 s; the run stopped"):
        run.redo_after_lost_node(lost("rollout"), TrainState(step=5, version=5))


def test_a_crash_ray_did_not_restart_is_not_a_lost_node():
    run = Run()
    with pytest.raises(RunFailed, match="rollout: an actor died: ActorDiedError"):
        run.redo_after_lost_node(crashed("rollout"), TrainState(step=5, version=5))
    assert run.state.faults["node_losses"] == 0 and run.g.rollout.waits == 0


def test_a_step_whose_update_was_taken_is_not_redone():
    run = Run()
    run.state.version = 6
    with pytest.raises(RunFailed, match="after the step's update"):
        run.redo_after_lost_node(lost("rollout"), TrainState(step=5, version=5))


def test_an_evaluation_runs_again_once_its_engine_is_back():
    run, calls = Run(), []

    def evaluate():
        calls.append(1)
        if len(calls) == 1:
            raise lost("rollout")
        return {"eval/task": 0.5}

    assert run.after_lost_node(evaluate) == {"eval/task": 0.5}
    assert len(calls) == 2 and run.state.faults["node_losses"] == 1
    assert run.weights.version == -1  # the restarted engine is synced before it evaluates
    with pytest.raises(ActorDied):  # a learner's fault is the learner restart's to handle
        run.after_lost_node(lambda: (_ for _ in ()).throw(lost("learner")))


def _ckpt(run_dir: Path, step: int, complete: bool = True) -> Path:
    from ray_s3ft.run.checkpoints import STATE, checkpoint_dir

    d = checkpoint_dir(run_dir, step)
    (d / "hf").mkdir(parents=True)
    if complete:
        (d / STATE).write_text("{}")
    return d


def test_keep_checkpoints_deletes_all_but_the_newest_complete_ones(tmp_path):
    from ray_s3ft.run.checkpoints import latest_checkpoint, prune

    for step in (4, 8, 12):
        _ckpt(tmp_path, step)
    _ckpt(tmp_path, 6, complete=False)  # an interrupted save between them
    _ckpt(tmp_path, 16, complete=False)  # a save in progress
    (tmp_path / "checkpoints" / "step_5.saving").mkdir()  # what a save that stopped left
    gone = prune(tmp_path, keep=2)
    assert sorted(d.name for d in gone) == ["step_4", "step_5.saving", "step_6"]
    left = sorted(d.name for d in (tmp_path / "checkpoints").iterdir())
    assert left == ["step_12", "step_16", "step_8"]
    assert latest_checkpoint(tmp_path).name == "step_12"
    assert prune(tmp_path, keep=2) == []  # nothing more to delete
    assert [d.name for d in prune(tmp_path, keep=1)] == ["step_8"]


class Learners:
    """Writes files as the learner group's save does, ``tag`` in each; ``crash``: dies between
    the DeepSpeed state and the HF model."""

    def __init__(self, tag: str, crash: bool = False) -> None:
        self.tag, self.crash = tag, crash

    def call(self, fn, ds_dir: str, hf_dir: str) -> None:
        Path(ds_dir).mkdir(parents=True, exist_ok=True)
        (Path(ds_dir) / "mp_rank_00_model_states.pt").write_text(self.tag)
        if self.crash:
            raise ActorDied("learner", ActorDiedError())
        Path(hf_dir).mkdir(parents=True, exist_ok=True)
        (Path(hf_dir) / "model.safetensors").write_text(self.tag)


def test_a_step_saved_again_is_replaced_whole_or_not_at_all(tmp_path):
    import json

    from ray_s3ft.run.checkpoints import PENDING, STATE, latest_checkpoint, save_checkpoint

    def saved(d: Path) -> dict:
        return {str(f.relative_to(d)): f.read_text() for f in sorted(d.rglob("*")) if f.is_file()}

    save_checkpoint(tmp_path, 4, Learners("a"), {"version": 1}, {PENDING: "[1]"})
    first = saved(tmp_path / "checkpoints" / "step_4")
    assert first == {
        PENDING: "[1]", STATE: json.dumps({"version": 1}, indent=2) + "\n",
        "deepspeed/mp_rank_00_model_states.pt": "a", "hf/model.safetensors": "a",
    }  # fmt: skip
    # a learner restart repeats step 4 and dies saving it: the first save stays as it was
    # (written in place, its trainer_state.json marked the new DeepSpeed state complete)
    with pytest.raises(ActorDied):
        save_checkpoint(tmp_path, 4, Learners("b", crash=True), {"version": 2})
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_4"
    assert saved(tmp_path / "checkpoints" / "step_4") == first
    # saved again in full: nothing of the first save is left (its pending batch neither)
    save_checkpoint(tmp_path, 4, Learners("c"), {"version": 3})
    assert saved(tmp_path / "checkpoints" / "step_4") == {
        STATE: json.dumps({"version": 3}, indent=2) + "\n",
        "deepspeed/mp_rank_00_model_states.pt": "c", "hf/model.safetensors": "c",
    }  # fmt: skip
    assert [d.name for d in (tmp_path / "checkpoints").iterdir()] == ["step_4"]


class Engines:
    """Rollout engines whose first evaluation is answered partly by a restarted engine."""

    def __init__(self, restarts: int) -> None:
        self.restarts, self.served, self.loads = restarts, [5, 5], []

    def submit(self, fn, version, ref):  # RolloutWorker.update_weights
        self.loads.append(version)
        self.served = [version] * len(self.served)
        return []

    def wait(self, refs) -> None:
        pass

    def call(self, fn):  # RolloutWorker.weights_version
        return list(self.served)

    def crash_one(self) -> None:
        if self.restarts:
            self.restarts -= 1
            self.served[1] = 0  # back with the base weights; Ray retried its calls there


def _sync(engines: Engines):
    from ray_s3ft.run.weight_sync import WeightSync

    learner = SimpleNamespace(submit=lambda fn: ["weights"], wait=lambda refs: None)
    return WeightSync(learner, engines, nccl_meta=None, version=4)


def test_an_evaluation_answered_by_a_restarted_engine_is_resynced_and_run_again(caplog):
    engines = Engines(restarts=1)
    sync, runs = _sync(engines), []

    def evaluate():
        runs.append(list(engines.served))
        engines.crash_one()
        return {"accuracy": len(runs)}

    assert sync.evaluate(5, evaluate) == {"accuracy": 2}  # the second run's answers
    assert runs == [[5, 5], [5, 5]] and engines.loads == [5, 5] and sync.version == 5
    assert "engine versions [5, 0] after an evaluation, expected 5" in caplog.text


def test_an_evaluation_on_engines_that_keep_restarting_stops():
    engines = Engines(restarts=3)
    with pytest.raises(RuntimeError, match="rollout engines keep losing their weights"):
        _sync(engines).evaluate(5, engines.crash_one)
    assert engines.loads == [5, 5, 5]
