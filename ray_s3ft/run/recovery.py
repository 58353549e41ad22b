"""How a run survives its faults: the controller's side of them (``Recovery``, a part of
``Controller``).

    kind                 what the run does                                     counted as
    rollout/judge crash  Ray restarts the actor and retries its call            faults/<group>_restarts
    judge actor hung     its share's missing verdicts undecided, the actor      faults/judge_timeouts
                         restarted (nothing decided for judge.timeout_s; a slow
                         program only costs its own verdict: sandbox_timeout_s)
    learner rank dies    a new learner group from the latest checkpoint;        faults/learner_restarts
                         the steps after it run again (trainer.max_learner_restarts);
                         under NCCL weight sync the engines join the new group
    a node is lost       the same, once a node has taken its place, within     faults/node_losses
                         trainer.node_wait_s (0: stop at once with how to resume)

A lost node first shows as unreachable actors (``ActorDied.lost``): Ray declares the node dead
only once its health checks fail, and a call that was in flight is not retried. Its learner
ranks are then replaced like dead ones, on a node placed within ``node_wait_s``. Its rollout
or judge actors Ray restarts by itself once a node with room for their placement bundle has
joined; the controller waits for that (``ActorGroup.wait_back``) and runs the step again from
its start: nothing of it was trained on, and the data order, the sampling seeds and the
schedule's draws depend only on (seed, step), so the redone step is the one that was lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from ray_s3ft.config import Config
from ray_s3ft.errors import OutOfMemory, RunFailed
from ray_s3ft.workers.group import ActorDied, ActorGroup, GroupStartError

log = logging.getLogger(__name__)

T = TypeVar("T")
FAULTS = (
    "rollout_restarts", "judge_restarts", "judge_timeouts", "learner_restarts", "node_losses",
)  # fmt: skip
LEARNER_START_S = 600.0  # a restarted learner group on a node that is still there


class Recovery:
    """The fault handling of ``Controller``: it uses the controller's ``cfg``, ``g`` (the
    groups), ``state``, ``sampler``, ``weights``, ``last_checkpoint``, ``run_dir`` and
    ``restore``."""

    def how_to_resume(self) -> str:
        ckpt, cmd = self.last_checkpoint, f"ray-s3ft train --config {self.run_dir / 'config.yaml'}"
        if ckpt is None:
            return f"It has no checkpoint yet; start it again with:\n  {cmd}"
        return f"Its latest checkpoint is {ckpt}; resume from it with:\n  {cmd}"

    def out_of_memory(self, error: OutOfMemory) -> RunFailed:
        """A worker was killed for memory: the run stops (a restarted one would be killed
        again) with what was killed, what to change and how to resume."""
        return memory_failure(self.cfg, error, self.how_to_resume())

    def node_lost(self, error: ActorDied) -> None:
        """Count a lost node; stop the run when ``trainer.node_wait_s`` is 0."""
        self.state.faults["node_losses"] += 1
        wait = self.cfg.trainer.node_wait_s
        if wait == 0:
            raise RunFailed(
                f"{error}\nThe {error.group} group's node was lost at step {self.state.step} and "
                f"trainer.node_wait_s=0: the run stopped.\n{self.how_to_resume()}"
            ) from error
        log.warning(
            "%s at step %d: its node was lost; waiting up to %.0f s (trainer.node_wait_s) for "
            "a node to take its place", error, self.state.step, wait,
        )  # fmt: skip

    def wait_back(self, error: ActorDied) -> float:
        """Until Ray has restarted the lost actors of ``error.group`` (rollout or judge) on
        another node; the seconds that took. Not within ``trainer.node_wait_s``: the run
        stops."""
        group: ActorGroup = self.g.rollout if error.group == "rollout" else self.g.judge
        started = time.monotonic()
        try:
            group.wait_back(started + self.cfg.trainer.node_wait_s, log.warning)
        except ActorDied as e:
            raise RunFailed(
                f"{e}\nNo node took the lost one's place within trainer.node_wait_s="
                f"{self.cfg.trainer.node_wait_s:g} s; the run stopped.\n{self.how_to_resume()}"
            ) from e
        self.weights.version = -1  # a restarted engine serves the base weights
        return time.monotonic() - started

    def redo_after_lost_node(self, error: ActorDied, before) -> None:
        """A rollout or judge actor became unreachable during a step: once it is back, the
        step runs again from its start (``before``, the ``TrainState`` the step began with;
        the faults counted since are kept). A crash Ray did not restart (out of restarts): the
        run stops."""
        if not error.lost:
            raise RunFailed(f"{error}\n{self.how_to_resume()}") from error
        if self.state.version != before.version:  # the learners already took this step
            raise RunFailed(f"{error} after the step's update\n{self.how_to_resume()}") from error
        self.node_lost(error)
        seconds = self.wait_back(error)
        log.warning("%s back after %.0f s: step %d runs again", error.group, seconds, before.step)
        faults, self.state = self.state.faults, before
        self.state.faults = faults
        self.sampler.discard()

    def after_lost_node(self, fn: Callable[[], T]) -> T:
        """``fn()``, once more after the rollout or judge actor it lost is back (for work that
        can simply run again, such as an evaluation)."""
        try:
            return fn()
        except ActorDied as e:
            if e.group == "learner" or not e.lost:
                raise
            self.node_lost(e)
            self.wait_back(e)
            return self.after_lost_node(fn)

    def restart_learner(self, error: ActorDied) -> None:
        """A learner rank died: a new learner group continues from this run's latest
        checkpoint (or from the base model before the first one). Its node lost: the new
        group is placed within ``trainer.node_wait_s``, else the run stops."""
        n = self.state.faults["learner_restarts"] + 1
        ckpt, step = self.last_checkpoint, self.state.step
        if n > self.cfg.trainer.max_learner_restarts:
            raise RunFailed(
                f"{error}\nThe learner group failed at step {step} after {n - 1} restart(s) "
                f"(trainer.max_learner_restarts={self.cfg.trainer.max_learner_restarts}); "
                f"the run stopped.\n{self.how_to_resume()}"
            ) from error
        if error.lost:
            self.node_lost(error)
        log.warning(
            "%s at step %d: restarting the learner group from %s (restart %d of %d)",
            error, step, ckpt or "the base model", n, self.cfg.trainer.max_learner_restarts,
        )  # fmt: skip
        faults = {**self.state.faults, "learner_restarts": n}
        self.sampler.discard()
        started = time.monotonic()
        self.start_learner_again(started + (self.cfg.trainer.node_wait_s if error.lost else 0))
        log.warning("the learner group is back after %.0f s", time.monotonic() - started)
        self.weights.learner, self.weights.nccl_meta = self.g.learner, self.g.nccl_meta
        fresh = type(self.state)(targets=self.state.targets)  # a TrainState
        self.state, self.schedule = fresh, self._new_schedule()
        if ckpt is not None:
            self.restore(ckpt)
        self.state.faults = faults
        self.weights.version = -1  # the engines hold weights of steps that are undone

    def start_learner_again(self, deadline: float) -> None:
        """A new learner group, tried until ``deadline`` (``time.monotonic()``): right after a
        node is lost Ray may still count it in (its health checks have not failed yet), and a
        group placed there dies while it sets up; one more try then lands elsewhere."""
        while True:
            left = deadline - time.monotonic()
            try:  # a crash (no deadline): one try, on nodes that are all there
                self.g.restart_learner(left if left > 0 else LEARNER_START_S)
                return
            except (GroupStartError, ActorDied) as e:
                if time.monotonic() >= deadline:
                    raise RunFailed(
                        f"{e}\nThe learner group could not start again; the run stopped.\n"
                        f"{self.how_to_resume()}"
                    ) from e
                log.warning("the learner group could not start (%s); trying again", e)
                time.sleep(5)

    def count_restarts(self) -> None:
        """Count the rollout and judge actors Ray restarted since the last look. Not the
        engines while a prefetched rollout runs: the question would wait for it. An actor that
        is unreachable now is counted once Ray has restarted it elsewhere."""
        groups = [("judge", self.g.judge)]
        if not self.sampler.busy:
            groups.insert(0, ("rollout", self.g.rollout))
        for name, group in groups:
            try:
                n = group.restarts()
            except ActorDied as e:
                if not e.lost:
                    raise
                continue
            if n:
                self.state.faults[f"{name}_restarts"] += n
                log.warning(
                    "%d %s actor(s) died and were restarted; their work was retried", n, name
                )


def memory_failure(cfg: Config, error: OutOfMemory, resume: str) -> RunFailed:
    """One message for a worker killed for memory: which, how much it and its node held
    (what Ray said), the layout's estimate with the settings that would fit (``run/memory``),
    and ``resume`` (how to go on)."""
    from ray_s3ft.model.paths import resolve_model_path
    from ray_s3ft.run.memory import GIB, advice, monitor_threshold

    if error.node is not None:
        total = error.node[1] * GIB
    else:
        import psutil

        total = float(psutil.virtual_memory().total)
    try:
        model_dir = resolve_model_path(cfg.model.path)
    except Exception:  # noqa: BLE001  (the advice then names the usual settings)
        model_dir = None
    limit = total * monitor_threshold()
    return RunFailed(f"{error}.\n{advice(cfg, model_dir, limit)}\n{resume}")
