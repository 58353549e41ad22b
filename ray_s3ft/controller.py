"""The controller: the only place the dataflow of a run is spelled out.

    eval_before -> targets (phase 1, S3FT store) -> restore checkpoint -> train (phase 2) -> eval_after

One training step reads like the papers (``Controller.step``): the schedule picks SFT or GRPO; an
SFT step trains on the S3FT targets; a GRPO step samples G responses per prompt with the
current weights, scores them with the judge and trains on group advantages; then the schedule
observes the learner's statistics. Each phase is one named call, timed as ``timing/<phase>``.

Weights are synced lazily: the learner's version bumps on every optimizer step, and engines are
brought up to it right before they generate again (CPU: one copy through Ray's object store).

Exact resume: every rollout request's sampling seed derives from (run seed, step, example), the
data order and the schedule's draws from (run seed, step), and a checkpoint holds the rest (the
learners' weights, optimizer and RNG states, ``TrainState``, and under ``rollout.async`` the
prefetched batch in flight). A resumed run samples the same tokens and takes the same steps as
one that never stopped.

Faults: rollout and judge actors that die are restarted by Ray and their call retried; the
controller counts them (``faults/*``). A judge call past ``judge.timeout_s`` gives undecided
verdicts. A dead learner rank takes its group down: the controller restarts the group from the
latest checkpoint, at most ``trainer.max_learner_restarts`` times, then stops with how to resume.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ray_s3ft.algo.grpo import group_advantages
from ray_s3ft.algo.schedules import Decision, make_schedule
from ray_s3ft.batches import grpo_batch, sft_batch, shard
from ray_s3ft.checkpoints import PENDING, latest_checkpoint, save_checkpoint
from ray_s3ft.cluster import Groups
from ray_s3ft.config import Config
from ray_s3ft.errors import RunFailed
from ray_s3ft.metrics import MetricsLogger, Progress
from ray_s3ft.target_store import TargetSet
from ray_s3ft.tasks.types import Example
from ray_s3ft.timing import Timer
from ray_s3ft.workers.group import ActorDied
from ray_s3ft.workers.judge import judge_on
from ray_s3ft.workers.learner import LearnerActor
from ray_s3ft.workers.rollout import RolloutWorker
from ray_s3ft.workers.types import JudgeItem, Sampling, StepStats, Verdict

log = logging.getLogger(__name__)

PHASES = (
    "batch", "sync", "rollout", "judge", "prefetch", "train", "probe", "reference",
    "checkpoint", "eval",
)  # fmt: skip
FAULTS = ("rollout_restarts", "judge_restarts", "judge_timeouts", "learner_restarts")


@dataclass
class TrainState:
    """Everything beyond the weights that a resumed run needs to continue exactly."""

    step: int = 0  # next step to run
    version: int = 0  # learner weights version = optimizer steps taken
    cursors: dict[str, int] = field(default_factory=lambda: {"sft": 0, "grpo": 0})
    steps: dict[str, int] = field(default_factory=lambda: {"sft": 0, "grpo": 0})
    last: dict[str, float] = field(default_factory=dict)  # latest rollout/reward values
    schedule: dict = field(default_factory=dict)
    targets: str = ""  # TargetSet.digest() of the store SFT steps train on
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULTS, 0))
    # GRPO samples over the run: judged, their reward sum, and those the judge could not decide
    judged: dict[str, float] = field(
        default_factory=lambda: {"samples": 0, "reward_sum": 0.0, "undecided": 0}
    )


@dataclass
class Prefetch:
    """A rollout started one step early (``rollout.async``)."""

    futures: list  # RolloutResult futures (one per engine chunk), then the weight transfer's
    results: int  # how many of the futures are RolloutResults
    cursor: int  # the GRPO data cursor its batch starts at
    version: int  # the weights version it samples with
    started: float  # perf_counter at launch
    done: list | None = None  # its RolloutResults once waited for (a checkpoint saves them)


def rollout_seed(run_seed: int, step: int, example: int, round: int = 0) -> int:
    """The sampling seed of one prompt's group at one step (sample k draws from seed + k);
    ``round`` > 0: a dynamic-sampling round's (``Controller.refill``)."""
    key = [run_seed, step, example] + ([round] if round else [])
    words = np.random.SeedSequence(key).generate_state(1)
    return int(words[0]) >> 2  # room for + k within vLLM's 32-bit range


