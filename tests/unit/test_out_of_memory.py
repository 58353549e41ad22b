"""A worker killed for memory mid-run ends the run with one message: which process, what it and
its node held, what to change, how to resume; exit status 1, no traceback. Driven with the
errors Ray raises (constructed here), not with a real kill."""

import json
from types import SimpleNamespace

import pytest
from ray.exceptions import ActorDiedError, OutOfMemoryError, RayActorError

from ray_s3ft import cli
from ray_s3ft.config import load_config
from ray_s3ft.errors import OutOfMemory, RunFailed
from ray_s3ft.run import controller as controller_module
from ray_s3ft.run.controller import Controller, TrainState
from ray_s3ft.run.recovery import memory_failure
from ray_s3ft.workers.group import ActorDied, ActorGroup, memory_kill

# Ray 2.60's memory monitor (raylet), abridged: the node's line, the killed worker, its top users
RAY_OOM = (
    "Task was killed due to the node running low on memory.\n"
    "Memory on the node (IP: 10.0.0.1, ID: 5f3a9c) was 22.80GB used / 23.50GB limit (0.970213)\n"
    "(job ID=01000000, lease ID=8c1e, task name=RolloutWorker.update_weights, required "
    "resources={CPU: 1}, pid=4242, actual memory used=7.40GB, worker ID=9d2f)\n"
    "Top 10 memory users:\nPID\tMEM(GB)\tCOMMAND\n4242\t7.40\tray::RolloutWorker.update_weights\n"
    "4100\t6.70\tray::LearnerActor\nRefer to the documentation on how to address the out of "
    "memory issue: https://docs.ray.io/en/latest/ray-observability/user-guides/debug-apps/"
    "debug-memory.html. To disable worker killing, set RAY_memory_monitor_refresh_ms to zero."
)
LINE = (
    "rollout: a worker (RolloutWorker.update_weights, pid 4242) was killed for memory; it held "
    "7.4 GiB; its node had 22.8 of 23.5 GiB in use"
)
QWEN_05B = {
    "hidden_size": 896, "num_hidden_layers": 24, "vocab_size": 151936, "intermediate_size": 4864,
    "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": False,
}  # fmt: skip


def test_rays_kill_becomes_one_line_of_what_was_killed():
    oom = memory_kill("rollout", OutOfMemoryError(RAY_OOM))
    assert (oom.task, oom.pid, oom.used, oom.node) == (
        "RolloutWorker.update_weights", 4242, 7.4, (22.8, 23.5),
    )  # fmt: skip
    assert str(oom) == LINE and isinstance(oom, RunFailed)
    # an actor whose death Ray put down to its memory monitor
    died = RayActorError("ab" * 8, "The actor died unexpectedly before finishing this task.\n" + RAY_OOM)  # fmt: skip
    assert str(memory_kill("learner", died)).startswith("learner: a worker (RolloutWorker")
    # other deaths are not (a crash's message names the kernel's OOM killer as a possible cause)
    assert memory_kill("learner", ActorDiedError()) is None
    crash = RayActorError(None, "The worker died unexpectedly. Some common causes include: (1) "
                          "the process was killed by the OOM killer due to high memory usage")  # fmt: skip
    assert memory_kill("learner", crash) is None
    # what Ray did not say is left out
    assert str(memory_kill("judge", OutOfMemoryError("Task was killed due to memory pressure"))) == (
        "judge: a worker was killed for memory"
    )  # fmt: skip


def _group(monkeypatch, error):
    import ray

    group = ActorGroup.__new__(ActorGroup)
    group.name, group.local = "rollout", False

    def get(refs, **kw):
        raise error

    monkeypatch.setattr(ray, "get", get)
    return group


def test_a_group_call_raises_it_instead_of_a_restart(monkeypatch):
    with pytest.raises(OutOfMemory) as e:
        _group(monkeypatch, OutOfMemoryError(RAY_OOM)).wait(["ref"])
    assert str(e.value) == LINE and e.value.__cause__ is None
    # an actor death for memory too: not an ActorDied, which would restart the learner group
    with pytest.raises(OutOfMemory):
        _group(monkeypatch, RayActorError("cd" * 8, RAY_OOM)).wait(["ref"])
    with pytest.raises(ActorDied):
        _group(monkeypatch, ActorDiedError()).wait(["ref"])


@pytest.fixture
def cfg(tmp_path):
    model = tmp_path / "qwen"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(QWEN_05B))
    return load_config(
        "configs/smollm2-135m-gsm8k.yaml",
        [f"model.path={model}", f"trainer.output_dir={tmp_path / 'run'}"],
    )


def test_the_message_says_what_to_change_and_how_to_resume(cfg):
    error = memory_kill("rollout", OutOfMemoryError(RAY_OOM))
    msg = str(memory_failure(cfg, error, "resume: ray-s3ft train --config x.yaml"))
    assert msg == (
        f"{LINE}.\nThis layout's estimated peak: ~35.8 GiB (driver 1.0, Ray 0.6, engine 7.3, "
        "judge 0.4, 2 learner ranks 14.4 each, object store 2.3) of 22.3 GiB that Ray's memory "
        "monitor allows. To use less: set resources.learner_ranks: 1 (~21.4 GiB).\n"
        "resume: ray-s3ft train --config x.yaml"
    )


def test_the_training_loop_stops_with_its_checkpoint_to_resume(cfg, tmp_path, monkeypatch):
    class Quiet:
        def __init__(self, *a, **kw): ...
        def __getattr__(self, name):
            return lambda *a, **kw: None

    monkeypatch.setattr(controller_module, "MetricsLogger", Quiet)
    monkeypatch.setattr(controller_module, "Progress", Quiet)
    ctl = Controller.__new__(Controller)
    ctl.cfg, ctl.run_dir, ctl.state = cfg, tmp_path / "run", TrainState(step=6)
    ctl.sampler = SimpleNamespace(discard=lambda: None)
    ctl.last_checkpoint = tmp_path / "run" / "checkpoints" / "step_5"

    def step(_):
        raise memory_kill("rollout", OutOfMemoryError(RAY_OOM))

    ctl.step = step
    with pytest.raises(RunFailed) as e:
        ctl.train()
    msg = str(e.value)
    assert msg.startswith(LINE) and "To use less: set resources.learner_ranks: 1" in msg
    assert msg.endswith(
        f"Its latest checkpoint is {ctl.last_checkpoint}; resume from it with:\n"
        f"  ray-s3ft train --config {tmp_path / 'run' / 'config.yaml'}"
    )
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_the_command_line_prints_one_message_and_exits_1(cfg, monkeypatch, capsys):
    def train(args):
        raise memory_failure(cfg, memory_kill("rollout", OutOfMemoryError(RAY_OOM)), "resume")

    monkeypatch.setitem(cli.COMMANDS, "train", train)
    assert cli.main(["train"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ray-s3ft: run failed: {LINE}.\n") and "Traceback" not in err
    assert "Top 10 memory users" not in err  # Ray's dump stays out
