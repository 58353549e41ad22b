"""``WeightSync``: the rollout engines brought to the learner's weights version, lazily, and
evaluations that only count answers of engines at that version."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from ray_s3ft.workers.group import ActorGroup
from ray_s3ft.workers.learner import LearnerActor
from ray_s3ft.workers.rollout import RolloutWorker

log = logging.getLogger(__name__)
T = TypeVar("T")


class WeightSync:
    """Brings the rollout engines to the learner's weights version, lazily: a call when they
    already serve it does nothing. ``version``: what the engines serve now (-1: unknown, as
    when they hold another run's weights or a restarted engine came back with the base).
    ``adapter``: the engines serve LoRA adapters on their base weights
    (``rollout.lora_sync=adapter``): a sync sends the adapters alone, through the object
    store on GPU too (about 1 % of the weights: ``launch`` opens no NCCL group then)."""

    def __init__(
        self,
        learner: ActorGroup,
        rollout: ActorGroup,
        nccl_meta,
        version: int = 0,
        adapter: bool = False,
    ):
        self.learner, self.rollout, self.nccl_meta = learner, rollout, nccl_meta
        self.version, self.adapter = version, adapter

    def to(self, version: int, wait: bool = True) -> list:
        """Sync to ``version``. On CPU (and for adapters), rank 0's weights go into the object
        store once and every engine reads that one copy; on GPU one NCCL broadcast reaches
        every engine.

        ``wait=False`` (CPU path): only queue the transfer; the engines' futures are returned.
        Each actor runs its calls in order, so a learner step queued next starts after its
        weights were read, and a generation queued next samples with the new weights."""
        if self.version == version:
            return []
        if self.nccl_meta is not None:  # GPU: one broadcast, both sides at once
            sent = self.learner.submit(LearnerActor.nccl_broadcast)
            self.rollout.call(RolloutWorker.nccl_update, version, self.nccl_meta)
            self.learner.wait(sent)
            self.version = version
            return []
        if self.adapter:
            refs = self.learner.submit(LearnerActor.engine_adapter)  # collective under ZeRO-3
            loads = self.rollout.submit(RolloutWorker.update_adapter, version, refs[0])
        else:
            refs = self.learner.submit(LearnerActor.engine_weights)
            loads = self.rollout.submit(RolloutWorker.update_weights, version, refs[0])
        self.version = version
        if not wait:  # a dead learner rank surfaces at its next step
            return loads
        self.rollout.wait(loads)
        self.learner.wait(refs[1:])
        return []

    def evaluate(self, version: int, fn: Callable[[], T]) -> T:
        """``fn()`` (an evaluation on the engines) with the engines at ``version``. An engine
        that crashed on the way came back with the base weights and Ray retried its calls
        there: its answers are the base model's, so it is synced again and ``fn`` runs
        again."""
        for _ in range(3):
            self.to(version)
            out = fn()
            served = self.rollout.call(RolloutWorker.weights_version)
            if all(v == version for v in served):
                return out
            log.warning(
                "engine versions %s after an evaluation, expected %d: a restarted engine "
                "answered with the base weights; resyncing and evaluating again", served, version
            )  # fmt: skip
            self.version = -1
        raise RuntimeError("rollout engines keep losing their weights; see the actor logs")
