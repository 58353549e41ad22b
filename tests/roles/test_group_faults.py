"""Actor groups under faults, on a real local Ray cluster with tiny actors (seconds, no models):

- a streamed chunk whose actor yields nothing for ``stall_s`` is cut short, keeping what it
  yielded, and its actor is restarted, so the next call does not queue behind the stuck one;
  an actor that is slow but keeps yielding is waited for;
- judges: 40 looping programs among 40 correct ones keep the 40 correct verdicts and spend
  no restart; a hung judge loses only the verdicts it had not decided;
- an actor killed by its PID is restarted by Ray, its call retried, and ``restarts()`` counts it;
- a call fails as soon as one actor of it dies, even while another actor is still busy (a rank
  waiting in a collective for a dead peer would otherwise block the controller for good);
- a rank's error that echoes its peer's death (a broken collective) is reported as the death;
- a call that waited on a dead actor's output names the dead actor's group, not its own; one
  whose argument was lost with its node names the group that made it, as lost;
- ``wait_back`` returns once Ray has restarted a killed actor, and fails for one out of restarts;
- with ``log_dir`` an actor's stdout and stderr land in ``<log_dir>/<group>-<i>.log``.
"""

import os
import signal
import sys
import time

import pytest

from ray_s3ft.workers.group import ActorDied, ActorGroup, Resources

pytestmark = pytest.mark.slow


