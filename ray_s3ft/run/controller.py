"""The controller: the only place the dataflow of a run is spelled out.

    eval_before -> targets (phase 1, S3FT store) -> restore checkpoint -> train (phase 2) -> eval_after

One training step reads like the papers (``Controller.step``): the schedule picks SFT or GRPO; an
SFT step trains on the S3FT targets; a GRPO step samples G responses per prompt with the
current weights, scores them with the judge and trains on group advantages; a mix step
(``schedule.kind`` mix, sasr_soft) does both in one optimizer step; then the schedule
observes the learner's statistics. Each phase is one named call, timed as ``timing/<phase>``.

Weights are synced lazily: the learner's version bumps on every optimizer step, and engines are
brought up to it right before they generate again (CPU: one copy through Ray's object store).

Exact resume: every rollout request's sampling seed derives from (run seed, step, example), the
data order and the schedule's draws from (run seed, step), and a checkpoint holds the rest (the
learners' weights, optimizer and RNG states, ``TrainState``, and under ``rollout.async`` the
prefetched batch in flight). A resumed run samples the same tokens and takes the same steps as
one that never stopped.

Faults: rollout and judge actors that die are restarted by Ray and their call retried; the
controller counts them (``faults/*``). A judge actor that decides nothing for ``judge.timeout_s``
leaves its missing verdicts undecided. A dead learner rank takes its group down: the controller
restarts the group from the latest checkpoint, at most ``trainer.max_learner_restarts`` times,
then stops with how to resume.
A lost node (its actors unreachable, ``faults/node_losses``): the controller waits up to
``trainer.node_wait_s`` for a replacement node (the learner group restarts on it from the latest
checkpoint; a rollout or judge actor is restarted there by Ray and the step redone from its
start), or stops at once with how to resume when that is 0.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import torch

from ray_s3ft.algo.grpo import AGGREGATION, group_advantages
from ray_s3ft.algo.overlong import loss_weights
from ray_s3ft.algo.schedules import Decision, make_schedule
from ray_s3ft.config import Config
from ray_s3ft.errors import OutOfMemory, RunFailed
from ray_s3ft.run.checkpoints import PENDING, checkpoint_dir, latest_checkpoint, save_checkpoint
from ray_s3ft.run.cluster import Groups
from ray_s3ft.run.follow import FollowTargets
from ray_s3ft.run.guard import Guard, GuardState
from ray_s3ft.run.metrics import MetricsLogger, Progress, eval_metrics, step_row
from ray_s3ft.run.recovery import FAULTS, Recovery
from ray_s3ft.run.rewards import Rewards
from ray_s3ft.run.sampling import GRPOStats, data_order, make_sampler
from ray_s3ft.run.target_store import TargetSet
from ray_s3ft.run.weight_sync import WeightSync
from ray_s3ft.tasks.types import Example
from ray_s3ft.timing import Timer
from ray_s3ft.workers.batches import grpo_batch, sft_batch, shard
from ray_s3ft.workers.group import ActorDied
from ray_s3ft.workers.learner import LearnerActor
from ray_s3ft.workers.types import StepStats

log = logging.getLogger(__name__)
T = TypeVar("T")

PHASES = (
    "batch", "sync", "rollout", "judge", "prefetch", "train", "probe", "reference", "refresh",
    "checkpoint", "eval",
)  # fmt: skip


@dataclass
class TrainState:
    """Everything beyond the weights that a resumed run needs to continue exactly."""

    step: int = 0  # next step to run
    # learner weights version = train steps taken (not optimizer steps: a GRPO step makes
    # algorithm.grpo.updates_per_batch of them); rollout.max_staleness counts these
    version: int = 0
    cursors: dict[str, int] = field(default_factory=lambda: {"sft": 0, "grpo": 0})
    steps: dict[str, int] = field(default_factory=lambda: {"sft": 0, "grpo": 0})
    grpo: GRPOStats = field(default_factory=GRPOStats)  # the latest GRPO step's figures
    schedule: dict = field(default_factory=dict)
    targets: str = ""  # TargetSet.digest() of the store SFT steps train on
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULTS, 0))
    # GRPO samples over the run: judged, their reward sum, and those the judge could not decide
    judged: dict[str, float] = field(
        default_factory=lambda: {"samples": 0, "reward_sum": 0.0, "undecided": 0}
    )
    guard: GuardState = field(default_factory=GuardState)  # the forgetting budget's checks
    # targets that follow the policy: example index -> the model's own accepted answer that
    # replaced the store's target (text, the step, and "refresh" or "rollout")
    followed: dict[str, dict] = field(default_factory=dict)
    follow_counts: dict[str, int] = field(
        default_factory=lambda: {"refreshes": 0, "asked": 0, "accepted": 0, "rollouts": 0}
    )

    @classmethod
    def from_json(cls, d: dict) -> TrainState:
        """A checkpoint's ``trainer_state.json`` (older ones kept the GRPO figures as ``last``)."""
        d = dict(d)
        old = d.pop("last", None) or {}
        grpo = d.pop("grpo", None) or old
        guard = GuardState.from_json(d.pop("guard", None))
        return cls(**d, grpo=GRPOStats.from_json(grpo), guard=guard)