class Controller:
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
    ) -> None:
        """``evaluate()``: greedy accuracies on the rollout engines (``train.evaluate_on_engines``),
        run every ``eval.every`` steps after a weight sync. ``engine_version``: what the engines
        serve now (-1 when they hold another run's weights, as between the cells of a grid)."""
        self.cfg, self.run_dir, self.g, self.tok = cfg, run_dir, groups, tokenizer
        self.examples, self.targets, self.evaluate = examples, targets, evaluate
        self.fractions = targets.fractions()
        self.schedule = self._new_schedule()
        self.state = TrainState(targets=targets.digest())
        self.engine_version = engine_version  # what the rollout engines serve
        self.last_checkpoint: Path | None = None  # this run's latest complete one
        self.pending: Prefetch | None = None  # rollout.async: the next GRPO batch, in flight

    def _new_schedule(self):
        s = self.cfg.schedule
        return make_schedule(
            s.kind, seed=self.cfg.trainer.seed, warmup_steps=s.warmup_steps, p_sft=s.p_sft,
            **asdict(s.sasr),
        )  # fmt: skip

    # ------------------------------------------------------------------------------- the loop

    def restore(self, ckpt: Path | None = None) -> bool:
        """Load ``ckpt`` (default: the run directory's latest, if ``trainer.resume``); True if
        one was loaded."""
        if ckpt is None and self.cfg.trainer.resume:
            ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        state = TrainState(**json.loads((ckpt / "trainer_state.json").read_text()))
        if state.targets and state.targets != self.state.targets:
            raise RunFailed(
                f"{ckpt} was trained on another S3FT target store (digest {state.targets}, the "
                f"store now gives {self.state.targets}: another judge, data or model built it). "
                "Start a new run in another trainer.output_dir, or set trainer.resume=false."
            )
        self.g.learner.call(LearnerActor.load, str(ckpt / "deepspeed"))
        self.state = state
        self.pending = None
        if (ckpt / PENDING).is_file():  # saved by a rollout.async run
            if self.cfg.rollout.async_:
                self.restore_pending(json.loads((ckpt / PENDING).read_text()))
            else:
                log.warning("%s holds a prefetched rollout; rollout.async=false drops it", ckpt)
        self.schedule.load_state_dict(state.schedule)
        self.last_checkpoint = ckpt
        log.warning("resumed from %s at step %d", ckpt, state.step)
        return True

    def train(self, trackers=None) -> None:
        """Steps until ``trainer.max_steps``; each row to ``metrics.jsonl`` and ``trackers``
        (``ray_s3ft.tracking.Trackers``, started; none: TensorBoard only)."""
        t = self.cfg.trainer
        metrics = MetricsLogger(self.run_dir, first_step=self.state.step, trackers=trackers)
        progress = Progress(t.max_steps, start=self.state.step)
        try:
            while self.state.step < t.max_steps:
                try:
                    row = self.step(self.state.step)
                except ActorDied as e:
                    if e.group != "learner":  # Ray ran out of restarts for it
                        raise RunFailed(f"{e}\n{self.how_to_resume()}") from e
                    self.restart_learner(e)
                    metrics.rewind(self.state.step)  # the steps after the checkpoint run again
                    continue
                metrics.log(row)
                progress.update(row["step"], row["mode"], row["learner/loss"], row["reward/mean"])
        finally:
            self.drain()
            progress.close()
            metrics.close()

    def how_to_resume(self) -> str:
        ckpt, cmd = self.last_checkpoint, f"ray-s3ft train --config {self.run_dir / 'config.yaml'}"
        if ckpt is None:
            return f"It has no checkpoint yet; start it again with:\n  {cmd}"
        return f"Its latest checkpoint is {ckpt}; resume from it with:\n  {cmd}"

    def restart_learner(self, error: ActorDied) -> None:
        """A learner rank died: a new learner group continues from this run's latest
        checkpoint (or from the base model before the first one)."""
        n = self.state.faults["learner_restarts"] + 1
        ckpt, step = self.last_checkpoint, self.state.step
        if n > self.cfg.trainer.max_learner_restarts:
            raise RunFailed(
                f"{error}\nThe learner group failed at step {step} after {n - 1} restart(s) "
                f"(trainer.max_learner_restarts={self.cfg.trainer.max_learner_restarts}); "
                f"the run stopped.\n{self.how_to_resume()}"
            ) from error
        log.warning(
            "%s at step %d: restarting the learner group from %s (restart %d of %d)",
            error, step, ckpt or "the base model", n, self.cfg.trainer.max_learner_restarts,
        )  # fmt: skip
        faults = {**self.state.faults, "learner_restarts": n}
        self.drain()
        self.g.restart_learner()
        self.state, self.schedule = TrainState(targets=self.state.targets), self._new_schedule()
        if ckpt is not None:
            self.restore(ckpt)
        self.state.faults = faults
        self.engine_version = -1  # the engines hold weights of steps that are undone

    def step(self, step: int) -> dict:
        timer, probe_norm = Timer(PHASES), None
        started = time.perf_counter()
        decision = self.schedule.decide(step)
        if decision.mode == "sft":
            batch = timer.run("batch", self.sft_batch, advance=True)
            stats = timer.run("train", self.train_on, batch, "sft")
        else:
            examples, rollout, staleness = self.rollout(timer)
            self.state.last["rollout/staleness"] = staleness
            rewards = timer.run("judge", self.judge, examples, rollout)
            if self.cfg.algorithm.grpo.dynamic_sampling:
                examples, rollout, rewards = self.refill(timer, step, examples, rollout, rewards)
            self.count_restarts()  # engines and judges idle now
            batch = timer.run("batch", self.grpo_batch, rollout, rewards, staleness)
            if self.cfg.rollout.async_:
                timer.run("prefetch", self.prefetch, step)
            stats = timer.run("train", self.train_on, batch, "grpo")
            if decision.probe:
                probe_norm = timer.run("probe", self.probe)
        self.observe(step, decision, stats, probe_norm)
        self.count_restarts()
        if step == self.reference_step():
            # the KL reference becomes the post-warm-up policy (SASR's rule, docs/methods.md §5)
            timer.run("reference", self.g.learner.call, LearnerActor.reset_reference)
        self.state.step = step + 1
        if self.state.step % self.cfg.trainer.checkpoint_every == 0:
            timer.run("checkpoint", self.checkpoint)
        row = self.row(step, decision, stats, timer, time.perf_counter() - started)
        every = self.cfg.eval.every
        if self.evaluate is not None and every and self.state.step % every == 0:
            # after the step's wall time was taken: timing/step stays comparable across steps
            row.update(timer.run("eval", self.eval_in_loop))
            row["timing/eval"] = timer.s["eval"]
        return row

    def reference_step(self) -> int | None:
        """The step after which the KL reference becomes the current policy (None: never)."""
        return reference_reset_step(self.cfg.schedule.reference, self.schedule.warmup_steps)

    # --------------------------------------------------------------------------------- phases

    def _take(self, kind: str, n: int) -> list[int]:
        size, cursor = len(self.examples), self.state.cursors[kind]
        return data_order(kind, size, cursor, n, self.cfg.trainer.seed)

    def sft_batch(self, advance: bool):
        n = self.cfg.trainer.sft_batch_size
        idx = self._take("sft", n)
        if advance:
            self.state.cursors["sft"] += n
        records = [self.targets.records[i] for i in idx]
        texts = [r.target(self.targets.mode).text for r in records]
        batch = sft_batch(
            self.tok, [r.prompt for r in records], texts, self.cfg.model.max_model_len
        )
        return shard(batch, len(self.g.learner))

    def sync_weights(self, wait: bool = True) -> list:
        """Bring the rollout engines to the learner's version: rank 0's weights go into the
        object store once and every engine reads that one copy.

        ``wait=False`` (CPU path): only queue the transfer; the engines' futures are returned.
        Each actor runs its calls in order, so a learner step queued next starts after its
        weights were read, and a generation queued next samples with the new weights."""
        if self.engine_version == self.state.version:
            return []
        if self.g.nccl_meta is not None:  # GPU: one broadcast, both sides at once
            sent = self.g.learner.submit(LearnerActor.nccl_broadcast)
            meta = self.g.nccl_meta
            self.g.rollout.call(RolloutWorker.nccl_update, self.state.version, meta)
            self.g.learner.wait(sent)
            self.engine_version = self.state.version
            return []
        refs = self.g.learner.submit(LearnerActor.engine_weights)  # collective under ZeRO-3
        loads = self.g.rollout.submit(RolloutWorker.update_weights, self.state.version, refs[0])
        self.engine_version = self.state.version
        if not wait:  # a dead learner rank surfaces at its next step
            return loads
        self.g.rollout.wait(loads)
        self.g.learner.wait(refs[1:])
        return []

    def _rollout_request(self, step: int, n: int | None = None, round: int = 0):
        """The next ``n`` (default: a GRPO batch's) example indices (the cursor is not moved),
        their examples and the (prompt, seed) items to sample for ``step``; ``round`` > 0:
        a dynamic-sampling round's."""
        c = self.cfg
        idx = self._take("grpo", c.trainer.grpo_prompts_per_step if n is None else n)
        examples = [self.examples[i] for i in idx]
        seed = c.trainer.seed
        items = [(ex.prompt, rollout_seed(seed, step, i, round)) for ex, i in zip(examples, idx)]
        return idx, examples, items

    def _sampling(self) -> Sampling:
        c = self.cfg
        return Sampling(
            n=c.algorithm.grpo.group_size,
            temperature=c.rollout.temperature,
            top_p=c.rollout.top_p,
            max_new_tokens=c.rollout.max_new_tokens,
        )

    def rollout(self, timer: Timer):
        """This GRPO step's samples: the prefetched ones (``rollout.async``) when they start at
        this cursor and are at most ``rollout.max_staleness`` versions old, else sampled now
        with the current weights. Returns (examples, generations, staleness)."""
        cursor = self.state.cursors["grpo"]
        idx, examples, items = self._rollout_request(self.state.step)
        self.state.cursors["grpo"] += len(idx)
        p, self.pending = self.pending, None
        if p is not None:
            done = p.done
            if done is None:
                done = timer.run("rollout", self.g.rollout.wait, p.futures)  # the exposed wait
            parts = done[: p.results]
            staleness = self.state.version - p.version
            fresh = p.cursor == cursor and 0 <= staleness <= self.cfg.rollout.max_staleness
            if fresh and all(part.weights_version == p.version for part in parts):
                return examples, self._gens(parts, time.perf_counter() - p.started), staleness
            self.state.last["rollout/discarded"] = self.state.last.get("rollout/discarded", 0) + 1
        timer.run("sync", self.sync_weights)
        parts, seconds = timer.run("rollout", self._sample_now, items)
        return examples, self._gens(parts, seconds), 0

    def _sample_now(self, items):
        for _ in range(3):
            started = time.perf_counter()
            parts = self.g.rollout.map_chunks(
                RolloutWorker.sample, items, sampling=self._sampling()
            )
            seconds = time.perf_counter() - started
            stale = [p.weights_version for p in parts if p.weights_version != self.state.version]
            if not stale:
                return parts, seconds
            # a restarted engine came back with the base weights: resync it and sample again
            log.warning("engine versions %s, expected %d: resyncing", stale, self.state.version)
            self.engine_version = -1
            self.sync_weights()
        raise RuntimeError("rollout engines keep losing their weights; see the actor logs")

    def prefetch(self, step: int) -> None:
        """``rollout.async``: before step ``step`` trains, start sampling the next GRPO batch
        with the current weights, so the engines generate while the learners train. Only when
        the schedule's next step is GRPO (as far as it can tell now)."""
        if self.schedule.decide(step + 1).mode != "grpo" or step + 1 >= self.cfg.trainer.max_steps:
            return
        synced = self.sync_weights(wait=False)  # overlaps the learners' step as well
        _, _, items = self._rollout_request(step + 1)
        futures = self.g.rollout.submit_chunks(
            RolloutWorker.sample, items, sampling=self._sampling()
        )
        cursor = self.state.cursors["grpo"]
        self.pending = Prefetch(
            futures + synced, len(futures), cursor, self.state.version, time.perf_counter()
        )

    def drain(self) -> None:
        """Wait for a prefetched rollout nobody will use (engines idle again)."""
        p, self.pending = self.pending, None
        if p is not None and p.done is None:
            self.g.rollout.wait(p.futures)

    def pending_record(self) -> dict | None:
        """The prefetched rollout in flight (``rollout.async``), waited for and made JSON-plain:
        a checkpoint holds it, so a resumed run trains its next GRPO step on the same stale
        samples as a run that never stopped."""
        p = self.pending
        if p is None:
            return None
        if p.done is None:
            p.done = self.g.rollout.wait(p.futures)
        return {
            "parts": [asdict(part) for part in p.done[: p.results]],
            "cursor": p.cursor,
            "version": p.version,
            "seconds": time.perf_counter() - p.started,
        }

    def restore_pending(self, record: dict) -> None:
        from ray_s3ft.workers.types import Generation, RolloutResult

        parts = [
            RolloutResult(**{**r, "generations": [Generation(**g) for g in r["generations"]]})
            for r in record["parts"]
        ]
        started = time.perf_counter() - record["seconds"]
        self.pending = Prefetch([], len(parts), record["cursor"], record["version"], started, parts)

    def _gens(self, parts, seconds: float):
        gens = [g for p in parts for g in p.generations]
        tokens = sum(p.new_tokens for p in parts)
        self.state.last["rollout/tokens_per_s"] = tokens / max(seconds, 1e-9)
        self.state.last["rollout/response_tokens"] = tokens / max(len(gens), 1)
        self.state.last["rollout/sample_digest"] = sample_digest(gens)
        return gens

    def judge(self, examples: list[Example], gens) -> torch.Tensor:
        G = self.cfg.algorithm.grpo.group_size
        items = [
            JudgeItem(ex.prompt, gen.text, ex.answer, ex.verifier, tuple(ex.tests))
            for i, gen in enumerate(gens)
            for ex in [examples[i // G]]
        ]
        verdicts = self.judge_items(items)
        undecided = sum(v.correct is None for v in verdicts)
        self.state.last["judge/undecided"] = undecided
        self.state.last["judge/undecided_frac"] = undecided / max(len(verdicts), 1)
        rewards = torch.tensor([reward(v, self.cfg.algorithm.grpo) for v in verdicts])  # [P*G]
        judged = self.state.judged
        judged["samples"] += len(verdicts)
        judged["reward_sum"] += rewards.sum().item()
        judged["undecided"] += undecided
        self.state.last["reward/mean"] = rewards.mean().item()
        return rewards

    def refill(self, timer: Timer, step: int, examples: list[Example], gens, rewards):
        """DAPO's dynamic sampling (arXiv 2503.14476 §3.2): a group whose rewards are all equal
        has zero advantage and only dilutes the batch's normalisers. Drop such groups and
        sample groups of the next prompts in their place, with the current weights, at most
        ``algorithm.grpo.max_extra_rollouts`` rounds; if groups are still missing then, the
        batch is filled with flat groups (its size stays the same). Returns the batch's
        (examples, generations, rewards), informative groups first."""
        grpo, G = self.cfg.algorithm.grpo, self.cfg.algorithm.grpo.group_size
        P = len(examples)
        kept, flat = split_flat_groups(examples, gens, rewards, G)
        rounds, all_rewards = 0, [rewards]
        while len(kept) < P and rounds < grpo.max_extra_rollouts:
            rounds += 1
            _, exs, items = self._rollout_request(step, P - len(kept), rounds)
            self.state.cursors["grpo"] += len(exs)
            timer.run("sync", self.sync_weights)
            parts, _ = timer.run("rollout", self._sample_now, items)
            more = [g for p in parts for g in p.generations]
            r = timer.run("judge", self.judge, exs, more)
            all_rewards.append(r)
            k, f = split_flat_groups(exs, more, r, G)
            kept, flat = kept + k, flat + f
        batch = (kept + flat)[:P]
        dropped = len(kept) + len(flat) - len(batch)  # flat groups left out (and no others)
        last = self.state.last
        last["rollout/dynamic_rounds"] = rounds
        last["rollout/dynamic_dropped"] = dropped
        judged = self.state.judged
        judged["extra_rounds"] = judged.get("extra_rounds", 0) + rounds
        judged["dropped_groups"] = judged.get("dropped_groups", 0) + dropped
        last["reward/mean"] = torch.cat(all_rewards).mean().item()  # every sample of the step
        last["rollout/sample_digest"] = sample_digest([g for _, gs, _ in batch for g in gs])
        return (
            [ex for ex, _, _ in batch],
            [g for _, gs, _ in batch for g in gs],
            torch.cat([r for _, _, r in batch]),
        )

    def judge_items(self, items: list[JudgeItem]) -> list[Verdict]:
        """Verdicts in order; a judge actor's share past ``judge.timeout_s`` is undecided."""
        verdicts, late = judge_on(self.g.judge, items, self.cfg.judge.timeout_s)
        self.state.faults["judge_timeouts"] += late
        return verdicts

    def count_restarts(self) -> None:
        """Count the rollout and judge actors Ray restarted since the last look. Not the
        engines while a prefetched rollout runs: the question would wait for it."""
        groups = [("judge", self.g.judge)]
        if self.pending is None:
            groups.insert(0, ("rollout", self.g.rollout))
        for name, group in groups:
            n = group.restarts()
            if n:
                self.state.faults[f"{name}_restarts"] += n
                log.warning(
                    "%d %s actor(s) died and were restarted; their work was retried", n, name
                )

    def grpo_batch(self, gens, rewards: torch.Tensor, staleness: int = 0):
        grpo = self.cfg.algorithm.grpo
        adv = group_advantages(
            rewards, grpo.group_size, scale_by_std=grpo.loss_agg != "dr_grpo", eps=grpo.adv_eps
        )
        self.state.last["reward/zero_std_groups"] = adv.zero_std_groups
        batch = grpo_batch(
            gens,
            adv.advantages,
            self.tok.pad_token_id,
            self.cfg.rollout.max_new_tokens,
            temperature=self.cfg.rollout.temperature,  # the learner scores logits / T
        )
        if staleness > 0:  # sampled by an older policy: truncated importance weights
            batch = replace(batch, is_cap=self.cfg.rollout.is_cap)
        return shard(batch, len(self.g.learner))

    def train_on(self, shards, mode: str) -> StepStats:
        stats = self.g.learner.scatter(LearnerActor.train_step, shards, mode=mode)[0]
        self.state.version += 1
        self.state.steps[mode] += 1
        return stats

    def probe(self) -> float:
        """SASR's gradient-only SFT probe on the batch the next SFT step will train on."""
        return self.g.learner.scatter(LearnerActor.grad_probe, self.sft_batch(advance=False))[0]

    def eval_in_loop(self) -> dict[str, float]:
        """``eval/*`` accuracies of the current weights (synced to the engines first)."""
        self.sync_weights()
        return eval_metrics(self.evaluate())

    def observe(self, step: int, d: Decision, stats: StepStats, probe_norm: float | None) -> None:
        if d.mode == "sft":
            self.schedule.observe(step, "sft", sft_grad_norm=stats.grad_norm)
        else:
            self.schedule.observe(step, "grpo", kl=stats.kl)
            if probe_norm is not None:
                self.schedule.observe_probe(step, probe_norm)

    def checkpoint(self) -> Path:
        self.state.schedule = self.schedule.state_dict()
        pending = self.pending_record()
        files = {} if pending is None else {PENDING: json.dumps(pending)}
        ckpt = save_checkpoint(
            self.run_dir, self.state.step, self.g.learner, asdict(self.state), files
        )
        self.last_checkpoint = ckpt
        return ckpt

    def row(self, step: int, d: Decision, stats: StepStats, timer: Timer, seconds: float) -> dict:
        sched, last = self.schedule.stats(), self.state.last
        row = {
            "step": step,
            "mode": d.mode,
            "sasr/p_sft": d.p_sft,
            "sasr/grad_norm": sched["grad_norm"],
            "sasr/grad_norm_warm": sched["grad_norm_warm"],
            "sasr/kl": sched["kl"],
            "sasr/probe": float(d.probe),
            "targets/self_frac": self.fractions["self"],
            "targets/para_frac": self.fractions["paraphrase"],
            "targets/gold_frac": self.fractions["gold"],
            "learner/loss": stats.loss,
            "learner/grad_norm": stats.grad_norm,
            "learner/kl": stats.kl,
            "learner/entropy": stats.entropy,
            "learner/tokens": stats.tokens,
            # reward/rollout/judge values are the latest GRPO step's (0.0 before the first one)
            "reward/mean": last.get("reward/mean", 0.0),
            "reward/zero_std_groups": last.get("reward/zero_std_groups", 0),
            "judge/undecided": last.get("judge/undecided", 0),
            "judge/undecided_frac": last.get("judge/undecided_frac", 0.0),
            "rollout/tokens_per_s": last.get("rollout/tokens_per_s", 0.0),
            "rollout/response_tokens": last.get("rollout/response_tokens", 0.0),
            "rollout/discarded": last.get("rollout/discarded", 0),
            "weights/version": self.state.version,
            "weights/engine_version": self.engine_version,
            **{f"faults/{k}": v for k, v in self.state.faults.items()},
        }
        if d.mode == "grpo":
            row.update({
                "learner/pg_loss": stats.pg_loss,
                "learner/clip_frac": stats.clip_frac,
                "learner/updates": stats.updates,
                "learner/ratio_dev": stats.ratio_dev,
                "rollout/logprob_diff": stats.logprob_diff,
                "rollout/logprob_max_diff": stats.logprob_max_diff,
                "rollout/sample_digest": last["rollout/sample_digest"],
                "rollout/staleness": last["rollout/staleness"],
                "rollout/is_weight": stats.is_weight,
                "rollout/is_clip_frac": stats.is_clip_frac,
            })  # fmt: skip
            if self.cfg.algorithm.grpo.dynamic_sampling:
                row["rollout/dynamic_rounds"] = last["rollout/dynamic_rounds"]
                row["rollout/dynamic_dropped"] = last["rollout/dynamic_dropped"]
        row.update({f"timing/{k}": v for k, v in timer.s.items()})
        row["timing/step"] = seconds
        return row


def reference_reset_step(rule: str, warmup_steps: int) -> int | None:
    """``schedule.reference``: under ``after_warmup`` the KL reference is reset to the policy
    after the last warm-up step, W - 1, whatever the schedule (sasr's warm-up, sft_then_grpo's
    switch, fixed_ratio's warm-up); a schedule without a warm-up (W = 0, the pure sft and grpo
    ones) and the ``base`` rule keep the base model (None)."""
    if rule == "after_warmup" and warmup_steps > 0:
        return warmup_steps - 1
    return None


def split_flat_groups(examples: list, gens: list, rewards: torch.Tensor, group_size: int):
    """Groups (example, its G generations, its G rewards) split into those with some reward
    spread (kept) and those whose rewards are all equal (flat: zero advantage), in order."""
    kept, flat = [], []
    for j, ex in enumerate(examples):
        r = rewards[j * group_size : (j + 1) * group_size]
        group = (ex, gens[j * group_size : (j + 1) * group_size], r)
        (flat if bool((r == r[0]).all()) else kept).append(group)
    return kept, flat


def data_order(kind: str, size: int, cursor: int, n: int, seed: int) -> list[int]:
    """Example indices ``cursor`` .. ``cursor + n - 1`` of stream ``kind`` (``sft`` or
    ``grpo``) over ``size`` examples: a fresh seeded permutation per epoch, so a resumed run
    (which restores the cursor) sees the same data."""
    salt = 0 if kind == "sft" else 1
    perms: dict[int, np.ndarray] = {}
    out = []
    for pos in range(cursor, cursor + n):
        epoch, offset = divmod(pos, size)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, salt, epoch]).permutation(size)
        out.append(int(perms[epoch][offset]))
    return out