class Worker:
    def __init__(self, rank: int = 0) -> None:
        self.rank = rank
        print(f"worker {rank} up", flush=True)

    def pid(self) -> int:
        return os.getpid()

    def slow_double(self, items: list, seconds: float = 0.0, slow_rank: int = -1) -> list:
        time.sleep(seconds if self.rank == slow_rank else 0.0)
        return [2 * x for x in items]

    def double_each(self, items: list, pause: float, stall_rank: int = -1):
        """Yields each item doubled, ``pause`` s apart; rank ``stall_rank`` hangs after its
        first."""
        for i, x in enumerate(items):
            time.sleep(600 if i == 1 and self.rank == stall_rank else pause)
            yield 2 * x

    def die_after(self, seconds: float) -> list:
        time.sleep(seconds)
        os._exit(1)

    def length(self, items: list) -> int:
        return len(items)

    def fail_or_die(self, _shard, die_rank: int) -> int:
        """Rank ``die_rank`` dies after 1 s; the other fails at once, as a rank in a
        collective does when its peer's connection breaks."""
        if self.rank == die_rank:
            time.sleep(1.0)
            os._exit(1)
        raise RuntimeError("Connection reset by peer")

    def lose(self, ref_hex: str) -> None:
        """What a call whose argument (``ref_hex``) was lost with its node raises."""
        import ray

        raise ray.exceptions.ObjectReconstructionFailedError(ref_hex, "", "")

    def die_or_wait(self, _shard, die_rank: int) -> int:
        if self.rank == die_rank:
            os._exit(1)
        time.sleep(60)
        return self.rank


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    import ray

    from ray_s3ft.run.cluster import init_private_ray

    tmp = tmp_path_factory.mktemp("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Worker lives in tests/
    init_private_ray(tmp, 4, {}, log_to_driver=False)
    yield
    ray.shutdown()


def _group(n, restarts, **kw):
    return ActorGroup(
        Worker, n, name="w", resources=Resources(cpus=0.5, max_restarts=restarts),
        rank_kwargs=lambda i: {"rank": i}, **kw,
    )  # fmt: skip


def test_a_stalled_stream_is_cut_short_and_its_actor_restarted_a_slow_one_is_not(ray_cluster):
    g = _group(2, restarts=2)
    assert g.restarts() == 0  # records the incarnations
    started = time.perf_counter()
    # rank 0 yields every 0.8 s, 3.2 s in all: longer than stall_s, never silent that long
    out = g.stream_chunks(Worker.double_each, [1, 2, 3, 4, 5, 6, 7, 8], stall_s=2.0,
                          pause=0.8, stall_rank=1)  # fmt: skip
    assert out == [[2, 4, 6, 8], [10]]
    assert time.perf_counter() - started < 10
    # the stuck actor was replaced: the next call is fast, and the replacement is counted
    started = time.perf_counter()
    assert g.stream_chunks(Worker.double_each, [5, 6], pause=0.0) == [[10], [12]]
    assert time.perf_counter() - started < 30
    assert g.restarts() == 1
    assert g.restarts() == 0
    g.shutdown()


def test_an_actor_killed_by_pid_is_restarted_retried_and_counted(ray_cluster):
    g = _group(2, restarts=1)
    g.restarts()
    victim = g.call_one(Worker.pid, rank=1)
    os.kill(victim, signal.SIGKILL)
    assert g.map(Worker.slow_double, [1, 2, 3]) == [2, 4, 6]  # rank 1's chunk was retried
    assert g.call_one(Worker.pid, rank=1) != victim
    assert g.restarts() == 1
    g.shutdown()


def test_a_call_fails_at_once_when_one_actor_dies_while_another_waits(ray_cluster):
    g = _group(2, restarts=0)
    started = time.perf_counter()
    with pytest.raises(ActorDied, match="^w: an actor died"):
        g.scatter(Worker.die_or_wait, [None, None], die_rank=1)
    assert time.perf_counter() - started < 30  # rank 0 still sleeps its 60 s
    g.shutdown()


def test_actor_output_goes_to_its_log_file(ray_cluster, tmp_path):
    g = _group(2, restarts=0, log_dir=str(tmp_path))
    g.call(Worker.pid)  # constructed
    assert "worker 0 up" in (tmp_path / "w-0.log").read_text()
    assert "worker 1 up" in (tmp_path / "w-1.log").read_text()
    g.shutdown()


def _code(body: str):
    from ray_s3ft.workers.types import JudgeItem

    return JudgeItem("add", f"def add(a, b):\n    {body}", "", "code", ("assert add(1, 2) == 3",))


def test_looping_programs_cost_only_their_own_verdicts_not_a_restart(ray_cluster):
    from ray_s3ft.config import JudgeConfig
    from ray_s3ft.workers.judge import JudgeWorker, judge_on

    # each judge's share: 20 programs that loop to their 2 s limit among 20 correct ones, 4
    # at a time (10 s); the judges may go 6 s without deciding anything
    cfg = JudgeConfig(verifier="code", sandbox_timeout_s=2.0)
    g = ActorGroup(JudgeWorker, 2, name="judge", resources=Resources(cpus=0.5, max_restarts=1),
                   kwargs={"cfg": cfg, "sandboxes": 4})  # fmt: skip
    g.restarts()
    items = [_code("while True: pass"), _code("return a + b")] * 40
    started = time.perf_counter()
    verdicts, late = judge_on(g, items, timeout_s=6.0)
    assert time.perf_counter() - started < 40
    assert [v.correct for v in verdicts] == [None, True] * 40 and late == 0
    assert {v.reason for v in verdicts[0::2]} == {"sandbox timeout"}
    assert g.restarts() == 0 and g.states() == ["ALIVE", "ALIVE"]
    g.shutdown()


def test_a_hung_judge_loses_only_its_undecided_verdicts_not_the_run(ray_cluster):
    from ray_s3ft.config import JudgeConfig
    from ray_s3ft.workers.judge import JudgeWorker, judge_on

    # judge 1 decides one program, then one that loops inside a sandbox allowed 60 s: past the
    # 3 s the judge may go without deciding, it is taken as hung
    cfg = JudgeConfig(verifier="code", sandbox_timeout_s=60.0)
    g = ActorGroup(JudgeWorker, 2, name="judge", resources=Resources(cpus=0.5, max_restarts=1),
                   kwargs={"cfg": cfg})  # fmt: skip
    g.restarts()
    ok, stuck = _code("return a + b"), _code("while True: pass")
    started = time.perf_counter()
    verdicts, late = judge_on(g, [ok, ok, ok, stuck], timeout_s=3.0)
    assert time.perf_counter() - started < 15
    assert [v.correct for v in verdicts] == [True, True, True, None] and late == 1
    assert verdicts[3].reason == "judge timeout"
    assert [v.correct for v in judge_on(g, [ok, ok], timeout_s=30.0)[0]] == [True, True]
    assert g.restarts() == 1
    g.shutdown()


def test_a_call_on_a_dead_groups_output_names_that_group(ray_cluster):
    learner = ActorGroup(Worker, 1, name="learner", resources=Resources(cpus=0.5))
    engines = _group(1, restarts=1)
    weights = learner.submit(Worker.die_after, 1.0)[0]  # dies before it returns
    with pytest.raises(ActorDied, match="^learner: an actor died") as e:
        engines.wait(engines.submit(Worker.length, weights))
    assert e.value.group == "learner" and not e.value.lost  # a crash Ray reported
    assert learner.states() == ["DEAD"] and engines.states() == ["ALIVE"]
    with pytest.raises(ActorDied, match="out of restarts"):
        learner.wait_back(time.monotonic() + 30, print)
    learner.shutdown()
    engines.shutdown()


def test_a_call_whose_argument_was_lost_names_the_group_that_made_it_as_lost(ray_cluster):
    """The weights a learner rank put in the object store are gone (their node died while the
    engines read them): the engines' call fails with Ray's error for that object, and the
    group to restart is the learner's, as a lost node, not the engines'. (On one node the
    object cannot be lost: the engine raises the error Ray raises then, for that object.)"""
    learner = ActorGroup(Worker, 1, name="learner", resources=Resources(cpus=0.5))
    engines = _group(1, restarts=1)
    weights = learner.submit(Worker.slow_double, [1, 2, 3])[0]
    assert learner.wait([weights]) == [[2, 4, 6]]
    with pytest.raises(ActorDied, match="^learner: an actor died: .*ObjectReconstruction") as e:
        engines.wait(engines.submit(Worker.lose, weights.hex()))
    assert e.value.group == "learner" and e.value.lost
    assert engines.states() == ["ALIVE"]
    learner.shutdown()
    engines.shutdown()


def test_wait_back_returns_once_a_killed_actor_was_restarted(ray_cluster):
    g = _group(1, restarts=1)
    g.restarts()
    os.kill(g.call_one(Worker.pid), signal.SIGKILL)
    lines = []
    g.wait_back(time.monotonic() + 120, lines.append)
    assert g.states() == ["ALIVE"] and g.restarts() == 1
    g.shutdown()


def test_a_ranks_error_that_echoes_its_peers_death_is_reported_as_the_death(ray_cluster):
    g = _group(2, restarts=0)
    with pytest.raises(ActorDied, match="^w: an actor died"):
        g.scatter(Worker.fail_or_die, [None, None], die_rank=1)
    g.shutdown()
    g = _group(2, restarts=0)  # no peer died: the error itself
    with pytest.raises(RuntimeError, match="Connection reset by peer"):
        g.scatter(Worker.fail_or_die, [None, None], die_rank=-1)
    g.shutdown()