class Controller(Recovery, FollowTargets):
    stopped = False  # the forgetting budget stopped training (guard.action stop)
    guard: Guard | None = None  # the forgetting budget, when one is set

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        groups: Groups,
        tokenizer,
        examples: list[Example],
        targets: TargetSet,
        evaluate: Callable[[], dict] | None = None,
        engine_version: int = 0,
        guard: Guard | None = None,
    ) -> None:
        """``evaluate()``: greedy accuracies on the rollout engines (``session.evaluate_on_engines``),
        run every ``eval.every`` steps after a weight sync. ``engine_version``: what the engines
        serve now (-1 when they hold another run's weights, as between the cells of a grid).
        ``guard``: the forgetting budget checked at those evaluations (None: none)."""
        self.cfg, self.run_dir, self.g, self.tok = cfg, run_dir, groups, tokenizer
        self.examples, self.targets, self.evaluate = examples, targets, evaluate
        self.fractions = targets.fractions()
        self.schedule = self._new_schedule()
        self.state = TrainState(targets=targets.digest())
        self.weights = WeightSync(
            groups.learner, groups.rollout, groups.nccl_meta, engine_version,
            adapter=cfg.rollout.lora_sync == "adapter",
        )  # fmt: skip
        self.sampler = make_sampler(cfg, groups.rollout, self.weights, examples)
        self.rewards = Rewards(cfg, groups.judge, self.sampler)
        self.last_checkpoint: Path | None = None  # this run's latest complete one
        self.guard = guard if guard is not None and guard.enabled else None
        self.stopped = False
        self._index: dict[str, int] | None = None  # example id -> its index
        self.rehearsed = 0  # prompts of this step's GRPO batch that got a self target

    def _new_schedule(self):
        s = self.cfg.schedule
        return make_schedule(
            s.kind, seed=self.cfg.trainer.seed, warmup_steps=s.warmup_steps, p_sft=s.p_sft,
            **asdict(s.sasr), mix=asdict(s.mix), total_steps=self.cfg.trainer.max_steps,
        )  # fmt: skip

    # ------------------------------------------------------------------------------- the loop

    def restore(self, ckpt: Path | None = None) -> bool:
        """Load ``ckpt`` (default: the run directory's latest, if ``trainer.resume``); True if
        one was loaded."""
        if ckpt is None and self.cfg.trainer.resume:
            ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        state = TrainState.from_json(json.loads((ckpt / "trainer_state.json").read_text()))
        if state.targets and state.targets != self.state.targets:
            raise RunFailed(
                f"{ckpt} was trained on another S3FT target store (digest {state.targets}, the "
                f"store now gives {self.state.targets}: another judge, data or model built it). "
                "Start a new run in another trainer.output_dir, or set trainer.resume=false."
            )
        self.g.learner.call(LearnerActor.load, str(ckpt / "deepspeed"))
        self.state = state
        pending = ckpt / PENDING  # saved by a rollout.async run
        self.sampler.restore(json.loads(pending.read_text()) if pending.is_file() else None)
        self.schedule.load_state_dict(state.schedule)
        self.last_checkpoint = ckpt
        last = state.guard.last  # a run the budget stopped stays stopped
        self.stopped = bool(
            self.guard and self.cfg.guard.action == "stop" and last and not last["within"]
        )
        log.warning("resumed from %s at step %d", ckpt, state.step)
        return True

    def train(self, trackers=None) -> None:
        """Steps until ``trainer.max_steps``; each row to ``metrics.jsonl`` and ``trackers``
        (``ray_s3ft.tracking.Trackers``, started; none: TensorBoard only)."""
        t = self.cfg.trainer
        metrics = MetricsLogger(self.run_dir, first_step=self.state.step, trackers=trackers)
        progress = Progress(t.max_steps, start=self.state.step)
        try:
            while self.state.step < t.max_steps and not self.stopped:
                before = copy.deepcopy(self.state)
                try:
                    row = self.step(self.state.step)
                except OutOfMemory as e:
                    raise self.out_of_memory(e) from None
                except ActorDied as e:
                    if e.group == "learner":
                        self.restart_learner(e)
                        metrics.rewind(self.state.step)  # the steps after the checkpoint again
                    else:
                        self.redo_after_lost_node(e, before)
                    continue
                metrics.log(row)
                progress.update(row)
        finally:
            self.sampler.discard()  # a run stopped by a lost actor does not wait on it
            progress.close()
            metrics.close()

    def step(self, step: int) -> dict:
        timer, probe_norm = Timer(PHASES), None
        started = time.perf_counter()
        decision = self.schedule.decide(step)
        if decision.mode == "sft":
            batch = timer.run("batch", self.sft_batch, advance=True)
            stats = timer.run("train", self.train_on, batch, "sft")
        else:  # grpo, or a mix of GRPO and SFT: rollouts first
            batch, staleness = self.grpo_batch_of_step(step, timer)

            def next_is_grpo() -> bool:  # asked only by a sampler that prefetches
                return self.schedule.decide(step + 1).mode != "sft"  # it samples

            self.sampler.prefetch(step, self.state, next_is_grpo, timer)  # async: the next one
            if decision.mode == "mix":
                sft = timer.run("batch", self.sft_batch, advance=True)
                stats = timer.run("train", self.train_mix, batch, sft, decision.p_sft)
            else:
                stats = timer.run("train", self.train_on, batch, "grpo")
            if decision.probe:
                probe_norm = timer.run("probe", self.probe)
        self.observe(step, decision, stats, probe_norm)
        self.count_restarts()
        if step == self.reference_step():
            # the KL reference becomes the post-warm-up policy (SASR's rule, docs/methods.md §5)
            timer.run("reference", self.g.learner.call, LearnerActor.reset_reference)
        self.state.step = step + 1
        refreshed = {}
        if self.cfg.algorithm.rehearse_rollouts and decision.mode != "sft":
            refreshed["targets/rehearsed"] = self.rehearsed  # prompts that got a self target
        every_k = self.cfg.algorithm.targets_refresh_every
        if every_k and self.state.step % every_k == 0:  # before the checkpoint holds them
            refreshed.update(timer.run("refresh", self.refresh_targets))
        # timing/step leaves the in-loop evaluation out: it stays comparable across steps
        seconds, evaluated = time.perf_counter() - started, {}
        save = self.state.step % self.cfg.trainer.checkpoint_every == 0
        every = self.cfg.eval.every
        if self.evaluate is not None and every and self.state.step % every == 0:
            evaluated = timer.run("eval", self.eval_in_loop)
            if self.guard is not None:  # the forgetting budget, before the checkpoint holds it
                budget, guard_save = self.check_budget(evaluated)
                evaluated, save = {**evaluated, **budget}, save or guard_save
        if save:
            timer.run("checkpoint", self.checkpoint)
            seconds += timer.s["checkpoint"]
        row = self.row(step, decision, stats, timer, seconds)
        row.update(refreshed)
        row.update(evaluated)
        return row

    def check_budget(self, evaluated: dict) -> tuple[dict, bool]:
        """The forgetting budget at this in-loop evaluation (``run/guard.py``): the row's
        ``guard/*`` values, and whether to checkpoint now (a new best within budget, whose
        checkpoint is kept, or a stop)."""
        g = self.state.guard
        check = self.guard.check(self.state.step, evaluated)
        action = self.guard.update(g, check)
        if action == "save":
            Guard.set_best(g, check, str(checkpoint_dir(self.run_dir, self.state.step)))
        if g.rehearsing and not self.self_targets():
            log.warning("guard: no example has a self target to rehearse on: stopping instead")
            action = "stop"
        if not check.within:
            log.warning(
                "guard: over the forgetting budget at step %d (%s): %s", self.state.step,
                "; ".join(check.reasons),
                "training stops" if action == "stop" else "SFT on self targets only",
            )  # fmt: skip
        self.stopped = self.stopped or action == "stop"
        row = {
            "guard/within": float(check.within),
            "guard/rehearsing": float(g.rehearsing),
            "guard/breaches": g.breaches,
        }
        if check.heldout_drop is not None:
            row["guard/heldout_drop"] = check.heldout_drop
        if check.drift is not None:
            row["guard/drift"] = check.drift
        return row, action in ("save", "stop")

    def reference_step(self) -> int | None:
        """The step after which the KL reference becomes the current policy (None: never)."""
        return reference_reset_step(self.cfg.schedule.reference, self.schedule.warmup_steps)

    # --------------------------------------------------------------------------------- phases

    def sft_batch(self, advance: bool):
        """The next SFT batch over the whole target store, or while the forgetting budget's
        ``rehearse`` is on, over the examples whose target is the model's own answer (its own
        data order and cursor)."""
        n, seed = self.cfg.trainer.sft_batch_size, self.cfg.trainer.seed
        if self.state.guard.rehearsing:
            pool, cursor = self.self_targets(), "rehearse"
            idx = [
                pool[i]
                for i in data_order(cursor, len(pool), self.state.cursors.get(cursor, 0), n, seed)
            ]
        else:
            cursor = "sft"
            idx = data_order(cursor, len(self.examples), self.state.cursors[cursor], n, seed)
        if advance:
            self.state.cursors[cursor] = self.state.cursors.get(cursor, 0) + n
        records, now = [self.targets.records[i] for i in idx], self.target_texts()
        texts = [now[i][0] for i in idx]
        batch = sft_batch(
            self.tok, [r.prompt for r in records], texts, self.cfg.model.max_model_len
        )
        return shard(batch, len(self.g.learner))

    def grpo_batch_of_step(self, step: int, timer: Timer):
        """Sample this step's groups, judge them (with ``dynamic_sampling``, replace the flat
        ones), and make the learners' batch; returns it with the samples' staleness."""
        examples, gens, staleness = self.sampler.next(step, self.state, timer)
        self.rewards.correct.clear()  # this step's verdicts, by sample
        self.state.grpo.staleness = staleness
        rewards = timer.run("judge", self.rewards.score, examples, gens, self.state)
        if self.cfg.algorithm.grpo.dynamic_sampling:
            examples, gens, rewards = self.rewards.refill(
                timer, step, self.state, examples, gens, rewards
            )
        self.count_restarts()  # engines and judges idle now
        if self.cfg.algorithm.rehearse_rollouts:
            self.rehearsed = self.rehearse_rollouts(examples, gens)
        return timer.run("batch", self.grpo_batch, gens, rewards, staleness), staleness

    def sync_weights(self) -> None:
        """Bring the rollout engines to the learner's weights (``WeightSync``)."""
        self.weights.to(self.state.version)

    def grpo_batch(self, gens, rewards: torch.Tensor, staleness: int = 0):
        grpo = self.cfg.algorithm.grpo
        adv = group_advantages(
            rewards,
            grpo.group_size,
            scale_by_std=AGGREGATION[grpo.loss_agg].scale_by_std,
            eps=grpo.adv_eps,
        )
        self.state.grpo.zero_std_groups = adv.zero_std_groups
        batch = grpo_batch(
            gens,
            adv.advantages,
            self.tok.pad_token_id,
            self.cfg.rollout.max_new_tokens,
            temperature=self.cfg.rollout.temperature,  # the learner scores logits / T
            # overlong mask: cut samples out of the loss, after their rewards made the advantages
            weights=loss_weights(torch.tensor([g.finished for g in gens]), grpo.overlong),
        )
        # truncated importance weights for samples of an older policy, or with rollout.tis
        # "always" for every batch (the engine's numerics against the learner's)
        if staleness > 0 or self.cfg.rollout.tis == "always":
            batch = replace(batch, is_cap=self.cfg.rollout.is_cap)
        return shard(batch, len(self.g.learner))

    def train_on(self, shards, mode: str) -> StepStats:
        stats = self.g.learner.scatter(
            LearnerActor.train_step, shards, mode=mode, mode_step=self.state.steps[mode]
        )[0]
        self.state.version += 1
        self.state.steps[mode] += 1
        return stats

    def train_mix(self, rl_shards, sft_shards, mu: float) -> StepStats:
        """One mix step (``LearnerActor.mix_step``); sasr_soft's gate reads the SFT part's
        gradient norm, so only there is it measured."""
        stats = self.g.learner.scatter(
            LearnerActor.mix_step, list(zip(rl_shards, sft_shards, strict=True)), mu=mu,
            mode_step=self.state.steps.get("mix", 0),
            sft_norm=self.schedule.kind == "sasr_soft",
            token_weight=self.cfg.schedule.mix.token_weight,
        )[0]  # fmt: skip
        self.state.version += 1
        self.state.steps["mix"] = self.state.steps.get("mix", 0) + 1
        return stats

    def eval_in_loop(self) -> dict[str, float]:
        """``eval/*`` accuracies of the current weights (synced to the engines first); an
        engine or judge lost on the way is waited for and the evaluation run again (the step
        it follows has been taken)."""

        def evaluate() -> dict[str, float]:
            return eval_metrics(self.on_synced_engines(self.evaluate))

        return self.after_lost_node(evaluate)

    def on_synced_engines(self, fn: Callable[[], T]) -> T:
        """``fn()`` (an evaluation) on engines that serve the current weights throughout: one
        that crashed and came back with the base weights on the way is synced and ``fn`` runs
        again (``WeightSync.evaluate``)."""
        return self.weights.evaluate(self.state.version, fn)

    def probe(self) -> float:
        """SASR's gradient-only SFT probe on the batch the next SFT step will train on."""
        return self.g.learner.scatter(LearnerActor.grad_probe, self.sft_batch(advance=False))[0]

    def observe(self, step: int, d: Decision, stats: StepStats, probe_norm: float | None) -> None:
        if d.mode == "sft":
            self.schedule.observe(step, "sft", sft_grad_norm=stats.grad_norm)
        elif d.mode == "mix":  # the SFT part's norm, measured under sasr_soft only
            measured = self.schedule.kind == "sasr_soft"
            norm = stats.mix.sft_grad_norm if measured else None
            self.schedule.observe(step, "mix", sft_grad_norm=norm, kl=stats.kl)
        else:
            self.schedule.observe(step, "grpo", kl=stats.kl)
            if probe_norm is not None:
                self.schedule.observe_probe(step, probe_norm)

    def checkpoint(self) -> Path:
        self.state.schedule = self.schedule.state_dict()
        pending = self.sampler.pending_record()
        files = {} if pending is None else {PENDING: json.dumps(pending)}
        best = self.state.guard.best  # the best weights within the forgetting budget stay
        ckpt = save_checkpoint(
            self.run_dir, self.state.step, self.g.learner, asdict(self.state), files,
            keep=self.cfg.trainer.keep_checkpoints,
            protect=Path(best["checkpoint"]) if best else None,
        )  # fmt: skip
        self.last_checkpoint = ckpt
        return ckpt

    def row(self, step: int, d: Decision, stats: StepStats, timer: Timer, seconds: float) -> dict:
        return step_row(
            step, d, self.schedule.stats(), self.target_fractions(), stats, self.state.grpo,
            {"weights/version": self.state.version, "weights/engine_version": self.weights.version,
             **{f"faults/{k}": v for k, v in self.state.faults.items()}},
            self.cfg.algorithm.grpo.dynamic_sampling, timer, seconds,
        )  # fmt: skip


def reference_reset_step(rule: str, warmup_steps: int) -> int | None:
    """``schedule.reference``: under ``after_warmup`` the KL reference is reset to the policy
    after the last warm-up step, W - 1, whatever the schedule (sasr's warm-up, sft_then_grpo's
    switch, fixed_ratio's warm-up); a schedule without a warm-up (W = 0, the pure sft and grpo
    ones) and the ``base`` rule keep the base model (None)."""
    if rule == "after_warmup" and warmup_steps > 0:
        return warmup_steps - 1
    return None