def reward(verdict: Verdict, grpo) -> float:
    """A verdict's GRPO reward: 1 correct, 0 wrong, ``grpo.undecided_reward`` undecided."""
    if verdict.correct is None:
        return float(grpo.undecided_reward)
    return 1.0 if verdict.correct else 0.0


def sample_digest(gens) -> int:
    """A 48-bit hash of every sampled token id of a step (exact in JSON and in float64):
    two runs that sampled the same tokens log the same digest."""
    import hashlib

    h = hashlib.sha256()
    for g in gens:
        h.update(np.asarray(g.token_ids, dtype=np.int64).tobytes() + b"|")
    return int(h.hexdigest()[:12], 16)


def eval_metrics(scores: dict) -> dict[str, float]:
    """``evaluate_on_engines`` output -> metrics keys: ``eval/task_accuracy``,
    ``eval/heldout_mean``, ``eval/heldout/<set>`` (and ``eval/heldout/<set>_acc_norm`` for a
    multiple-choice set), ``eval/drift_kl`` and ``eval/drift_k3`` with ``eval.drift``."""
    from ray_s3ft.evaluate import heldout_sets

    out = {"eval/task_accuracy": scores["task"]["accuracy"]}
    if scores.get("heldout_mean") is not None:
        out["eval/heldout_mean"] = scores["heldout_mean"]
    for name, v in heldout_sets(scores).items():
        out[f"eval/heldout/{name}"] = v["accuracy"]
        if v.get("acc_norm") is not None:
            out[f"eval/heldout/{name}_acc_norm"] = v["acc_norm"]
    for key in ("kl", "k3"):
        if (scores.get("drift") or {}).get(key) is not None:
            out[f"eval/drift_{key}"] = scores["drift"][key]
    return out
